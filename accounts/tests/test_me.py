from __future__ import annotations

from datetime import timedelta

import pytest
from django.conf import settings
from django.utils import timezone

from accounts import services
from accounts.models import PublicUser, Session, User
from accounts.tests.factories import UserFactory
from accounts.tests.support import sign_token

pytestmark = pytest.mark.django_db(transaction=False)

ME = "/api/v1/auth/me"
USER_FIELDS = {"id", "email", "username", "role", "display_name", "created_at", "referral_code"}
WWW_AUTHENTICATE = 'Bearer realm="velro"'


def _snapshot(user_id) -> tuple:
    """Everything PATCH /me could touch, for 'nothing changed' checks."""
    user = User.objects.get(pk=user_id)
    mirror = PublicUser.objects.get(pk=user_id)
    return (
        user.email,
        user.username,
        user.display_name,
        user.password,
        user.is_staff,
        user.is_superuser,
        user.is_active,
        mirror.email,
        mirror.username,
        mirror.display_name,
        mirror.role,
        mirror.updated_at,
    )


def _assert_error(response, status: int, error: str) -> dict:
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert body["error"] == error, body
    assert isinstance(body["detail"], str) and body["detail"]
    return body


def _assert_mirror_follows(user_id) -> PublicUser:
    user = User.objects.get(pk=user_id)
    mirror = PublicUser.objects.get(pk=user_id)
    assert (mirror.email, mirror.username, mirror.display_name) == (user.email, user.username, user.display_name)
    return mirror


# --- GET ---------------------------------------------------------------------------


def test_me_returns_the_user_body(auth_api, user):
    response = auth_api.get(ME)
    assert response.status_code == 200, response.content
    body = response.json()
    assert set(body) == USER_FIELDS
    assert body["id"] == str(user.pk)
    assert body["email"] == user.email
    assert body["username"] is None
    assert body["display_name"] == user.display_name
    assert body["role"] == "viewer"
    assert body["created_at"].startswith(user.date_joined.strftime("%Y-%m-%dT%H:%M:%S"))


def test_me_body_matches_the_login_body(auth_api):
    assert auth_api.get(ME).json() == auth_api.tokens["user"]


def test_me_shows_the_role_from_the_mirror(api, login):
    user = UserFactory(username="ed")
    PublicUser.objects.filter(pk=user.pk).update(role="editor")
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {login(user)['access_token']}")
    body = api.get(ME).json()
    assert body["role"] == "editor"
    assert body["username"] == "ed"


def test_me_never_exposes_the_password_hash(auth_api, user):
    response = auth_api.get(ME)
    assert b"argon2" not in response.content
    assert "password" not in response.json()


# --- PATCH: allowed changes ---------------------------------------------------------


def test_patch_display_name_updates_user_and_mirror(auth_api, user):
    mirror_before = PublicUser.objects.get(pk=user.pk)
    response = auth_api.patch(ME, {"display_name": "Ada Lovelace"}, format="json")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["display_name"] == "Ada Lovelace"
    assert body["id"] == str(user.pk)
    assert set(body) == USER_FIELDS
    assert User.objects.get(pk=user.pk).display_name == "Ada Lovelace"
    mirror = _assert_mirror_follows(user.pk)
    assert mirror.display_name == "Ada Lovelace"
    assert mirror.updated_at > mirror_before.updated_at
    assert mirror.created_at == mirror_before.created_at


def test_patch_username_updates_user_and_mirror(auth_api, user):
    mirror_before = PublicUser.objects.get(pk=user.pk)
    response = auth_api.patch(ME, {"username": "Ada_99"}, format="json")
    assert response.status_code == 200, response.content
    assert response.json()["username"] == "Ada_99"
    assert User.objects.get(pk=user.pk).username == "Ada_99"
    mirror = _assert_mirror_follows(user.pk)
    assert mirror.username == "Ada_99"
    assert mirror.updated_at > mirror_before.updated_at


def test_patch_both_fields_at_once(auth_api, user):
    response = auth_api.patch(ME, {"display_name": "Grace", "username": "grace.h"}, format="json")
    assert response.status_code == 200, response.content
    body = response.json()
    assert (body["display_name"], body["username"]) == ("Grace", "grace.h")
    mirror = _assert_mirror_follows(user.pk)
    assert (mirror.display_name, mirror.username) == ("Grace", "grace.h")


def test_patched_profile_is_what_get_me_returns_next(auth_api):
    patched = auth_api.patch(ME, {"display_name": "Next Read", "username": "next_read"}, format="json").json()
    assert auth_api.get(ME).json() == patched


