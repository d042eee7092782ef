"""The GoTrue-compatible surface (/auth/v1/) over HTTP: shapes, claims, both
error flavours, the apikey check, and that it shares users, sessions and rate
limits with the native API.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from datetime import timedelta

import jwt
import pytest
from django.conf import settings
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.models import RefreshToken, Session, User
from accounts.tests.factories import DEFAULT_PASSWORD, UserFactory
from accounts.tests.support import ANON_KEY, STRONG, sign_token, token_claims
from accounts.tests.support import PROJECT_JWT_SECRET as SECRET
from accounts.tokens import derived_key
from monitoring import audit
from monitoring.models import AuditEvent
from referrals.models import ReferralCode
from velro.tests.support import stalled_inserts

pytestmark = pytest.mark.django_db(transaction=False)

SIGNUP = "/auth/v1/signup"
TOKEN = "/auth/v1/token"
PASSWORD_GRANT = "/auth/v1/token?grant_type=password"
REFRESH_GRANT = "/auth/v1/token?grant_type=refresh_token"
USER = "/auth/v1/user"
LOGOUT = "/auth/v1/logout"
SETTINGS = "/auth/v1/settings"
HEALTH = "/auth/v1/health"
NATIVE_LOGIN = "/api/v1/auth/login"
NATIVE_REFRESH = "/api/v1/auth/refresh"
NATIVE_ME = "/api/v1/auth/me"
VERSIONED = {"HTTP_X_SUPABASE_API_VERSION": "2024-01-01"}
USER_FIELDS = {
    "id",
    "aud",
    "role",
    "email",
    "email_confirmed_at",
    "phone",
    "confirmed_at",
    "last_sign_in_at",
    "app_metadata",
    "user_metadata",
    "identities",
    "created_at",
    "updated_at",
    "is_anonymous",
}
CLAIMS = {
    "sub",
    "aud",
    "role",
    "email",
    "phone",
    "app_metadata",
    "user_metadata",
    "session_id",
    "aal",
    "amr",
    "is_anonymous",
    "iss",
    "iat",
    "exp",
}


@pytest.fixture(autouse=True)
def _supabase_settings(settings):
    settings.SUPABASE_JWT_SECRET = SECRET
    settings.SUPABASE_ANON_KEY = ""


@pytest.fixture(params=["legacy", "2024-01-01"])
def flavour(request) -> dict:
    """The request headers of each error flavour: none, or X-Supabase-Api-Version."""
    return {} if request.param == "legacy" else dict(VERSIONED)


def assert_gotrue_error(response, status: int, code: str, flavour: dict) -> dict:
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    if flavour:
        assert response["X-Supabase-Api-Version"] == "2024-01-01"
        assert body["code"] == code
        assert isinstance(body["message"], str) and body["message"]
        assert set(body) - {"weak_password"} == {"code", "message"}
    else:
        assert not response.has_header("X-Supabase-Api-Version")
        assert body["code"] == status
        assert body["error_code"] == code
        assert isinstance(body["msg"], str) and body["msg"]
        assert set(body) - {"weak_password"} == {"code", "error_code", "msg"}
    return body


def password_grant(api, email: str, password: str = DEFAULT_PASSWORD, **headers):
    return api.post(PASSWORD_GRANT, {"email": email, "password": password}, format="json", **headers)


def refresh_grant(api, token: object, **headers):
    return api.post(REFRESH_GRANT, {"refresh_token": token}, format="json", **headers)


def session_for(api, user: User) -> dict:
    response = password_grant(api, user.email)
    assert response.status_code == 200, response.content
    return response.json()


def bearer(access_token: str, **extra) -> dict:
    return {"HTTP_AUTHORIZATION": f"Bearer {access_token}", **extra}


def decode(access_token: str) -> dict:
    """Only the JWKS and GoTrue's audience: what a downstream service does."""
    return token_claims(access_token, audience="authenticated")


def age_rotation(raw: str, seconds: float) -> None:
    digest = hashlib.sha256(raw.encode()).hexdigest()
    updated = RefreshToken.objects.filter(token_hash=digest).update(
        rotated_at=timezone.now() - timedelta(seconds=seconds)
    )
    assert updated == 1


# --- signup ---------------------------------------------------------------------------------------------


def test_signup_returns_a_gotrue_session_with_the_user_metadata(api):
    response = api.post(
        SIGNUP,
        {"email": "New@Example.com", "password": STRONG, "data": {"full_name": "Ada Lovelace", "plan": "pro"}},
        format="json",
    )
    assert response.status_code == 200, response.content
    body = response.json()
    assert set(body) == {"access_token", "token_type", "expires_in", "expires_at", "refresh_token", "user"}
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == settings.ACCESS_TOKEN_TTL_SECONDS
    user = body["user"]
    assert set(user) == USER_FIELDS
    assert user["email"] == "New@example.com"
    assert user["user_metadata"] == {"full_name": "Ada Lovelace", "plan": "pro"}
    assert user["app_metadata"] == {"provider": "email", "providers": ["email"]}
    assert user["aud"] == "authenticated" and user["role"] == "authenticated"
    assert user["email_confirmed_at"] and user["confirmed_at"] == user["email_confirmed_at"]
    assert user["is_anonymous"] is False
    assert [identity["provider"] for identity in user["identities"]] == ["email"]
    row = User.objects.select_related("profile").get(pk=user["id"])
    assert row.user_metadata == {"full_name": "Ada Lovelace", "plan": "pro"}
    assert row.display_name == "Ada Lovelace"
    assert row.profile.display_name == "Ada Lovelace"  # the mirror, same transaction
    assert ReferralCode.objects.filter(user=row).exists()
    assert row.password.startswith("argon2$argon2id$")


