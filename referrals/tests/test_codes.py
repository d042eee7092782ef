"""Referral codes: the alphabet, normalisation, and one unique code per user by every creation path."""

from __future__ import annotations

import re
from io import StringIO

import pytest
from django.core.management import call_command

from accounts.models import User
from accounts.tests.factories import UserFactory
from referrals import services
from referrals.codes import ALPHABET, LENGTH, referral_code_new, referral_code_normalize
from referrals.models import ReferralCode
from referrals.tests.factories import code_of

pytestmark = pytest.mark.django_db(transaction=False)

SIGNUP = "/api/v1/auth/signup"
LOGIN = "/api/v1/auth/login"
ME = "/api/v1/auth/me"
ADMIN_ADD = "/admin/accounts/user/add/"
STRONG_PASSWORD = "plum-harbour-velvet-42"
CODE_RE = re.compile(r"^[0-9A-HJKMNP-TV-Z]{8}$")


def ambiguous_spelling(code: str) -> str:
    """How a person might type `code`: lower case, O for 0, l for 1, a hyphen, spaces."""
    typed = code.replace("0", "O").replace("1", "l").lower()
    return f"  {typed[:4]}-{typed[4:]} "


# --- the alphabet -------------------------------------------------------------------------


def test_the_alphabet_is_crockford_base32_without_ambiguous_letters():
    assert len(ALPHABET) == 32
    assert len(set(ALPHABET)) == 32
    assert set(ALPHABET).isdisjoint("ILOU")
    assert "".join(sorted(ALPHABET)) == ALPHABET


def test_new_codes_are_eight_characters_from_the_alphabet():
    codes = [referral_code_new() for _ in range(2000)]
    assert LENGTH == 8
    for code in codes:
        assert len(code) == 8
        assert CODE_RE.match(code), code
        assert set(code) <= set(ALPHABET)
    assert len(set(codes)) == len(codes)  # 32^8 possibilities: no clash in 2000


def test_new_codes_use_the_whole_alphabet():
    seen = set("".join(referral_code_new() for _ in range(500)))
    assert seen == set(ALPHABET)


# --- normalisation ---------------------------------------------------------------------------


def test_a_canonical_code_normalises_to_itself():
    for _ in range(200):
        code = referral_code_new()
        assert referral_code_normalize(code) == code


@pytest.mark.parametrize(
    ("typed", "canonical"),
    [
        ("abcd2345", "ABCD2345"),
        ("ABCD-2345", "ABCD2345"),
        ("abcd 2345", "ABCD2345"),
        ("  ab-cd 23-45  ", "ABCD2345"),
        ("o0o0o0o0", "00000000"),
        ("OOOOOOOO", "00000000"),
        ("i1l1I1L1", "11111111"),
        ("xy2o-li9z", "XY20119Z"),
        ("\tABCD2345\n", "ABCD2345"),
    ],
)
def test_typed_codes_normalise_the_crockford_way(typed, canonical):
    assert referral_code_normalize(typed) == canonical


def test_every_ambiguous_spelling_of_a_code_round_trips():
    for _ in range(200):
        code = referral_code_new()
        assert referral_code_normalize(ambiguous_spelling(code)) == code
        assert referral_code_normalize(code.lower()) == code


@pytest.mark.parametrize(
    "typed",
    [
        "",
        "   ",
        "-",
        "ABCD234",  # 7
        "ABCD23456",  # 9
        "ABCDEFGU",  # U is not in the alphabet
        "ABCD_234",
        "ABCD.234",
        "ABCD!234",
        "ABCD\t234",  # only spaces and hyphens are ignored inside
        "ÀBCD2345",
        "\uff11\uff12\uff13\uff14\uff15\uff16\uff17\uff18",  # full-width digits 1-8
        "ABCD2345" * 8,
        "'; DROP TABLE referral_codes; --",
    ],
)
def test_malformed_codes_normalise_to_none(typed):
    assert referral_code_normalize(typed) is None


# --- one code per user, by every creation path --------------------------------------------------


def assert_has_a_code(user_id) -> str:
    row = ReferralCode.objects.get(user_id=user_id)
    assert CODE_RE.match(row.code), row.code
    assert row.credited_count == 0
    return row.code


def test_api_signup_gives_the_user_a_code_and_returns_it(api):
    response = api.post(SIGNUP, {"email": "coded@example.com", "password": STRONG_PASSWORD}, format="json")
    assert response.status_code == 201, response.content
    user_id = response.json()["user"]["id"]
    assert response.json()["user"]["referral_code"] == assert_has_a_code(user_id)


def test_create_user_gives_the_user_a_code():
    user = User.objects.create_user("shell@example.com", STRONG_PASSWORD)
    assert_has_a_code(user.pk)
    assert ReferralCode.objects.get(user=user).created_at == user.date_joined