def test_patch_keeps_the_role_in_the_response(api, login):
    user = UserFactory()
    PublicUser.objects.filter(pk=user.pk).update(role="admin")
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {login(user)['access_token']}")
    response = api.patch(ME, {"display_name": "Boss"}, format="json")
    assert response.status_code == 200, response.content
    assert response.json()["role"] == "admin"
    assert PublicUser.objects.get(pk=user.pk).role == "admin"


def test_patch_display_name_to_empty_is_allowed(auth_api, user):
    response = auth_api.patch(ME, {"display_name": ""}, format="json")
    assert response.status_code == 200, response.content
    assert response.json()["display_name"] == ""
    assert _assert_mirror_follows(user.pk).display_name == ""


def test_patch_own_username_in_another_case_is_allowed(api, login):
    user = UserFactory(username="frank")
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {login(user)['access_token']}")
    response = api.patch(ME, {"username": "Frank"}, format="json")
    assert response.status_code == 200, response.content
    assert User.objects.get(pk=user.pk).username == "Frank"
    assert _assert_mirror_follows(user.pk).username == "Frank"


def test_empty_patch_changes_nothing(auth_api, user):
    before = _snapshot(user.pk)
    response = auth_api.patch(ME, {}, format="json")
    assert response.status_code == 200, response.content
    assert _snapshot(user.pk) == before


def test_empty_username_clears_it_to_null(api, login):
    user = UserFactory(username="to_clear")
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {login(user)['access_token']}")
    response = api.patch(ME, {"username": ""}, format="json")
    assert response.status_code == 200, response.content
    assert response.json()["username"] is None
    assert User.objects.get(pk=user.pk).username is None
    assert PublicUser.objects.get(pk=user.pk).username is None


def test_two_users_may_both_clear_their_username(api, login):
    first, second = UserFactory(username="first_u"), UserFactory(username="second_u")
    for user in (first, second):
        api.credentials(HTTP_AUTHORIZATION=f"Bearer {login(user)['access_token']}")
        assert api.patch(ME, {"username": ""}, format="json").status_code == 200
    assert User.objects.filter(pk__in=[first.pk, second.pk], username__isnull=True).count() == 2


def test_null_username_clears_it_or_is_rejected_never_silently_ignored(api, login):
    # The serializer accepts null; a 200 that leaves the username as it was
    # would tell the client its change was applied when it was not.
    user = UserFactory(username="null_me")
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {login(user)['access_token']}")
    response = api.patch(ME, {"username": None}, format="json")
    if response.status_code == 200:
        assert response.json()["username"] is None
        assert User.objects.get(pk=user.pk).username is None
        assert PublicUser.objects.get(pk=user.pk).username is None
    else:
        _assert_error(response, 400, "validation_error")
        assert User.objects.get(pk=user.pk).username == "null_me"


# --- PATCH: refused changes ------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        {"email": "changed@example.com"},
        {"role": "admin"},
        {"is_staff": True},
        {"is_superuser": True},
        {"is_active": False},
        {"password": "a brand new passphrase"},
        {"id": "00000000-0000-0000-0000-000000000000"},
        {"created_at": "2000-01-01T00:00:00Z"},
    ],
    ids=lambda payload: next(iter(payload)),
)
def test_patch_of_a_field_it_may_not_change_is_a_400_and_changes_nothing(auth_api, user, payload):
    before = _snapshot(user.pk)
    response = auth_api.patch(ME, payload, format="json")
    body = _assert_error(response, 400, "validation_error")
    (field,) = payload
    assert field in body["fields"], body
    assert _snapshot(user.pk) == before
    assert User.objects.filter(pk=user.pk).exists()


@pytest.mark.parametrize("forbidden", ["email", "role", "is_staff", "password", "id"])
def test_a_forbidden_field_beside_an_allowed_one_changes_nothing(auth_api, user, forbidden):
    values = {
        "email": "sneaky@example.com",
        "role": "admin",
        "is_staff": True,
        "password": "a brand new passphrase",
        "id": "00000000-0000-0000-0000-000000000000",
    }
    before = _snapshot(user.pk)
    response = auth_api.patch(
        ME, {"display_name": "Should Not Stick", "username": "not_stuck", forbidden: values[forbidden]}, format="json"
    )
    body = _assert_error(response, 400, "validation_error")
    assert forbidden in body["fields"]
    assert "display_name" not in body["fields"]
    assert _snapshot(user.pk) == before