def test_signup_with_a_referral_code_in_data_records_the_intent(api):
    from referrals.models import ReferralIntent

    response = api.post(
        SIGNUP, {"email": "ref@example.com", "password": STRONG, "data": {"referral_code": "ABCD-2345"}}, format="json"
    )
    assert response.status_code == 200, response.content
    assert ReferralIntent.objects.get(referred_id=response.json()["user"]["id"]).code == "ABCD-2345"


def test_signup_of_a_taken_email_is_user_already_exists(api, flavour):
    UserFactory(email="taken@example.com")
    response = api.post(SIGNUP, {"email": "TAKEN@example.com", "password": STRONG}, format="json", **flavour)
    assert_gotrue_error(response, 422, "user_already_exists", flavour)


@pytest.mark.parametrize(
    ("password", "reasons"),
    [("short", {"length"}), ("password123", {"pwned"}), ("8675309123456", {"characters"})],
)
def test_signup_with_a_weak_password_is_weak_password_with_reasons(api, flavour, password, reasons):
    response = api.post(SIGNUP, {"email": "weak@example.com", "password": password}, format="json", **flavour)
    body = assert_gotrue_error(response, 422, "weak_password", flavour)
    assert set(body["weak_password"]["reasons"]) <= {"length", "characters", "pwned"}
    assert reasons <= set(body["weak_password"]["reasons"])
    assert not User.objects.filter(email="weak@example.com").exists()


@pytest.mark.parametrize(
    "payload",
    [
        {"email": "not-an-email", "password": STRONG},
        {"password": STRONG},
        {"email": "a@example.com"},
        {"email": 12, "password": STRONG},
        {"email": "a@example.com", "password": STRONG, "data": "not an object"},
    ],
)
def test_malformed_signup_is_validation_failed(api, flavour, payload):
    response = api.post(SIGNUP, payload, format="json", **flavour)
    assert_gotrue_error(response, 400, "validation_failed", flavour)


def test_signup_body_that_is_not_json_is_bad_json(api, flavour):
    response = api.post(SIGNUP, "{not json", content_type="application/json", **flavour)
    assert_gotrue_error(response, 400, "bad_json", flavour)


def test_phone_and_anonymous_signups_are_refused_as_disabled(api):
    phone = api.post(SIGNUP, {"phone": "+15550001111", "password": STRONG}, format="json")
    assert phone.json()["error_code"] == "phone_provider_disabled"
    anonymous = api.post(SIGNUP, {"data": {}}, format="json")
    assert anonymous.status_code == 422
    assert anonymous.json()["error_code"] == "anonymous_provider_disabled"


# --- password grant ----------------------------------------------------------------------------------------


def test_password_grant_returns_the_gotrue_session_shape(api, user):
    body = session_for(api, user)
    assert set(body) == {"access_token", "token_type", "expires_in", "expires_at", "refresh_token", "user"}
    assert body["user"]["id"] == str(user.pk)
    assert body["user"]["last_sign_in_at"] is not None
    assert 0 < body["expires_at"] - time.time() <= settings.ACCESS_TOKEN_TTL_SECONDS
    assert decode(body["access_token"])["exp"] == body["expires_at"]


def test_access_token_verifies_from_the_jwks_and_carries_every_gotrue_claim(api):
    UserFactory(email="claims@example.com")
    User.objects.filter(email="claims@example.com").update(user_metadata={"tier": "gold"}, phone="+15550001234")
    body = session_for(api, User.objects.get(email="claims@example.com"))
    claims = decode(body["access_token"])
    assert set(claims) == CLAIMS
    session = Session.objects.get(user__email="claims@example.com")
    assert claims["sub"] == body["user"]["id"]
    assert claims["aud"] == "authenticated"
    assert claims["role"] == "authenticated"
    assert claims["email"] == "claims@example.com"
    assert claims["phone"] == "+15550001234"
    assert claims["app_metadata"] == {"provider": "email", "providers": ["email"]}
    assert claims["user_metadata"] == {"tier": "gold"}
    assert claims["session_id"] == str(session.pk)
    assert claims["aal"] == "aal1"
    assert claims["amr"] == [{"method": "password", "timestamp": int(session.created_at.timestamp())}]
    assert claims["is_anonymous"] is False
    assert claims["iss"] == settings.GOTRUE_ISSUER
    assert claims["exp"] - claims["iat"] == settings.ACCESS_TOKEN_TTL_SECONDS
    header = jwt.get_unverified_header(body["access_token"])
    assert header["alg"] == "ES256"
    assert header["kid"]
    with pytest.raises(jwt.InvalidAlgorithmError):  # the Supabase secret no longer signs
        jwt.decode(body["access_token"], SECRET, algorithms=["HS256"], audience="authenticated")


