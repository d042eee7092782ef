"""Email codes and links through the official supabase_auth client, end to end:
live server, a real Celery worker sending through the outbox, a real SMTP
listener the tests read the codes and links from."""

from __future__ import annotations

import uuid
from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from django.utils import timezone
from supabase_auth import SyncGoTrueClient
from supabase_auth.errors import AuthApiError

from accounts.models import OneTimeToken, User
from accounts.tests.factories import DEFAULT_PASSWORD, UserFactory
from accounts.tests.support import ANON_KEY, last_code_to, last_link_to, mail_to
from accounts.tests.support import SERVICE_ROLE_KEY as SERVICE_KEY
from monitoring import audit
from monitoring.models import AuditEvent
from notifications.models import EmailNotification
from notifications.tests.support import _enqueue_breaker_closed, celery_worker, smtp_server  # noqa: F401

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

NEW_PASSWORD = "violet tractor umbrella 42"


@pytest.fixture(autouse=True)
def _settings(settings, live_server):
    settings.SUPABASE_ANON_KEY = ANON_KEY
    settings.RATELIMIT_ENABLE = False
    settings.GOTRUE_SITE_URL = live_server.url
    settings.GOTRUE_URI_ALLOW_LIST = ["https://app.example.com/**"]


@pytest.fixture
def mailbox(celery_worker, smtp_server, live_server):  # noqa: F811
    """A real worker sending the outbox to the SMTP listener, which is returned.
    The links it renders point at this server."""
    celery_worker(env={"GOTRUE_SITE_URL": live_server.url})
    return smtp_server


def _follow(link: str) -> str:
    """Open an email link as a browser would (no apikey); the redirect's Location."""
    response = requests.get(link, allow_redirects=False, timeout=10)
    assert response.status_code == 303, response.text
    return response.headers["Location"]


def test_recovery_code_signs_in_and_the_session_sets_a_new_password_without_the_current_one(client, mailbox):
    user = UserFactory(email="recover@example.com")
    client.reset_password_for_email("recover@example.com")
    code = last_code_to(mailbox, "recover@example.com")
    response = client.verify_otp({"email": "recover@example.com", "token": code, "type": "recovery"})
    assert response.session is not None and response.user.id == str(user.pk)
    client.update_user({"password": NEW_PASSWORD})
    assert client.sign_in_with_password({"email": "recover@example.com", "password": NEW_PASSWORD}).session
    with pytest.raises(AuthApiError):
        client.sign_in_with_password({"email": "recover@example.com", "password": DEFAULT_PASSWORD})


def test_a_password_session_still_needs_the_current_password(client):
    UserFactory(email="plain@example.com")
    client.sign_in_with_password({"email": "plain@example.com", "password": DEFAULT_PASSWORD})
    with pytest.raises(AuthApiError) as raised:
        client.update_user({"password": NEW_PASSWORD})
    assert raised.value.code == "current_password_required"


def test_an_email_code_signs_in_once_and_its_reuse_is_refused(client, mailbox):
    user = UserFactory(email="otp@example.com")
    client.sign_in_with_otp({"email": "otp@example.com", "options": {"should_create_user": False}})
    code = last_code_to(mailbox, "otp@example.com")
    assert client.verify_otp({"email": "otp@example.com", "token": code, "type": "email"}).user.id == str(user.pk)
    with pytest.raises(AuthApiError) as raised:
        client.verify_otp({"email": "otp@example.com", "token": code, "type": "email"})
    assert (raised.value.status, raised.value.code) == (403, "otp_expired")


def test_an_email_code_sign_in_creates_an_unconfirmed_account_that_the_code_confirms(client, mailbox):
    client.sign_in_with_otp({"email": "new@example.com", "options": {"data": {"plan": "pro"}}})
    created = User.objects.get(email="new@example.com")
    assert created.email_confirmed_at is None and not created.has_usable_password()
    code = last_code_to(mailbox, "new@example.com")
    response = client.verify_otp({"email": "new@example.com", "token": code, "type": "magiclink"})
    assert response.user.email_confirmed_at is not None
    assert response.user.user_metadata == {"plan": "pro"}


def test_a_magic_link_with_pkce_redirects_with_a_code_that_exchange_code_for_session_accepts(make_client, mailbox):
    user = UserFactory(email="pkce@example.com")
    client = make_client(flow_type="pkce")
    client.sign_in_with_otp(
        {"email": "pkce@example.com", "options": {"email_redirect_to": "https://app.example.com/cb"}}
    )
    link = last_link_to(mailbox, "pkce@example.com")
    assert "token=pkce_" in link
    location = _follow(link)
    assert location.startswith("https://app.example.com/cb?code=")
    auth_code = parse_qs(urlsplit(location).query)["code"][0]
    response = client.exchange_code_for_session({"auth_code": auth_code})
    assert response.session is not None and response.user.id == str(user.pk)
    with pytest.raises(AuthApiError) as raised:  # an auth code is good once
        make_client().exchange_code_for_session({"auth_code": auth_code, "code_verifier": "x" * 43})
    assert raised.value.code == "flow_state_not_found"


