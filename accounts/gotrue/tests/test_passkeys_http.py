"""GoTrue's passkey API (/auth/v1/passkeys...) over HTTP: GoTrue's bodies, codes and
messages (internal/api/passkey_*.go), with the software authenticator of
accounts.tests.support. The ceremonies' rules are covered in depth on the native
surface (accounts/tests/test_passkeys.py); here, what the GoTrue surface adds."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from accounts.models import Passkey
from accounts.tests.factories import DEFAULT_PASSWORD, UserFactory
from accounts.tests.support import (
    ANON_KEY,
    GOTRUE_PASSKEYS,
    SoftAuthenticator,
    passkey_assert,
    passkey_register,
    supabase_project,
    token_claims,
    webauthn_rp,
)

pytestmark = pytest.mark.django_db

BASE = GOTRUE_PASSKEYS


@pytest.fixture(autouse=True)
def _project(settings):
    supabase_project(settings)
    webauthn_rp(settings)


def _client(access_token: str | None = None, *, version: str | None = None) -> APIClient:
    client = APIClient()
    headers = {"HTTP_APIKEY": ANON_KEY}
    if access_token:
        headers["HTTP_AUTHORIZATION"] = f"Bearer {access_token}"
    if version:
        headers["HTTP_X_SUPABASE_API_VERSION"] = version
    client.credentials(**headers)
    return client


def _sign_in(user) -> dict:
    response = _client().post(
        "/auth/v1/token?grant_type=password", {"email": user.email, "password": DEFAULT_PASSWORD}, format="json"
    )
    assert response.status_code == 200, response.content
    return response.json()


@pytest.fixture
def key() -> SoftAuthenticator:
    return SoftAuthenticator()


@pytest.fixture
def registered(user, key) -> APIClient:
    client = _client(_sign_in(user)["access_token"])
    response = passkey_register(client, key, base=BASE)
    assert response.status_code == 200, response.content
    return client


def _error(response, status: int, code: str, msg: str | None = None) -> None:
    assert response.status_code == status, response.content
    body = response.json()
    assert body["error_code"] == code, body
    assert body["code"] == status
    if msg is not None:
        assert body["msg"] == msg


def test_registration_answers_gotrue_shapes_and_the_first_codes(user, key):
    client = _client(_sign_in(user)["access_token"])
    options = client.post(f"{BASE}/registration/options", {}, format="json").json()
    assert set(options) == {"challenge_id", "options", "expires_at"}
    response = client.post(
        f"{BASE}/registration/verify",
        {"challenge_id": options["challenge_id"], "credential": key.create(options["options"])},
        format="json",
    )
    assert response.status_code == 200
    body = response.json()
    # GoTrue's PasskeyMetadataResponse (friendly_name omitted when empty) + recovery_codes.
    assert set(body) == {"id", "created_at", "recovery_codes"}
    assert len(body["recovery_codes"]) == 10


def test_sign_in_answers_a_gotrue_session_at_aal2(registered, key, user):
    response = passkey_assert(_client(), key, base=BASE)
    assert response.status_code == 200, response.content
    body = response.json()
    assert {"access_token", "refresh_token", "expires_in", "expires_at", "token_type", "user"} <= set(body)
    claims = token_claims(body["access_token"], audience="authenticated")
    assert claims["sub"] == str(user.pk)
    assert claims["aal"] == "aal2"
    assert [entry["method"] for entry in claims["amr"]] == ["passkey"]


def test_second_factor_raises_the_callers_session(registered, key, user):
    tokens = _sign_in(user)
    before = token_claims(tokens["access_token"], audience="authenticated")
    assert before["aal"] == "aal1"
    response = passkey_assert(_client(tokens["access_token"]), key, base=BASE, mfa=True)
    assert response.status_code == 200, response.content
    after = token_claims(response.json()["access_token"], audience="authenticated")
    assert after["session_id"] == before["session_id"]
    assert after["aal"] == "aal2"
    assert [entry["method"] for entry in after["amr"]] == ["passkey", "password"]


def test_list_rename_delete(registered, key, user):
    listed = registered.get(BASE)
    assert listed.status_code == 200
    [item] = listed.json()
    assert set(item) == {"id", "created_at"}  # empty friendly_name and null last_used_at omitted
    renamed = registered.patch(f"{BASE}/{item['id']}", {"friendly_name": "Phone"}, format="json")
    assert renamed.status_code == 200
    assert renamed.json()["friendly_name"] == "Phone"
    _error(registered.delete(f"{BASE}/{item['id']}"), 403, "insufficient_aal")
    raised = _client(passkey_assert(registered, key, base=BASE, mfa=True).json()["access_token"])
    deleted = raised.delete(f"{BASE}/{item['id']}")
    assert deleted.status_code == 204
    assert deleted.content == b""
    assert raised.get(BASE).json() == []


def test_rename_validation_and_not_found_use_gotrue_messages(registered, user):
    passkey_id = Passkey.objects.get(user=user).pk
    _error(
        registered.patch(f"{BASE}/{passkey_id}", {}, format="json"),
        400,
        "validation_failed",
        "friendly_name is required",
    )
    _error(
        registered.patch(f"{BASE}/{passkey_id}", {"friendly_name": "x" * 65}, format="json"),
        400,
        "validation_failed",
        "friendly_name must be 64 characters or less",
    )
    _error(registered.patch(f"{BASE}/not-a-uuid", {"friendly_name": "a"}, format="json"), 404, "validation_failed")
    stranger = _client(_sign_in(UserFactory())["access_token"])
    _error(
        stranger.patch(f"{BASE}/{passkey_id}", {"friendly_name": "a"}, format="json"),
        404,
        "validation_failed",
        "Passkey not found",
    )
    _error(stranger.delete(f"{BASE}/{passkey_id}"), 404, "validation_failed", "Passkey not found")


@pytest.mark.parametrize(
    ("body", "msg"),
    [
        ({"credential": {}}, "challenge_id is required"),
        ({"challenge_id": "00000000-0000-0000-0000-000000000000"}, "credential is required"),
        ({"challenge_id": "nope", "credential": {}}, "challenge_id must be a valid UUID"),
    ],
)
def test_verify_input_errors_are_gotrues(body, msg):
    _error(_client().post(f"{BASE}/authentication/verify", body, format="json"), 400, "validation_failed", msg)


def test_an_unknown_challenge_and_a_bad_credential_are_gotrues_webauthn_errors(registered):
    unknown = {"challenge_id": "00000000-0000-0000-0000-000000000000", "credential": {}}
    _error(
        _client().post(f"{BASE}/authentication/verify", unknown, format="json"),
        400,
        "webauthn_challenge_not_found",
        "Challenge not found or already used",
    )
    options = _client().post(f"{BASE}/authentication/options", {"gotrue_meta_security": {}}, format="json").json()
    bad = {"challenge_id": options["challenge_id"], "credential": "garbage"}
    _error(_client().post(f"{BASE}/authentication/verify", bad, format="json"), 400, "webauthn_verification_failed")


def test_the_2024_api_version_gets_the_newer_error_shape():
    response = _client(version="2024-01-01").post(f"{BASE}/authentication/verify", {}, format="json")
    assert response.status_code == 400
    assert response.json() == {"code": "validation_failed", "message": "challenge_id is required"}


def test_management_needs_a_bearer():
    _error(_client().get(BASE), 401, "no_authorization")
    _error(_client().post(f"{BASE}/registration/options", {}, format="json"), 401, "no_authorization")
    _error(_client().post(f"{BASE}/mfa/options", {}, format="json"), 401, "no_authorization")


def test_sign_in_options_need_the_apikey():
    response = APIClient().post(f"{BASE}/authentication/options", {}, format="json")
    _error(response, 401, "no_authorization", "No API key found in request")