def test_a_legacy_hs256_token_signed_with_the_supabase_secret_still_verifies(api, user):
    claims = decode(session_for(api, user)["access_token"])
    legacy = sign_token(claims, hs256_key=SECRET)
    assert api.get(USER, **bearer(legacy)).json()["id"] == str(user.pk)


def test_without_a_supabase_secret_legacy_tokens_verify_with_a_derived_key(api, user, settings):
    settings.SUPABASE_JWT_SECRET = ""
    claims = decode(session_for(api, user)["access_token"])
    assert api.get(USER, **bearer(sign_token(claims, hs256_key=derived_key("gotrue-jwt")))).status_code == 200
    assert api.get(USER, **bearer(sign_token(claims, hs256_key=SECRET))).status_code == 403


def test_wrong_password_and_unknown_email_are_the_same_invalid_credentials(api, user, flavour):
    wrong = password_grant(api, user.email, "not the password at all", **flavour)
    unknown = password_grant(api, "nobody@example.com", "not the password at all", **flavour)
    assert assert_gotrue_error(wrong, 400, "invalid_credentials", flavour) == assert_gotrue_error(
        unknown, 400, "invalid_credentials", flavour
    )


def test_inactive_user_gets_invalid_credentials(api, flavour):
    user = UserFactory(is_active=False)
    assert_gotrue_error(password_grant(api, user.email, **flavour), 400, "invalid_credentials", flavour)


@pytest.mark.postgresql
def test_password_grant_runs_the_native_login_budget_of_two_queries(api, user):
    password_grant(api, user.email)  # warm: the dummy hash, the first connection
    with CaptureQueriesContext(connection) as queries:
        response = password_grant(api, user.email)
    assert response.status_code == 200
    assert len(queries.captured_queries) <= 2, [q["sql"] for q in queries.captured_queries]


def test_password_grant_with_extra_client_fields_is_accepted(api, user):
    response = api.post(
        PASSWORD_GRANT,
        {
            "email": user.email,
            "password": DEFAULT_PASSWORD,
            "data": {},
            "gotrue_meta_security": {"captcha_token": None},
        },
        format="json",
    )
    assert response.status_code == 200, response.content


def test_unsupported_or_missing_grant_type_is_validation_failed(api, user, flavour):
    for path in (TOKEN, f"{TOKEN}?grant_type=pkce"):
        response = api.post(path, {"email": user.email, "password": DEFAULT_PASSWORD}, format="json", **flavour)
        assert_gotrue_error(response, 400, "validation_failed", flavour)


def test_password_grant_without_email_is_validation_failed(api, flavour):
    response = api.post(PASSWORD_GRANT, {"password": DEFAULT_PASSWORD}, format="json", **flavour)
    assert_gotrue_error(response, 400, "validation_failed", flavour)


def test_login_over_the_ip_limit_is_over_request_rate_limit_with_retry_after(api, user, settings, flavour):
    settings.RATELIMIT_LOGIN_IP = (2, 300)
    for _ in range(2):
        assert password_grant(api, user.email, **flavour).status_code == 200
    response = password_grant(api, user.email, **flavour)
    assert_gotrue_error(response, 429, "over_request_rate_limit", flavour)
    assert 1 <= int(response["Retry-After"]) <= 2 * 300  # the sliding count: up to the end of the next window


def test_the_surfaces_share_one_login_limit(api, user, settings):
    settings.RATELIMIT_LOGIN_IP = (2, 300)
    assert password_grant(api, user.email).status_code == 200
    native = api.post(NATIVE_LOGIN, {"email": user.email, "password": DEFAULT_PASSWORD}, format="json")
    assert native.status_code == 200
    assert password_grant(api, user.email).json()["error_code"] == "over_request_rate_limit"
    native = api.post(NATIVE_LOGIN, {"email": user.email, "password": DEFAULT_PASSWORD}, format="json")
    assert native.status_code == 429
    assert native.json()["error"] == "rate_limited"  # the native API keeps its own shape


def test_failed_logins_count_against_the_account_on_both_surfaces(api, user, settings, monkeypatch):
    from velro.ratelimit import limiter

    monkeypatch.setattr(limiter, "clock", lambda: 1_800_000_000.0)  # one fixed window, however slow the box
    settings.RATELIMIT_LOGIN_FAILURES_ACCOUNT_IP = (3, 300)
    for _ in range(2):
        assert password_grant(api, user.email, "wrong password here").status_code == 400
    api.post(NATIVE_LOGIN, {"email": user.email, "password": "wrong password here"}, format="json")
    assert password_grant(api, user.email).json()["error_code"] == "over_request_rate_limit"