def test_a_magic_link_without_pkce_redirects_with_the_session_in_the_fragment(client, mailbox):
    user = UserFactory(email="implicit@example.com")
    client.sign_in_with_otp({"email": "implicit@example.com"})
    location = _follow(last_link_to(mailbox, "implicit@example.com"))
    fragment = parse_qs(urlsplit(location).fragment)
    assert fragment["type"] == ["magiclink"] and fragment["token_type"] == ["bearer"]
    assert client.get_user(fragment["access_token"][0]).user.id == str(user.pk)
    # The link is spent: following it again lands on the error, in the fragment.
    again = parse_qs(urlsplit(_follow(last_link_to(mailbox, "implicit@example.com"))).fragment)
    assert again["error_code"] == ["otp_expired"] and again["error"] == ["access_denied"]


def test_an_expired_code_is_refused(client, mailbox):
    UserFactory(email="late@example.com")
    client.sign_in_with_otp({"email": "late@example.com"})
    code = last_code_to(mailbox, "late@example.com")
    OneTimeToken.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    with pytest.raises(AuthApiError) as raised:
        client.verify_otp({"email": "late@example.com", "token": code, "type": "email"})
    assert raised.value.code == "otp_expired"


def test_after_the_allowed_wrong_codes_the_right_one_is_refused(client, mailbox, settings):
    settings.OTT_MAX_ATTEMPTS = 3
    UserFactory(email="guess@example.com")
    client.sign_in_with_otp({"email": "guess@example.com"})
    code = last_code_to(mailbox, "guess@example.com")
    wrong = f"{(int(code) + 1) % 10**6:06d}"
    for _ in range(3):
        with pytest.raises(AuthApiError):
            client.verify_otp({"email": "guess@example.com", "token": wrong, "type": "email"})
    with pytest.raises(AuthApiError) as raised:
        client.verify_otp({"email": "guess@example.com", "token": code, "type": "email"})
    assert raised.value.code == "otp_expired"


def test_known_and_unknown_addresses_get_the_same_answers_and_the_same_interval(live_server, mailbox, settings):
    settings.GOTRUE_SMTP_MAX_FREQUENCY = 60
    UserFactory(email="known@example.com")
    url = f"{live_server.url}/auth/v1/recover"
    answers = {}
    for address in ("known@example.com", "unknown@example.com"):
        first = requests.post(url, json={"email": address}, headers={"apikey": ANON_KEY}, timeout=10)
        second = requests.post(url, json={"email": address}, headers={"apikey": ANON_KEY}, timeout=10)
        answers[address] = (first.status_code, first.json(), second.status_code, second.json()["error_code"])
    expected = (200, {}, 429, "over_email_send_rate_limit")
    assert answers["known@example.com"] == answers["unknown@example.com"] == expected
    mail_to(mailbox, "known@example.com")
    assert not mailbox.to("unknown@example.com")
    assert not User.objects.filter(email="unknown@example.com").exists()  # recovery never creates


def test_a_redirect_outside_the_site_and_allow_list_is_replaced_by_the_site_url(client, mailbox, live_server):
    UserFactory(email="redirect@example.com")
    client.reset_password_for_email("redirect@example.com", {"redirect_to": "https://evil.example/steal"})
    link = last_link_to(mailbox, "redirect@example.com")
    assert "evil.example" not in link
    forged = link.split("&redirect_to=")[0] + "&redirect_to=https%3A%2F%2Fevil.example%2Fsteal"
    location = _follow(forged)
    assert location.startswith(live_server.url + "#") or location.startswith(live_server.url + "/#")


def test_phone_otp_answers_phone_provider_disabled(client):
    with pytest.raises(AuthApiError) as raised:
        client.sign_in_with_otp({"phone": "+15555550100"})
    assert (raised.value.status, raised.value.code) == (400, "phone_provider_disabled")


def test_every_auth_v1_answer_carries_cors_headers_the_404_included(live_server):
    origin = {"Origin": "https://app.example.com", "apikey": ANON_KEY}
    for method, path in (("get", "no-such-route"), ("post", "otp"), ("post", "verify"), ("get", "verify")):
        response = requests.request(method, f"{live_server.url}/auth/v1/{path}", headers=origin, json={}, timeout=10)
        assert response.headers.get("Access-Control-Allow-Origin") in ("*", "https://app.example.com"), path


