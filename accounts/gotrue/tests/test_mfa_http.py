"""GoTrue's /factors routes over HTTP: bodies, error codes, assurance levels, the user object's factors."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from accounts.gotrue.tests.test_http import (
    USER,
    VERSIONED,
    assert_gotrue_error,
    bearer,
    decode,
    password_grant,
    refresh_grant,
    session_for,
)
from accounts.models import MfaChallenge, Session
from accounts.tests.factories import DEFAULT_PASSWORD
from accounts.tests.support import STRONGER, totp_code
from monitoring import audit
from monitoring.models import AuditEvent

pytestmark = pytest.mark.django_db

FACTORS = "/auth/v1/factors"
PASSWORD_CHANGE = {"password": STRONGER, "current_password": DEFAULT_PASSWORD}
EMAIL_CHANGE = {"email": "new@example.com"}


@pytest.fixture(params=["legacy", "2024-01-01"])
def flavour(request) -> dict:
    """Each error flavour's request headers (as test_http.py's)."""
    return {} if request.param == "legacy" else dict(VERSIONED)


def enroll(api, access_token: str, **body):
    return api.post(FACTORS, {"factor_type": "totp", **body}, format="json", **bearer(access_token))


def challenge(api, access_token: str, factor_id: str):
    return api.post(f"{FACTORS}/{factor_id}/challenge", {}, format="json", **bearer(access_token))


def verify(api, access_token: str, factor_id: str, code: str, challenge_id: str | None = None):
    if challenge_id is None:
        challenge_id = challenge(api, access_token, factor_id).json()["id"]
    body = {"challenge_id": challenge_id, "code": code}
    return api.post(f"{FACTORS}/{factor_id}/verify", body, format="json", **bearer(access_token))


def with_verified_factor(api, user) -> tuple[dict, dict, dict]:
    """(the aal1 sign-in, the enrollment, the aal2 verify answer)."""
    signed_in = password_grant(api, user.email).json()
    enrolled = enroll(api, signed_in["access_token"], friendly_name="phone").json()
    verified = verify(api, signed_in["access_token"], enrolled["id"], totp_code(enrolled["totp"]["secret"]))
    assert verified.status_code == 200, verified.content
    return signed_in, enrolled, verified.json()


def test_enroll_answers_gotrues_body_with_the_svg_and_the_secret(api, user):
    access = session_for(api, user)["access_token"]
    response = enroll(api, access, friendly_name="phone", issuer="Example")
    assert response.status_code == 200, response.content
    body = response.json()
    assert set(body) == {"id", "type", "friendly_name", "totp"}
    assert (body["type"], body["friendly_name"]) == ("totp", "phone")
    assert set(body["totp"]) == {"qr_code", "secret", "uri"}
    assert body["totp"]["qr_code"].startswith("<svg")  # the clients prefix data:image/svg+xml;utf-8,
    assert body["totp"]["uri"].startswith("otpauth://totp/Example:")
    assert f"secret={body['totp']['secret']}" in body["totp"]["uri"]


def test_the_issuer_defaults_to_the_site_host(api, user, settings):
    settings.GOTRUE_SITE_URL = "https://app.example.com"
    body = enroll(api, session_for(api, user)["access_token"]).json()
    assert body["totp"]["uri"].startswith("otpauth://totp/app.example.com:")


def test_the_user_object_lists_factors_and_omits_the_key_without_any(api, user):
    access = session_for(api, user)["access_token"]
    assert "factors" not in api.get(USER, **bearer(access)).json()
    enrolled = enroll(api, access, friendly_name="phone").json()
    factors = api.get(USER, **bearer(access)).json()["factors"]
    assert [(f["id"], f["friendly_name"], f["factor_type"], f["status"]) for f in factors] == [
        (enrolled["id"], "phone", "totp", "unverified")
    ]
    assert {"created_at", "updated_at"} <= set(factors[0])


def test_verify_answers_an_aal2_session_with_recovery_codes_the_first_time_only(api, user):
    signed_in, enrolled, verified = with_verified_factor(api, user)
    assert {"access_token", "token_type", "expires_in", "expires_at", "refresh_token", "user"} <= set(verified)
    assert len(verified["recovery_codes"]) == 10
    claims = decode(verified["access_token"])
    assert claims["aal"] == "aal2" and claims["session_id"] == decode(signed_in["access_token"])["session_id"]
    assert sorted(entry["method"] for entry in claims["amr"]) == ["password", "totp"]
    assert verified["user"]["factors"][0]["status"] == "verified"
    refreshed = refresh_grant(api, verified["refresh_token"]).json()
    assert decode(refreshed["access_token"])["aal"] == "aal2"
    again = verify(api, verified["access_token"], enrolled["id"], totp_code(enrolled["totp"]["secret"], steps=1))
    assert again.status_code == 200 and "recovery_codes" not in again.json()


def test_a_new_password_sign_in_is_aal1(api, user):
    with_verified_factor(api, user)
    claims = decode(password_grant(api, user.email).json()["access_token"])
    assert claims["aal"] == "aal1"


def test_a_replayed_code_is_mfa_verification_failed(api, user, flavour):
    access = session_for(api, user)["access_token"]
    enrolled = enroll(api, access).json()
    code = totp_code(enrolled["totp"]["secret"])
    first = verify(api, access, enrolled["id"], code)
    assert first.status_code == 200
    replay = api.post(
        f"{FACTORS}/{enrolled['id']}/verify",
        {"challenge_id": challenge(api, first.json()["access_token"], enrolled["id"]).json()["id"], "code": code},
        format="json",
        **bearer(first.json()["access_token"], **flavour),
    )
    assert_gotrue_error(replay, 422, "mfa_verification_failed", flavour)


def test_a_wrong_code_is_mfa_verification_failed_and_audited(api, user, flavour):
    access = session_for(api, user)["access_token"]
    enrolled = enroll(api, access).json()
    code = "000000" if totp_code(enrolled["totp"]["secret"]) != "000000" else "111111"
    challenge_id = challenge(api, access, enrolled["id"]).json()["id"]
    response = api.post(
        f"{FACTORS}/{enrolled['id']}/verify",
        {"challenge_id": challenge_id, "code": code},
        format="json",
        **bearer(access, **flavour),
    )
    assert_gotrue_error(response, 422, "mfa_verification_failed", flavour)
    audit.flush()
    event = AuditEvent.objects.get(kind=AuditEvent.Kind.MFA_VERIFY_FAILURE)
    assert event.detail["reason"] == "wrong_code" and enrolled["totp"]["secret"] not in str(event.detail)


def test_challenge_answers_its_id_type_and_expiry(api, user, settings):
    access = session_for(api, user)["access_token"]
    enrolled = enroll(api, access).json()
    body = challenge(api, access, enrolled["id"]).json()
    assert body["type"] == "totp"
    expected = timezone.now().timestamp() + settings.MFA_CHALLENGE_EXPIRY_DURATION
    assert abs(body["expires_at"] - expected) < 5


def test_an_expired_challenge_is_mfa_challenge_expired(api, user, flavour):
    access = session_for(api, user)["access_token"]
    enrolled = enroll(api, access).json()
    challenge_id = challenge(api, access, enrolled["id"]).json()["id"]
    MfaChallenge.objects.filter(pk=challenge_id).update(expires_at=timezone.now() - timedelta(seconds=1))
    response = api.post(
        f"{FACTORS}/{enrolled['id']}/verify",
        {"challenge_id": challenge_id, "code": totp_code(enrolled["totp"]["secret"])},
        format="json",
        **bearer(access, **flavour),
    )
    assert_gotrue_error(response, 422, "mfa_challenge_expired", flavour)


def test_factor_errors_are_gotrues(api, user, flavour):
    access = session_for(api, user)["access_token"]
    headers = bearer(access, **flavour)
    unknown = "00000000-0000-4000-8000-000000000000"
    assert_gotrue_error(
        api.post(f"{FACTORS}/{unknown}/challenge", {}, format="json", **headers), 404, "mfa_factor_not_found", flavour
    )
    assert_gotrue_error(api.delete(f"{FACTORS}/not-a-uuid", **headers), 404, "validation_failed", flavour)
    phone = api.post(FACTORS, {"factor_type": "phone", "phone": "+15555550100"}, format="json", **headers)
    assert_gotrue_error(phone, 422, "mfa_phone_enroll_not_enabled", flavour)
    webauthn = api.post(FACTORS, {"factor_type": "webauthn"}, format="json", **headers)
    assert_gotrue_error(webauthn, 422, "mfa_webauthn_enroll_not_enabled", flavour)
    assert_gotrue_error(
        api.post(FACTORS, {"factor_type": "sms"}, format="json", **headers), 400, "validation_failed", flavour
    )
    enrolled = enroll(api, access, friendly_name="phone").json()
    conflict = api.post(FACTORS, {"factor_type": "totp", "friendly_name": "phone"}, format="json", **headers)
    assert_gotrue_error(conflict, 422, "mfa_factor_name_conflict", flavour)
    empty = api.post(
        f"{FACTORS}/{enrolled['id']}/verify", {"challenge_id": unknown, "code": ""}, format="json", **headers
    )
    assert_gotrue_error(empty, 400, "validation_failed", flavour)
    no_challenge = api.post(
        f"{FACTORS}/{enrolled['id']}/verify", {"challenge_id": unknown, "code": "123456"}, format="json", **headers
    )
    assert_gotrue_error(no_challenge, 422, "mfa_factor_not_found", flavour)


def test_too_many_factors_is_too_many_enrolled_mfa_factors(api, user, flavour, settings):
    settings.MFA_MAX_ENROLLED_FACTORS = 1
    access = session_for(api, user)["access_token"]
    enroll(api, access, friendly_name="a")
    response = api.post(
        FACTORS, {"factor_type": "totp", "friendly_name": "b"}, format="json", **bearer(access, **flavour)
    )
    assert_gotrue_error(response, 422, "too_many_enrolled_mfa_factors", flavour)


def test_enrolling_or_unenrolling_with_a_verified_factor_needs_aal2(api, user, flavour):
    _, enrolled, verified = with_verified_factor(api, user)
    aal1 = password_grant(api, user.email).json()["access_token"]
    more = api.post(FACTORS, {"factor_type": "totp"}, format="json", **bearer(aal1, **flavour))
    assert_gotrue_error(more, 403, "insufficient_aal", flavour)
    removal = api.delete(f"{FACTORS}/{enrolled['id']}", **bearer(aal1, **flavour))
    assert_gotrue_error(removal, 422, "insufficient_aal", flavour)  # GoTrue's status for this one
    assert enroll(api, verified["access_token"], friendly_name="second").status_code == 200


def test_unenroll_answers_the_id_and_lowers_the_session_to_aal1(api, user):
    signed_in, enrolled, verified = with_verified_factor(api, user)
    response = api.delete(f"{FACTORS}/{enrolled['id']}", **bearer(verified["access_token"]))
    assert response.status_code == 200 and response.json() == {"id": enrolled["id"]}
    session = Session.objects.get(pk=decode(signed_in["access_token"])["session_id"])
    assert session.aal == "aal1"
    refreshed = refresh_grant(api, verified["refresh_token"]).json()
    assert decode(refreshed["access_token"])["aal"] == "aal1"
    assert "factors" not in refreshed["user"]


def test_verify_attempts_are_limited_per_factor(api, user, flavour, settings):
    settings.RATELIMIT_ENABLE = True
    settings.RATELIMIT_MFA_VERIFY_FACTOR = (2, 60)
    access = session_for(api, user)["access_token"]
    enrolled = enroll(api, access).json()
    for _ in range(2):
        assert verify(api, access, enrolled["id"], "000000").status_code in (200, 422)
    challenge_id = challenge(api, access, enrolled["id"]).json()["id"]
    response = api.post(
        f"{FACTORS}/{enrolled['id']}/verify",
        {"challenge_id": challenge_id, "code": totp_code(enrolled["totp"]["secret"])},
        format="json",
        **bearer(access, **flavour),
    )
    assert_gotrue_error(response, 429, "over_request_rate_limit", flavour)
    assert response.has_header("Retry-After")


# --- aal2 on the sensitive operations of PUT /user --------------------------------------------


def put_user(api, access_token: str, body: dict, **headers):
    return api.put(USER, body, format="json", **bearer(access_token, **headers))


@pytest.mark.parametrize("change", ["password", "email"])
def test_put_user_needs_aal2_once_the_user_has_a_verified_factor(api, user, flavour, change):
    body = PASSWORD_CHANGE if change == "password" else EMAIL_CHANGE
    _, _, verified = with_verified_factor(api, user)
    aal1 = password_grant(api, user.email).json()["access_token"]
    assert_gotrue_error(put_user(api, aal1, body, **flavour), 403, "insufficient_aal", flavour)
    assert put_user(api, verified["access_token"], body).status_code == 200


@pytest.mark.parametrize("change", ["password", "email"])
def test_put_user_is_allowed_at_aal1_without_a_second_factor(api, user, change):
    body = PASSWORD_CHANGE if change == "password" else EMAIL_CHANGE
    access = password_grant(api, user.email).json()["access_token"]
    assert put_user(api, access, body).status_code == 200


# --- what the factors cost ----------------------------------------------------------------------


def test_get_user_of_a_user_with_factors_runs_one_query_on_a_warm_cache(api, user):
    access = session_for(api, user)["access_token"]
    enroll(api, access)
    assert api.get(USER, **bearer(access)).status_code == 200
    with CaptureQueriesContext(connection) as queries:
        response = api.get(USER, **bearer(access))
    assert len(response.json()["factors"]) == 1
    assert len(queries.captured_queries) == 1, [q["sql"] for q in queries.captured_queries]
    assert "auth_mfa_factors" in queries.captured_queries[0]["sql"]


@pytest.mark.postgresql
def test_a_password_grant_of_a_user_without_factors_adds_no_query(api, user):
    password_grant(api, user.email)  # warm
    with CaptureQueriesContext(connection) as queries:
        response = password_grant(api, user.email)
    assert response.status_code == 200 and "factors" not in response.json()["user"]
    assert len(queries.captured_queries) <= 2, [q["sql"] for q in queries.captured_queries]