# --- refresh grant --------------------------------------------------------------------------------------------


def test_refresh_grant_rotates_and_keeps_the_session(api, user):
    first = session_for(api, user)
    response = refresh_grant(api, first["refresh_token"])
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["refresh_token"] != first["refresh_token"]
    assert decode(body["access_token"])["session_id"] == decode(first["access_token"])["session_id"]
    # amr keeps the time of the password check, not of the refresh.
    assert decode(body["access_token"])["amr"] == decode(first["access_token"])["amr"]
    assert Session.objects.filter(user=user).count() == 1


def test_unknown_refresh_token_is_refresh_token_not_found(api, flavour):
    response = refresh_grant(api, "r" * 43, **flavour)
    assert_gotrue_error(response, 400, "refresh_token_not_found", flavour)


def test_missing_refresh_token_is_validation_failed(api, flavour):
    response = api.post(REFRESH_GRANT, {}, format="json", **flavour)
    assert_gotrue_error(response, 400, "validation_failed", flavour)


def test_reuse_within_the_grace_window_returns_the_same_successor(api, user):
    first = session_for(api, user)
    a = refresh_grant(api, first["refresh_token"]).json()
    b = refresh_grant(api, first["refresh_token"]).json()
    assert a["refresh_token"] == b["refresh_token"]


def test_reuse_after_the_grace_window_is_already_used_and_revokes_the_family(api, user, flavour):
    first = session_for(api, user)
    second = refresh_grant(api, first["refresh_token"]).json()
    age_rotation(first["refresh_token"], settings.REFRESH_REUSE_GRACE_SECONDS + 5)
    response = refresh_grant(api, first["refresh_token"], **flavour)
    assert_gotrue_error(response, 400, "refresh_token_already_used", flavour)
    session = Session.objects.get(user=user)
    assert session.revoked_reason == "refresh_reuse"
    # The legitimate holder's successor dies with the family, the GoTrue way.
    assert_gotrue_error(
        refresh_grant(api, second["refresh_token"], **flavour), 400, "refresh_token_already_used", flavour
    )
    assert_gotrue_error(api.get(USER, **bearer(second["access_token"], **flavour)), 403, "session_not_found", flavour)
    audit_kinds = [event.kind for event in audit.pending()]
    assert AuditEvent.Kind.REFRESH_REUSE in audit_kinds


def test_refresh_of_a_banned_user_is_user_banned(api, user):
    body = session_for(api, user)
    User.objects.filter(pk=user.pk).update(is_active=False)
    response = refresh_grant(api, body["refresh_token"])
    assert response.status_code == 400
    assert response.json()["error_code"] == "user_banned"


def test_refresh_over_the_ip_limit_is_over_request_rate_limit(api, settings, flavour):
    settings.RATELIMIT_REFRESH_IP = (1, 300)
    refresh_grant(api, "r" * 43)
    assert_gotrue_error(refresh_grant(api, "r" * 43, **flavour), 429, "over_request_rate_limit", flavour)


# --- /user ------------------------------------------------------------------------------------------------------


def test_get_user_returns_the_gotrue_user(api, user):
    body = session_for(api, user)
    response = api.get(USER, **bearer(body["access_token"]))
    assert response.status_code == 200, response.content
    got = response.json()
    assert set(got) == USER_FIELDS
    assert got["id"] == str(user.pk)
    assert got["email"] == user.email
    identity = got["identities"][0]
    assert identity["provider"] == "email"
    assert identity["user_id"] == identity["id"] == str(user.pk)
    assert identity["identity_data"]["email"] == user.email


def test_get_user_on_a_warm_cache_runs_no_sql(api, user):
    body = session_for(api, user)
    assert api.get(USER, **bearer(body["access_token"])).status_code == 200
    with CaptureQueriesContext(connection) as queries:
        response = api.get(USER, **bearer(body["access_token"]))
    assert response.status_code == 200
    assert queries.captured_queries == []


def test_get_user_without_a_token_is_no_authorization(api, flavour):
    assert_gotrue_error(api.get(USER, **flavour), 401, "no_authorization", flavour)


def test_a_basic_authorization_header_is_no_authorization(api, flavour):
    response = api.get(USER, HTTP_AUTHORIZATION="Basic dXNlcjpwYXNz", **flavour)
    assert_gotrue_error(response, 401, "no_authorization", flavour)