def test_confirmation_required_signup_has_no_session_until_the_emailed_code_confirms(client, mailbox, settings):
    settings.GOTRUE_MAILER_AUTOCONFIRM = False
    signed_up = client.sign_up({"email": "confirm@example.com", "password": NEW_PASSWORD})
    assert signed_up.session is None and signed_up.user.email_confirmed_at is None
    with pytest.raises(AuthApiError) as raised:
        client.sign_in_with_password({"email": "confirm@example.com", "password": NEW_PASSWORD})
    assert (raised.value.status, raised.value.code) == (400, "email_not_confirmed")
    client.resend({"type": "signup", "email": "confirm@example.com"})  # replaces the first code
    code = last_code_to(mailbox, "confirm@example.com", count=2)
    confirmed = client.verify_otp({"email": "confirm@example.com", "token": code, "type": "signup"})
    assert confirmed.session is not None and confirmed.user.email_confirmed_at is not None
    assert client.sign_in_with_password({"email": "confirm@example.com", "password": NEW_PASSWORD}).session


def test_an_imported_unconfirmed_user_cannot_sign_in_with_a_password_in_confirmation_mode(client, settings):
    settings.GOTRUE_MAILER_AUTOCONFIRM = False
    UserFactory(email="imported@example.com", email_confirmed_at=None)
    with pytest.raises(AuthApiError) as raised:
        client.sign_in_with_password({"email": "imported@example.com", "password": DEFAULT_PASSWORD})
    assert raised.value.code == "email_not_confirmed"
    with pytest.raises(AuthApiError) as wrong:  # a wrong password tells nothing of the state
        client.sign_in_with_password({"email": "imported@example.com", "password": "not the password"})
    assert wrong.value.code == "invalid_credentials"


def test_a_reauthentication_nonce_lets_a_password_session_set_a_new_password(client, mailbox):
    UserFactory(email="reauth@example.com", email_confirmed_at=timezone.now())
    client.sign_in_with_password({"email": "reauth@example.com", "password": DEFAULT_PASSWORD})
    client.reauthenticate()
    nonce = last_code_to(mailbox, "reauth@example.com")
    with pytest.raises(AuthApiError) as wrong:
        client.update_user({"password": NEW_PASSWORD, "nonce": f"{(int(nonce) + 1) % 10**6:06d}"})
    assert wrong.value.code == "reauthentication_not_valid"
    client.update_user({"password": NEW_PASSWORD, "nonce": nonce})
    assert client.sign_in_with_password({"email": "reauth@example.com", "password": NEW_PASSWORD}).session


def test_an_email_change_needs_the_codes_sent_to_both_addresses(client, mailbox):
    user = UserFactory(email="old@example.com", email_confirmed_at=timezone.now())
    UserFactory(email="taken@example.com")
    client.sign_in_with_password({"email": "old@example.com", "password": DEFAULT_PASSWORD})
    with pytest.raises(AuthApiError) as taken:
        client.update_user({"email": "taken@example.com"})
    assert (taken.value.status, taken.value.code) == (422, "email_exists")
    assert client.update_user({"email": "new@example.com"}).user.email == "old@example.com"
    to_new, to_old = last_code_to(mailbox, "new@example.com"), last_code_to(mailbox, "old@example.com")
    first = client.verify_otp({"email": "new@example.com", "token": to_new, "type": "email_change"})
    assert first.session is None  # one of two: GoTrue's {"msg", "code": "200"}
    assert User.objects.get(pk=user.pk).email == "old@example.com"
    second = client.verify_otp({"email": "old@example.com", "token": to_old, "type": "email_change"})
    assert second.session is not None and second.user.email == "new@example.com"
    assert client.sign_in_with_password({"email": "new@example.com", "password": DEFAULT_PASSWORD}).session


@pytest.fixture
def admin(settings, live_server):
    settings.SUPABASE_SERVICE_ROLE_KEY = SERVICE_KEY
    server = SyncGoTrueClient(
        url=f"{live_server.url}/auth/v1",
        headers={"apikey": SERVICE_KEY, "Authorization": f"Bearer {SERVICE_KEY}"},
        auto_refresh_token=False,
    )
    yield server.admin
    server.close()


def test_an_invited_user_signs_in_with_the_emailed_code_and_sets_a_password(admin, client, mailbox):
    invited = admin.invite_user_by_email("invitee@example.com", {"data": {"team": "blue"}})
    assert invited.user.email == "invitee@example.com" and invited.user.email_confirmed_at is None
    code = last_code_to(mailbox, "invitee@example.com")
    signed_in = client.verify_otp({"email": "invitee@example.com", "token": code, "type": "invite"})
    assert signed_in.user.email_confirmed_at is not None and signed_in.user.user_metadata == {"team": "blue"}
    client.update_user({"password": NEW_PASSWORD})
    assert client.sign_in_with_password({"email": "invitee@example.com", "password": NEW_PASSWORD}).session
    with pytest.raises(AuthApiError) as again:  # confirmed now: no second invite
        admin.invite_user_by_email("invitee@example.com")
    assert again.value.code == "email_exists"
    audit.flush()
    invited_event = AuditEvent.objects.get(kind=AuditEvent.Kind.ADMIN_USER_INVITED)
    assert invited_event.user_id == uuid.UUID(invited.user.id) and invited_event.detail["actor"] == "service_role"