@pytest.mark.django_db(transaction=True)
def test_username_taken_by_another_user_is_a_409_and_changes_nothing(api, login):
    # transaction=True: requests run in autocommit, as in production.
    UserFactory(username="Taken_Name")
    user = UserFactory(username="mine", display_name="Mine")
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {login(user)['access_token']}")
    before = _snapshot(user.pk)
    response = api.patch(ME, {"username": "taken_name", "display_name": "Changed"}, format="json")
    _assert_error(response, 409, "username_taken")
    assert _snapshot(user.pk) == before
    response = api.patch(ME, {"username": "free_one"}, format="json")
    assert response.status_code == 200, response.content
    assert _assert_mirror_follows(user.pk).username == "free_one"


def test_username_conflict_leaves_an_enclosing_transaction_usable(api, login):
    # Here every request runs inside the test's transaction (as it would
    # under ATOMIC_REQUESTS or any caller's atomic block). A 409 that was
    # caught and answered must not leave that transaction aborted.
    UserFactory(username="occupied")
    user = UserFactory(display_name="Before")
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {login(user)['access_token']}")
    before = _snapshot(user.pk)
    response = api.patch(ME, {"username": "OCCUPIED", "display_name": "After"}, format="json")
    _assert_error(response, 409, "username_taken")
    assert _snapshot(user.pk) == before
    response = api.patch(ME, {"username": "free_one"}, format="json")
    assert response.status_code == 200, response.content
    assert _assert_mirror_follows(user.pk).username == "free_one"


@pytest.mark.parametrize(
    "username",
    ["has space", "ab", "a" * 31, "émile", "semi;colon", "new\nline", ["list"], {"o": 1}, True],
    ids=["space", "too-short", "too-long", "non-ascii", "semicolon", "newline", "list", "object", "bool"],
)
def test_invalid_username_is_a_400_and_changes_nothing(auth_api, user, username):
    before = _snapshot(user.pk)
    response = auth_api.patch(ME, {"username": username}, format="json")
    body = _assert_error(response, 400, "validation_error")
    assert "username" in body["fields"]
    assert _snapshot(user.pk) == before


@pytest.mark.parametrize(
    "display_name", ["x" * 101, ["x"], {"x": 1}, None, "nul\x00byte"], ids=["too-long", "list", "object", "null", "nul"]
)
def test_invalid_display_name_is_a_400_and_changes_nothing(auth_api, user, display_name):
    before = _snapshot(user.pk)
    response = auth_api.patch(ME, {"display_name": display_name}, format="json")
    body = _assert_error(response, 400, "validation_error")
    assert "display_name" in body["fields"]
    assert _snapshot(user.pk) == before


@pytest.mark.parametrize("raw", ['["display_name"]', '"text"', "42", "null"], ids=["list", "string", "number", "null"])
def test_patch_body_that_is_not_an_object_is_a_400(auth_api, user, raw):
    before = _snapshot(user.pk)
    response = auth_api.generic("PATCH", ME, raw, content_type="application/json")
    _assert_error(response, 400, "validation_error")
    assert _snapshot(user.pk) == before


def test_patch_body_that_is_not_json_is_a_400(auth_api):
    response = auth_api.generic("PATCH", ME, "{nope", content_type="application/json")
    _assert_error(response, 400, "invalid_json")


def test_patch_form_encoded_is_a_415(auth_api, user):
    before = _snapshot(user.pk)
    response = auth_api.generic("PATCH", ME, "display_name=Form", content_type="application/x-www-form-urlencoded")
    _assert_error(response, 415, "unsupported_media_type")
    assert _snapshot(user.pk) == before


# --- authentication ------------------------------------------------------------------------


def _assert_401(response, error: str) -> None:
    _assert_error(response, 401, error)
    assert response["WWW-Authenticate"] == WWW_AUTHENTICATE


def test_get_me_without_a_token_is_a_401_with_www_authenticate(api, db):
    _assert_401(api.get(ME), "not_authenticated")


def test_patch_me_without_a_token_is_a_401_with_www_authenticate(api, db):
    _assert_401(api.patch(ME, {"display_name": "x"}, format="json"), "not_authenticated")


def test_me_with_another_scheme_is_a_401(api, db):
    api.credentials(HTTP_AUTHORIZATION="Basic dXNlcjpwYXNz")
    _assert_401(api.get(ME), "not_authenticated")


@pytest.mark.parametrize(
    "header",
    ["Bearer", "Bearer not-a-jwt", "Bearer a.b.c", "Bearer two tokens", "Bearer \u00e9t\u00e9.x.y"],
    ids=["no-token", "garbage", "three-parts", "two-tokens", "non-ascii"],
)
def test_me_with_an_invalid_token_is_a_401(api, header, db):
    api.credentials(HTTP_AUTHORIZATION=header.encode().decode("latin-1"))
    _assert_401(api.get(ME), "invalid_token")