@pytest.mark.parametrize("kind", ["garbage", "other_secret", "expired", "wrong_audience", "native_token", "none_alg"])
def test_bad_tokens_are_bad_jwt(api, user, flavour, kind):
    body = session_for(api, user)
    claims = decode(body["access_token"])
    if kind == "garbage":
        token = "not.a.jwt"
    elif kind == "other_secret":
        token = jwt.encode(claims, "another-secret-" + "x" * 30, algorithm="HS256")
    elif kind == "expired":
        token = sign_token({**claims, "exp": int(time.time()) - 60})
    elif kind == "wrong_audience":
        token = sign_token({**claims, "aud": "somebody-else"})
    elif kind == "native_token":
        token = api.post(NATIVE_LOGIN, {"email": user.email, "password": DEFAULT_PASSWORD}, format="json").json()[
            "access_token"
        ]
    else:
        token = jwt.encode(claims, None, algorithm="none")
    error = assert_gotrue_error(api.get(USER, **bearer(token, **flavour)), 403, "bad_jwt", flavour)
    # GoTrue's wording only: nothing of the JWT library's messages (claim names, algorithms).
    message = error.get("msg") or error.get("message")
    assert message in {
        "invalid JWT: unable to parse or verify signature, token has invalid claims: token is expired",
        "invalid JWT: unable to parse or verify signature, token is malformed or its signature is invalid",
    }, message
    assert (kind == "expired") == message.endswith("token is expired")


def test_api_keys_are_not_accepted_on_the_gotrue_surface(api):
    signup = api.post("/api/v1/auth/signup", {"email": "keys@example.com", "password": STRONG}, format="json")
    key = signup.json()["api_key"]["key"]
    assert api.get(USER, **bearer(key)).json()["error_code"] == "bad_jwt"


def test_put_user_merges_data_into_user_metadata(api, user):
    User.objects.filter(pk=user.pk).update(user_metadata={"keep": 1, "drop": 2, "change": "a"})
    body = session_for(api, user)
    response = api.put(
        USER, {"data": {"change": "b", "drop": None, "new": [1, 2]}}, format="json", **bearer(body["access_token"])
    )
    assert response.status_code == 200, response.content
    expected = {"keep": 1, "change": "b", "new": [1, 2]}
    assert response.json()["user_metadata"] == expected
    assert User.objects.get(pk=user.pk).user_metadata == expected
    # The cached snapshot was invalidated: GET sees the change at once.
    assert api.get(USER, **bearer(body["access_token"])).json()["user_metadata"] == expected


def test_put_user_with_a_password_changes_it_and_ends_the_other_sessions(api, user):
    this = session_for(api, user)
    other = session_for(api, user)
    change = {"password": STRONG, "current_password": DEFAULT_PASSWORD}
    response = api.put(USER, change, format="json", **bearer(this["access_token"]))
    assert response.status_code == 200, response.content
    assert User.objects.get(pk=user.pk).check_password(STRONG)
    assert api.get(USER, **bearer(this["access_token"])).status_code == 200
    assert api.get(USER, **bearer(other["access_token"])).json()["error_code"] == "session_not_found"
    assert password_grant(api, user.email, DEFAULT_PASSWORD).json()["error_code"] == "invalid_credentials"
    assert password_grant(api, user.email, STRONG).status_code == 200


def test_put_user_with_the_same_password_is_same_password(api, user, settings, flavour):
    settings.GOTRUE_PASSWORD_CHANGE_REQUIRES_CURRENT_PASSWORD = False  # the opt-out: the session alone
    body = session_for(api, user)
    response = api.put(USER, {"password": DEFAULT_PASSWORD}, format="json", **bearer(body["access_token"], **flavour))
    assert_gotrue_error(response, 422, "same_password", flavour)
    both = {"password": DEFAULT_PASSWORD, "current_password": DEFAULT_PASSWORD}
    response = api.put(USER, both, format="json", **bearer(body["access_token"], **flavour))
    assert_gotrue_error(response, 422, "same_password", flavour)


def test_put_user_with_a_weak_password_is_weak_password(api, user, flavour):
    body = session_for(api, user)
    weak = {"password": "short", "current_password": DEFAULT_PASSWORD}
    response = api.put(USER, weak, format="json", **bearer(body["access_token"], **flavour))
    assert "length" in assert_gotrue_error(response, 422, "weak_password", flavour)["weak_password"]["reasons"]
    assert User.objects.get(pk=user.pk).check_password(DEFAULT_PASSWORD)


def test_put_user_with_a_wrong_current_password_is_refused(api, user, flavour):
    body = session_for(api, user)
    response = api.put(
        USER,
        {"password": STRONG, "current_password": "not it at all"},
        format="json",
        **bearer(body["access_token"], **flavour),
    )
    assert_gotrue_error(response, 400, "current_password_invalid", flavour)
    right = api.put(
        USER, {"password": STRONG, "current_password": DEFAULT_PASSWORD}, format="json", **bearer(body["access_token"])
    )
    assert right.status_code == 200, right.content


def test_a_password_change_needs_the_current_password_by_default(api, user, flavour):
    body = session_for(api, user)
    response = api.put(USER, {"password": STRONG}, format="json", **bearer(body["access_token"], **flavour))
    assert_gotrue_error(response, 400, "current_password_required", flavour)
    right = api.put(
        USER, {"password": STRONG, "current_password": DEFAULT_PASSWORD}, format="json", **bearer(body["access_token"])
    )
    assert right.status_code == 200, right.content