def test_generate_link_returns_a_recovery_link_and_code_without_sending_an_email(admin, client):
    user = UserFactory(email="linked@example.com")
    generated = admin.generate_link({"type": "recovery", "email": "linked@example.com"})
    assert generated.user.id == str(user.pk)
    assert generated.properties.verification_type == "recovery"
    assert f"token={generated.properties.hashed_token}&type=recovery" in generated.properties.action_link
    session = client.verify_otp({"token_hash": generated.properties.hashed_token, "type": "recovery"})
    assert session.user.id == str(user.pk)
    with pytest.raises(AuthApiError) as unknown:
        admin.generate_link({"type": "recovery", "email": "nobody@example.com"})
    assert (unknown.value.status, unknown.value.code) == (404, "user_not_found")
    magic = admin.generate_link({"type": "magiclink", "email": "brand-new@example.com"})
    assert magic.properties.verification_type == "signup"  # an unknown address is signed up, as GoTrue
    assert client.verify_otp({"email": "brand-new@example.com", "token": magic.properties.email_otp, "type": "signup"})
    assert not EmailNotification.objects.filter(event_key__startswith="ott:").exists()
    audit.flush()
    generated_kinds = AuditEvent.objects.filter(kind=AuditEvent.Kind.ADMIN_LINK_GENERATED)
    assert sorted(event.detail["type"] for event in generated_kinds) == ["recovery", "signup"]


def test_generate_link_makes_each_half_of_an_email_change_and_both_halves_change_the_address(admin, client):
    user = UserFactory(email="mover@example.com")
    UserFactory(email="occupied@example.com")
    change = {"email": "mover@example.com", "new_email": "Moved@example.com"}
    current = admin.generate_link({"type": "email_change_current", **change})
    new = admin.generate_link({"type": "email_change_new", **change})  # paired with the half generated first
    assert current.properties.verification_type == "email_change_current"
    assert new.properties.verification_type == "email_change_new"
    assert f"token={new.properties.hashed_token}&type=email_change" in new.properties.action_link

    first = client.verify_otp(
        {"email": "mover@example.com", "token": current.properties.email_otp, "type": "email_change"}
    )
    assert first.session is None  # one of two
    assert User.objects.get(pk=user.pk).email == "mover@example.com"
    second = client.verify_otp({"token_hash": new.properties.hashed_token, "type": "email_change"})
    assert second.session is not None and second.user.email == "moved@example.com"
    assert not EmailNotification.objects.filter(event_key__startswith="ott:").exists()

    refused = {}
    for name, params in {
        "unknown user": {"type": "email_change_new", "email": "nobody@example.com", "new_email": "x@example.com"},
        "taken": {"type": "email_change_new", "email": "moved@example.com", "new_email": "occupied@example.com"},
        "no new address": {"type": "email_change_current", "email": "moved@example.com"},
    }.items():
        with pytest.raises(AuthApiError) as error:
            admin.generate_link(params)
        refused[name] = (error.value.status, error.value.code)
    assert refused == {
        "unknown user": (404, "user_not_found"),
        "taken": (422, "email_exists"),
        "no new address": (400, "validation_failed"),
    }


def test_a_new_email_change_half_for_another_address_replaces_the_pending_pair(admin, client):
    UserFactory(email="fickle@example.com")
    first_new = admin.generate_link(
        {"type": "email_change_new", "email": "fickle@example.com", "new_email": "a@example.com"}
    )
    current = admin.generate_link(
        {"type": "email_change_current", "email": "fickle@example.com", "new_email": "b@example.com"}
    )
    with pytest.raises(AuthApiError) as replaced:
        client.verify_otp({"token_hash": first_new.properties.hashed_token, "type": "email_change"})
    assert replaced.value.code == "otp_expired"
    client.verify_otp({"token_hash": current.properties.hashed_token, "type": "email_change"})
    second_new = admin.generate_link(
        {"type": "email_change_new", "email": "fickle@example.com", "new_email": "b@example.com"}
    )
    done = client.verify_otp({"token_hash": second_new.properties.hashed_token, "type": "email_change"})
    assert done.user.email == "b@example.com"


def test_the_anon_key_cannot_generate_links(make_client, settings):
    settings.SUPABASE_SERVICE_ROLE_KEY = SERVICE_KEY
    with pytest.raises(AuthApiError) as refused:
        make_client().admin.generate_link({"type": "recovery", "email": "x@example.com"})
    assert (refused.value.status, refused.value.code) == (403, "not_admin")
