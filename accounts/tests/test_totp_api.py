"""Second factors on the native API (/api/v1/auth/mfa/factors...) and aal2 on its sensitive operations."""

from __future__ import annotations

import pytest

from accounts.tests.factories import DEFAULT_PASSWORD
from accounts.tests.support import STRONGER, api_login, bearer, totp_code

pytestmark = pytest.mark.django_db

FACTORS = "/api/v1/auth/mfa/factors"


def enroll(client, **body):
    return client.post(FACTORS, body, format="json")


def verify(client, factor_id: str, code: str):
    challenge = client.post(f"{FACTORS}/{factor_id}/challenge", format="json")
    assert challenge.status_code == 201, challenge.content
    body = {"challenge_id": challenge.json()["id"], "code": code}
    return client.post(f"{FACTORS}/{factor_id}/verify", body, format="json")


def with_verified_factor(user) -> tuple[dict, dict]:
    """(the enrollment, the aal2 verify answer) on a fresh sign-in."""
    client = bearer(api_login(user.email)["access_token"])
    enrolled = enroll(client, friendly_name="phone").json()
    verified = verify(client, enrolled["factor"]["id"], totp_code(enrolled["totp"]["secret"]))
    assert verified.status_code == 200, verified.content
    return enrolled, verified.json()


def test_enroll_list_verify_and_unenroll(user):
    client = bearer(api_login(user.email)["access_token"])
    response = enroll(client, friendly_name="phone")
    assert response.status_code == 201, response.content
    enrolled = response.json()
    assert enrolled["factor"]["status"] == "unverified" and enrolled["factor"]["friendly_name"] == "phone"
    assert enrolled["totp"]["qr_code"].startswith("data:image/svg+xml;utf-8,<svg")
    assert enrolled["totp"]["uri"].startswith("otpauth://totp/")
    listed = client.get(FACTORS).json()["results"]
    assert [factor["id"] for factor in listed] == [enrolled["factor"]["id"]] and "secret" not in listed[0]
    verified = verify(client, enrolled["factor"]["id"], totp_code(enrolled["totp"]["secret"])).json()
    assert verified["aal"] == "aal2" and len(verified["recovery_codes"]) == 10
    aal2 = bearer(verified["access_token"])
    assert aal2.get(FACTORS).json()["results"][0]["status"] == "verified"
    assert aal2.delete(f"{FACTORS}/{enrolled['factor']['id']}").status_code == 204
    assert aal2.get(FACTORS).json()["results"] == []


def test_errors_have_the_native_shape(user):
    client = bearer(api_login(user.email)["access_token"])
    enrolled = enroll(client).json()
    wrong = "000000" if totp_code(enrolled["totp"]["secret"]) != "000000" else "111111"
    response = verify(client, enrolled["factor"]["id"], wrong)
    assert response.status_code == 422
    assert response.json()["error"] == "mfa_verification_failed" and response.json()["detail"]
    missing = client.post(f"{FACTORS}/00000000-0000-4000-8000-000000000000/challenge", format="json")
    assert (missing.status_code, missing.json()["error"]) == (404, "mfa_factor_not_found")
    unknown_field = enroll(client, factor_type="totp")
    assert unknown_field.status_code == 400


def test_a_replayed_code_is_refused(user):
    client = bearer(api_login(user.email)["access_token"])
    enrolled = enroll(client).json()
    code = totp_code(enrolled["totp"]["secret"])
    aal2 = bearer(verify(client, enrolled["factor"]["id"], code).json()["access_token"])
    replay = verify(aal2, enrolled["factor"]["id"], code)
    assert (replay.status_code, replay.json()["error"]) == (422, "mfa_verification_failed")


def test_verify_attempts_are_rate_limited_per_factor(user, settings):
    settings.RATELIMIT_MFA_VERIFY_FACTOR = (3, 60)
    client = bearer(api_login(user.email)["access_token"])
    enrolled = enroll(client).json()
    for _ in range(3):
        verify(client, enrolled["factor"]["id"], "000000")
    response = verify(client, enrolled["factor"]["id"], totp_code(enrolled["totp"]["secret"]))
    assert response.status_code == 429 and response.has_header("Retry-After")


def test_an_api_key_cannot_manage_factors(user):
    key = api_login(user.email)  # the login body carries no key; make one through the API
    created = bearer(key["access_token"]).post("/api/v1/auth/api-keys", {"name": "ci"}, format="json").json()
    response = bearer(created["key"]).get(FACTORS)
    assert response.status_code == 403


# --- aal2 on the sensitive operations --------------------------------------------------------------


def _password_change(client):
    body = {"current_password": DEFAULT_PASSWORD, "new_password": STRONGER}
    return client.post("/api/v1/auth/password", body, format="json")


def _email_change(client):
    return client.post("/api/v1/auth/email/change", {"new_email": "new@example.com"}, format="json")


def _api_key_create(client):
    return client.post("/api/v1/auth/api-keys", {"name": "ci"}, format="json")


SENSITIVE = {"password": _password_change, "email": _email_change, "api_key": _api_key_create}


@pytest.mark.parametrize("operation", sorted(SENSITIVE))
def test_a_sensitive_operation_is_refused_at_aal1_once_the_user_has_a_verified_factor(user, operation):
    _, verified = with_verified_factor(user)
    refused = SENSITIVE[operation](bearer(api_login(user.email)["access_token"]))
    assert (refused.status_code, refused.json()["error"]) == (403, "insufficient_aal")
    allowed = SENSITIVE[operation](bearer(verified["access_token"]))
    assert allowed.status_code < 300, allowed.content


@pytest.mark.parametrize("operation", sorted(SENSITIVE))
def test_a_sensitive_operation_is_allowed_at_aal1_without_a_second_factor(user, operation):
    response = SENSITIVE[operation](bearer(api_login(user.email)["access_token"]))
    assert response.status_code < 300, response.content