def test_the_session_alone_changes_the_password_only_when_the_operator_opts_out(api, user, settings):
    settings.GOTRUE_PASSWORD_CHANGE_REQUIRES_CURRENT_PASSWORD = False
    body = session_for(api, user)
    response = api.put(USER, {"password": STRONG}, format="json", **bearer(body["access_token"]))
    assert response.status_code == 200, response.content


def test_put_user_cannot_change_app_metadata_and_an_email_change_waits_for_both_confirmations(api, user):
    body = session_for(api, user)
    app = api.put(USER, {"app_metadata": {"role": "admin"}}, format="json", **bearer(body["access_token"]))
    assert app.status_code == 403 and app.json()["error_code"] == "not_admin"
    email = api.put(USER, {"email": "elsewhere@example.com"}, format="json", **bearer(body["access_token"]))
    assert email.status_code == 200 and email.json()["email"] == user.email  # unchanged until confirmed
    same = api.put(USER, {"email": user.email.upper(), "data": {"a": 1}}, format="json", **bearer(body["access_token"]))
    assert same.status_code == 200
    assert User.objects.get(pk=user.pk).email == user.email


def test_password_changes_share_the_native_per_user_limit(api, user, settings, flavour):
    settings.RATELIMIT_PASSWORD_USER = (1, 900)
    body = session_for(api, user)
    change = {"password": STRONG, "current_password": DEFAULT_PASSWORD}
    assert api.put(USER, change, format="json", **bearer(body["access_token"])).status_code == 200
    again = {"password": STRONG + " again", "current_password": STRONG}
    response = api.put(USER, again, format="json", **bearer(body["access_token"], **flavour))
    assert_gotrue_error(response, 429, "over_request_rate_limit", flavour)


# --- logout and the shared sessions ------------------------------------------------------------------------


def test_logout_is_204_and_ends_the_session_at_once(api, user):
    body = session_for(api, user)
    response = api.post(LOGOUT, **bearer(body["access_token"]))
    assert response.status_code == 204
    assert api.get(USER, **bearer(body["access_token"])).json()["error_code"] == "session_not_found"
    assert refresh_grant(api, body["refresh_token"]).json()["error_code"] == "refresh_token_not_found"


def test_logout_scopes_follow_gotrue(api, user):
    a, b, c = (session_for(api, user) for _ in range(3))
    assert api.post(f"{LOGOUT}?scope=others", **bearer(a["access_token"])).status_code == 204
    assert api.get(USER, **bearer(a["access_token"])).status_code == 200
    assert api.get(USER, **bearer(b["access_token"])).status_code == 403
    d = session_for(api, user)
    assert api.post(f"{LOGOUT}?scope=local", **bearer(a["access_token"])).status_code == 204
    assert api.get(USER, **bearer(a["access_token"])).status_code == 403
    assert api.get(USER, **bearer(d["access_token"])).status_code == 200
    e = session_for(api, user)
    assert api.post(LOGOUT, **bearer(d["access_token"])).status_code == 204  # default: global
    for body in (c, d, e):
        assert api.get(USER, **bearer(body["access_token"])).status_code == 403
    assert Session.objects.filter(user=user, revoked_at__isnull=True).count() == 0


def test_logout_with_an_unknown_scope_is_validation_failed(api, user, flavour):
    body = session_for(api, user)
    response = api.post(f"{LOGOUT}?scope=everything", **bearer(body["access_token"], **flavour))
    assert_gotrue_error(response, 400, "validation_failed", flavour)


def test_a_gotrue_logout_kills_the_native_refresh_token_of_that_session(api, user):
    body = session_for(api, user)
    assert api.post(LOGOUT, **bearer(body["access_token"])).status_code == 204
    native = api.post(NATIVE_REFRESH, {"refresh_token": body["refresh_token"]}, format="json")
    assert native.status_code == 401
    assert native.json()["error"] == "invalid_refresh_token"


def test_a_native_login_session_refreshes_on_the_gotrue_surface_and_back(api, user):
    native = api.post(NATIVE_LOGIN, {"email": user.email, "password": DEFAULT_PASSWORD}, format="json").json()
    gotrue = refresh_grant(api, native["refresh_token"]).json()
    assert decode(gotrue["access_token"])["sub"] == str(user.pk)
    back = api.post(NATIVE_REFRESH, {"refresh_token": gotrue["refresh_token"]}, format="json")
    assert back.status_code == 200, back.content
    assert Session.objects.filter(user=user).count() == 1


def test_a_native_logout_ends_the_gotrue_access_token(api, user):
    body = session_for(api, user)
    native = api.post(NATIVE_REFRESH, {"refresh_token": body["refresh_token"]}, format="json").json()
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {native['access_token']}")
    assert client.post("/api/v1/auth/logout", {"scope": "local"}, format="json").status_code == 204
    assert api.get(USER, **bearer(body["access_token"])).json()["error_code"] == "session_not_found"