def test_factory_users_get_codes_too():
    users = UserFactory.create_batch(3)
    assert len({assert_has_a_code(user.pk) for user in users}) == 3


def test_admin_add_form_gives_the_user_a_code(client):
    client.force_login(User.objects.create_superuser("root@example.com", STRONG_PASSWORD))
    response = client.post(
        ADMIN_ADD,
        {
            "email": "admin-added@example.com",
            "username": "",
            "password1": STRONG_PASSWORD,
            "password2": STRONG_PASSWORD,
        },
    )
    assert response.status_code == 302, response.content[:800]
    assert_has_a_code(User.objects.get(email="admin-added@example.com").pk)


def test_createsuperuser_gives_the_user_a_code(monkeypatch):
    monkeypatch.setenv("DJANGO_SUPERUSER_PASSWORD", STRONG_PASSWORD)
    call_command("createsuperuser", "--noinput", "--email", "boss@example.com", stdout=StringIO())
    assert_has_a_code(User.objects.get(email="boss@example.com").pk)


def test_codes_are_unique_across_every_creation_path(api, client, monkeypatch):
    api.post(SIGNUP, {"email": "a@example.com", "password": STRONG_PASSWORD}, format="json")
    User.objects.create_user("b@example.com", STRONG_PASSWORD)
    monkeypatch.setenv("DJANGO_SUPERUSER_PASSWORD", STRONG_PASSWORD)
    call_command("createsuperuser", "--noinput", "--email", "c@example.com", stdout=StringIO())
    client.force_login(User.objects.get(email="c@example.com"))
    client.post(ADMIN_ADD, {"email": "d@example.com", "password1": STRONG_PASSWORD, "password2": STRONG_PASSWORD})
    UserFactory.create_batch(5)
    users = User.objects.count()
    assert users == 9
    assert ReferralCode.objects.count() == users
    assert ReferralCode.objects.values("code").distinct().count() == users


def test_saving_an_existing_user_keeps_their_code():
    user = UserFactory()
    code = code_of(user)
    user.display_name = "Renamed"
    user.save()
    assert code_of(user) == code
    assert ReferralCode.objects.filter(user=user).count() == 1


def test_a_code_collision_is_retried_with_a_new_code(monkeypatch):
    taken = code_of(UserFactory())
    fresh = "7777ZZZZ"
    candidates = iter([taken, taken, fresh])
    monkeypatch.setattr(services, "referral_code_new", lambda: next(candidates))
    user = UserFactory()
    assert code_of(user) == fresh


def test_code_creation_gives_up_after_ten_collisions(monkeypatch):
    taken = code_of(UserFactory())
    user = User.objects.bulk_create([User(email="nocode@example.com", password="!")])[0]
    monkeypatch.setattr(services, "referral_code_new", lambda: taken)
    with pytest.raises(RuntimeError, match="could not allocate"):
        services.referral_code_create(user_id=user.pk)
    assert not ReferralCode.objects.filter(user=user).exists()


def test_code_create_for_a_user_who_has_one_returns_the_existing_code():
    user = UserFactory()
    assert services.referral_code_create(user_id=user.pk) == code_of(user)
    assert ReferralCode.objects.filter(user=user).count() == 1


# --- the code in API bodies ---------------------------------------------------------------------


def test_login_response_carries_the_referral_code(api, user, login):
    body = login(user)
    assert body["user"]["referral_code"] == code_of(user)


def test_me_carries_the_referral_code_cold_and_cached(auth_api, user):
    first = auth_api.get(ME)
    second = auth_api.get(ME)  # served from the cached user snapshot
    assert first.status_code == second.status_code == 200
    assert first.json()["referral_code"] == code_of(user)
    assert second.json()["referral_code"] == code_of(user)


def test_refresh_response_carries_the_referral_code(api, user, login):
    body = login(user)
    response = api.post("/api/v1/auth/refresh", {"refresh_token": body["refresh_token"]}, format="json")
    assert response.status_code == 200, response.content
    assert response.json()["user"]["referral_code"] == code_of(user)


def test_a_user_created_without_a_code_gets_one_from_the_nightly_sync_and_me_shows_it(api, login, settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    user = UserFactory()
    ReferralCode.objects.filter(user=user).delete()  # as if created by raw SQL / bulk_create
    tokens = login(user)
    assert tokens["user"]["referral_code"] is None
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {tokens['access_token']}")
    assert api.get(ME).json()["referral_code"] is None  # now cached
    report = services.referrals_reconcile()
    assert report.codes_created == 1
    assert api.get(ME).json()["referral_code"] == code_of(user)