def test_me_with_a_tampered_token_is_a_401(api, user, login):
    access = login(user)["access_token"]
    header, payload, signature = access.split(".")
    flipped = signature[:-2] + ("AA" if signature[-2:] != "AA" else "BB")
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {header}.{payload}.{flipped}")
    _assert_401(api.get(ME), "invalid_token")


def _forge(*, key: bytes | None = None, **overrides: object) -> str:
    """An access token with the app's claims, some overridden (None drops one),
    signed with the active key, or HS256 with `key`."""
    now = int(timezone.now().timestamp())
    claims = {
        "iss": settings.JWT_ISSUER,
        "aud": settings.JWT_AUDIENCE,
        "typ": "access",
        "iat": now,
        "nbf": now,
        "exp": now + 60,
        **overrides,
    }
    return sign_token({k: v for k, v in claims.items() if v is not None}, hs256_key=key)


@pytest.mark.parametrize(
    "override",
    [
        {"exp": int(timezone.now().timestamp()) - 3600},
        {"aud": "someone-else"},
        {"iss": "someone-else"},
        {"typ": "refresh"},
        {"key": b"k" * 32},
        {"sid": None},
    ],
    ids=["expired", "wrong-audience", "wrong-issuer", "wrong-type", "wrong-key", "no-session-claim"],
)
def test_me_with_a_token_that_fails_a_claim_check_is_a_401(api, user, login, override):
    login(user)
    session_id = Session.objects.filter(user=user).latest("created_at").pk
    claims = {"sub": str(user.pk), "sid": str(session_id), **override}
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {_forge(**claims)}")
    _assert_401(api.get(ME), "invalid_token")


def test_a_well_forged_token_is_accepted_so_the_claim_checks_above_mean_something(api, user, login):
    login(user)
    session_id = Session.objects.filter(user=user).latest("created_at").pk
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {_forge(sub=str(user.pk), sid=str(session_id))}")
    assert api.get(ME).status_code == 200


# Each of these first answers one /me (so a cached session/user is warm), then
# ends the session or the user the way the application does, and expects the
# very next request to be refused.


def test_me_after_logout_is_a_401(auth_api):
    assert auth_api.get(ME).status_code == 200
    assert auth_api.post("/api/v1/auth/logout", {}, format="json").status_code == 204
    _assert_401(auth_api.get(ME), "invalid_token")
    _assert_401(auth_api.patch(ME, {"display_name": "x"}, format="json"), "invalid_token")


def test_me_after_an_operator_revokes_the_session_is_a_401(auth_api, user):
    assert auth_api.get(ME).status_code == 200
    session_ids = list(Session.objects.filter(user=user).values_list("pk", flat=True))
    assert services.session_revoke(session_ids=session_ids, reason="operator") == 1
    _assert_401(auth_api.get(ME), "invalid_token")


def test_me_for_a_user_deactivated_after_login_is_a_401(auth_api, user):
    assert auth_api.get(ME).status_code == 200
    deactivated = User.objects.get(pk=user.pk)
    deactivated.is_active = False
    deactivated.save()
    _assert_401(auth_api.get(ME), "invalid_token")


def test_me_shows_a_role_changed_by_an_operator_after_login(auth_api, user):
    assert auth_api.get(ME).json()["role"] == "viewer"
    mirror = PublicUser.objects.get(pk=user.pk)
    mirror.role = "editor"
    mirror.save()
    assert auth_api.get(ME).json()["role"] == "editor"


def test_me_after_the_session_expired_is_a_401(auth_api, user):
    # No warm-up request: the row is changed behind the application's back.
    Session.objects.filter(user=user).update(expires_at=timezone.now() - timedelta(seconds=1))
    _assert_401(auth_api.get(ME), "invalid_token")


def test_unauthenticated_patch_changes_nothing(api, user):
    before = _snapshot(user.pk)
    api.patch(ME, {"display_name": "Anonymous"}, format="json")
    assert _snapshot(user.pk) == before


# --- routing ---------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/api/v1/auth/nope", "/api/v1/auth/me/", "/api/v2/auth/me", "/nothing-here"])
def test_unknown_url_is_a_404_json(auth_api, path):
    response = auth_api.get(path)
    _assert_error(response, 404, "not_found")


@pytest.mark.parametrize("method", ["post", "put", "delete"])
def test_wrong_method_on_me_is_a_405_json(auth_api, method):
    response = getattr(auth_api, method)(ME, {}, format="json")
    _assert_error(response, 405, "method_not_allowed")
    allowed = {part.strip() for part in response["Allow"].split(",")}
    assert {"GET", "PATCH"} <= allowed