def test_gotrue_signup_user_logs_in_on_the_native_api(api):
    api.post(SIGNUP, {"email": "both@example.com", "password": STRONG}, format="json")
    response = api.post(NATIVE_LOGIN, {"email": "both@example.com", "password": STRONG}, format="json")
    assert response.status_code == 200, response.content
    me = APIClient()
    me.credentials(HTTP_AUTHORIZATION=f"Bearer {response.json()['access_token']}")
    assert me.get(NATIVE_ME).json()["email"] == "both@example.com"


def test_gotrue_requests_are_audited_like_native_ones(api, user):
    body = session_for(api, user)
    password_grant(api, user.email, "wrong password here")
    refresh_grant(api, body["refresh_token"])
    api.post(LOGOUT, **bearer(body["access_token"]))
    events = audit.pending()
    assert [event.kind for event in events] == [
        AuditEvent.Kind.LOGIN_SUCCESS,
        AuditEvent.Kind.LOGIN_FAILURE,
        AuditEvent.Kind.REFRESH,
        AuditEvent.Kind.LOGOUT,
    ]
    assert all(event.detail.get("surface") == "gotrue" for event in events)


# --- the apikey header ----------------------------------------------------------------------------------------


def test_without_a_configured_anon_key_any_apikey_is_accepted(api, user):
    assert password_grant(api, user.email, HTTP_APIKEY="whatever").status_code == 200
    assert password_grant(api, user.email).status_code == 200


def test_with_an_anon_key_configured_a_missing_or_wrong_apikey_is_401(api, user, settings, flavour):
    settings.SUPABASE_ANON_KEY = ANON_KEY
    missing = password_grant(api, user.email, **flavour)
    assert_gotrue_error(missing, 401, "no_authorization", flavour)
    wrong = password_grant(api, user.email, HTTP_APIKEY=ANON_KEY + "x", **flavour)
    assert_gotrue_error(wrong, 401, "no_authorization", flavour)
    assert password_grant(api, user.email, HTTP_APIKEY=ANON_KEY).status_code == 200
    assert not Session.objects.filter(user=user).count() > 1  # refused before any login work
    assert api.get(SETTINGS).status_code == 401
    assert api.get(SETTINGS, HTTP_APIKEY=ANON_KEY).status_code == 200
    assert api.get(f"{SETTINGS}?apikey={ANON_KEY}").status_code == 200
    assert api.get(HEALTH).status_code == 200  # probes need no key


def test_a_wrong_apikey_is_refused_before_the_rate_limiter_counts(api, user, settings):
    settings.SUPABASE_ANON_KEY = ANON_KEY
    settings.RATELIMIT_LOGIN_IP = (1, 300)
    for _ in range(3):
        assert password_grant(api, user.email).status_code == 401
    assert password_grant(api, user.email, HTTP_APIKEY=ANON_KEY).status_code == 200


# --- CORS (browser clients) -------------------------------------------------------------------------------------


def test_a_cors_preflight_is_answered_without_credentials_even_with_an_anon_key(api, settings):
    settings.SUPABASE_ANON_KEY = ANON_KEY
    response = api.options(
        USER,
        HTTP_ORIGIN="https://app.example.com",
        HTTP_ACCESS_CONTROL_REQUEST_METHOD="PUT",
        HTTP_ACCESS_CONTROL_REQUEST_HEADERS="authorization, apikey, content-type, x-client-info",
    )
    # Answered by django-cors-headers before the view (200, empty): any 2xx passes a preflight.
    assert 200 <= response.status_code < 300
    assert response["Access-Control-Allow-Origin"] == "*"
    assert "PUT" in response["Access-Control-Allow-Methods"]
    allowed_headers = {name.strip() for name in response["Access-Control-Allow-Headers"].split(",")}
    # What supabase-js sends: its API version header picks the error shape.
    assert {"authorization", "apikey", "content-type", "x-client-info", "x-supabase-api-version"} <= allowed_headers


def test_cors_responses_expose_the_api_version_header_to_browser_code(api, user):
    response = password_grant(
        api, user.email, "wrong password here", HTTP_ORIGIN="https://app.example.com", **VERSIONED
    )
    assert response["Access-Control-Allow-Origin"] == "*"
    assert "X-Supabase-Api-Version" in response["Access-Control-Expose-Headers"]


def test_cors_origins_can_be_restricted(api, settings):
    # What GOTRUE_CORS_ALLOWED_ORIGINS=https://app.example.com sets (velro/tests/test_settings.py).
    settings.CORS_ALLOW_ALL_ORIGINS = False
    settings.CORS_ALLOWED_ORIGINS = ["https://app.example.com"]
    allowed = api.get(SETTINGS, HTTP_ORIGIN="https://app.example.com")
    assert allowed["Access-Control-Allow-Origin"] == "https://app.example.com"
    assert "origin" in allowed["Vary"].lower()
    assert not api.get(SETTINGS, HTTP_ORIGIN="https://evil.example.net").has_header("Access-Control-Allow-Origin")


def test_cors_is_only_for_the_gotrue_surface(api):
    assert api.get(SETTINGS, HTTP_ORIGIN="https://app.example.com")["Access-Control-Allow-Origin"] == "*"
    native = api.get("/health", HTTP_ORIGIN="https://app.example.com")
    assert native.status_code == 200
    assert not native.has_header("Access-Control-Allow-Origin")


# --- settings, health, unknown routes, the native shape kept -----------------------------------------------------


def test_settings_advertise_email_only_with_autoconfirm(api):
    response = api.get(SETTINGS)
    assert response.status_code == 200
    body = response.json()
    assert body["external"]["email"] is True
    assert {name for name, enabled in body["external"].items() if enabled} == {"email"}
    assert body["external"]["phone"] is False and body["external"]["google"] is False
    assert body["disable_signup"] is False
    assert body["mailer_autoconfirm"] is True
    assert body["phone_autoconfirm"] is False
    assert body["sms_provider"] == ""


def test_health_is_gotrue_shaped_and_runs_no_sql(api):
    with CaptureQueriesContext(connection) as queries:
        response = api.get(HEALTH)
    assert response.status_code == 200
    assert set(response.json()) == {"version", "name", "description"}
    assert response.json()["name"] == "GoTrue"
    assert queries.captured_queries == []


def test_unimplemented_gotrue_routes_are_404_in_gotrue_shape(api, flavour):
    for path in ("/auth/v1/saml/acs", "/auth/v1/sso", "/auth/v1/admin/sso/providers"):
        assert_gotrue_error(api.post(path, {}, format="json", **flavour), 404, "not_found", flavour)


def test_wrong_method_is_405_in_gotrue_shape(api, flavour):
    assert_gotrue_error(api.delete(SIGNUP, **flavour), 405, "method_not_allowed", flavour)


def test_successful_responses_echo_the_api_version_header_when_asked(api):
    assert api.get(SETTINGS, **VERSIONED)["X-Supabase-Api-Version"] == "2024-01-01"
    assert not api.get(SETTINGS).has_header("X-Supabase-Api-Version")
    later = api.get(SETTINGS, HTTP_X_SUPABASE_API_VERSION="2030-06-01")
    assert later["X-Supabase-Api-Version"] == "2024-01-01"
    earlier = api.post(
        REFRESH_GRANT, {"refresh_token": "r" * 43}, format="json", HTTP_X_SUPABASE_API_VERSION="2023-05-01"
    )
    assert earlier.json()["error_code"] == "refresh_token_not_found"  # before 2024-01-01: the initial shape


def test_the_native_api_keeps_its_own_error_shape(api, user):
    response = api.post(NATIVE_LOGIN, {"email": user.email, "password": "wrong password"}, format="json", **VERSIONED)
    assert response.status_code == 401
    assert response.json() == {"error": "invalid_credentials", "detail": "Invalid login credentials"}
    assert not response.has_header("X-Supabase-Api-Version")


# --- database trouble ------------------------------------------------------------------------------------------


@pytest.mark.postgresql
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("versioned", [False, True])
def test_a_stalled_database_is_unexpected_failure_503_with_retry_after(settings, versioned):
    settings.AUTH_STATEMENT_TIMEOUT_MS = 300
    flavour = dict(VERSIONED) if versioned else {}
    email = f"stall-{uuid.uuid4().hex[:8]}@example.com"
    api = APIClient()
    with stalled_inserts("auth_sessions"):
        started = time.monotonic()
        response = api.post(SIGNUP, {"email": email, "password": STRONG}, format="json", **flavour)
        elapsed = time.monotonic() - started
    assert_gotrue_error(response, 503, "unexpected_failure", flavour)
    assert int(response["Retry-After"]) >= 1
    assert elapsed < settings.DB_STATEMENT_TIMEOUT_MS / 1000
    assert not User.objects.filter(email=email).exists()


# --- configuration ------------------------------------------------------------------------------------------


def test_a_short_supabase_jwt_secret_stops_the_process_at_start():
    from velro.tests.test_settings import _start

    result = _start("settings.SUPABASE_JWT_SECRET", SUPABASE_JWT_SECRET="too-short-for-hs256")
    assert result.returncode != 0
    assert "SUPABASE_JWT_SECRET must be at least 32 bytes" in result.stderr
    good = _start("settings.GOTRUE_JWT_AUDIENCE", SUPABASE_JWT_SECRET="x" * 32)
    assert good.returncode == 0, good.stderr
    assert good.stdout.strip() == "authenticated"


@pytest.mark.postgresql
@pytest.mark.django_db(transaction=True)
def test_a_stalled_database_trips_the_same_breaker_on_both_surfaces(settings):
    from velro.db import breaker

    settings.AUTH_STATEMENT_TIMEOUT_MS = 300
    settings.DB_BREAKER_COOLDOWN_SECONDS = 30
    with stalled_inserts("auth_sessions"):
        response = APIClient().post(
            SIGNUP, {"email": f"trip-{uuid.uuid4().hex[:8]}@example.com", "password": STRONG}, format="json"
        )
    try:
        assert response.status_code == 503
        assert breaker.open  # the next query in this process fails fast, as on /api/v1/
    finally:
        breaker.reset()
