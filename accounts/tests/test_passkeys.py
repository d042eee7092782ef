"""Passkeys (accounts.passkeys) through the native API, with a software authenticator
(accounts.tests.support.SoftAuthenticator) that builds what a browser sends."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from accounts import passkeys
from accounts.models import Passkey, RecoveryCode, Session, WebAuthnChallenge
from accounts.tests.factories import UserFactory
from accounts.tests.support import (
    NATIVE_PASSKEYS,
    STRONG,
    SoftAuthenticator,
    b64url,
    bearer,
    passkey_assert,
    passkey_register,
    webauthn_rp,
)
from accounts.tokens import access_token_decode
from monitoring import audit
from monitoring.models import AuditEvent

pytestmark = pytest.mark.django_db

BASE = NATIVE_PASSKEYS


@pytest.fixture(autouse=True)
def _rp(settings):
    webauthn_rp(settings)
    settings.RATELIMIT_ENABLE = False


@pytest.fixture
def key() -> SoftAuthenticator:
    return SoftAuthenticator()


def _signed_in(login, user) -> tuple[APIClient, dict]:
    tokens = login(user)
    return bearer(tokens["access_token"]), tokens


def _session_of(tokens: dict) -> Session:
    return Session.objects.get(pk=access_token_decode(tokens["access_token"]).session_id)


def _events(kind: str) -> list[AuditEvent]:
    audit.flush()
    return list(AuditEvent.objects.filter(kind=kind).order_by("created_at"))


def _registered(login, user, key) -> tuple[APIClient, dict]:
    client, tokens = _signed_in(login, user)
    response = passkey_register(client, key)
    assert response.status_code == 201, response.content
    return client, tokens


def _options(client: APIClient, step: str = "authentication") -> dict:
    response = client.post(f"{BASE}/{step}/options", {}, format="json")
    assert response.status_code == 200, response.content
    return response.json()


def _verify(client: APIClient, challenge_id: str, credential, step: str = "authentication"):
    return client.post(f"{BASE}/{step}/verify", {"challenge_id": challenge_id, "credential": credential}, format="json")


# --- registration -----------------------------------------------------------------------------


def test_registration_options_ask_for_a_discoverable_user_verified_credential(login, user, key):
    client, _ = _signed_in(login, user)
    body = _options(client, "registration")
    options = body["options"]
    assert options["rp"] == {"id": "localhost", "name": "Velro"}
    assert options["user"]["id"] == b64url(str(user.pk).encode())
    assert options["user"]["name"] == user.email
    assert options["authenticatorSelection"] == {
        "residentKey": "required",
        "requireResidentKey": True,
        "userVerification": "required",
    }
    assert options["attestation"] == "none"
    assert options["excludeCredentials"] == []
    challenge = WebAuthnChallenge.objects.get(pk=body["challenge_id"])
    assert challenge.user_id == user.pk and challenge.kind == "registration"
    assert body["expires_at"] == int(challenge.expires_at.timestamp())


def test_the_first_passkey_comes_with_recovery_codes_shown_once(login, user, key):
    client, tokens = _signed_in(login, user)
    response = passkey_register(client, key)
    assert response.status_code == 201
    body = response.json()
    assert set(body) == {"id", "friendly_name", "created_at", "last_used_at", "recovery_codes"}
    assert len(body["recovery_codes"]) == 10
    assert RecoveryCode.objects.filter(user=user).count() == 10
    passkey = Passkey.objects.get(pk=body["id"])
    assert bytes(passkey.credential_id) == key.credential_id
    assert passkey.transports == ["internal"]
    assert passkey.sign_count == 0
    # Registration leaves the session's level alone.
    assert _session_of(tokens).aal == "aal1"
    assert [e.detail["passkey"] for e in _events(AuditEvent.Kind.PASSKEY_REGISTERED)] == [body["id"]]
    assert len(_events(AuditEvent.Kind.RECOVERY_CODES_GENERATED)) == 1


def test_a_second_passkey_needs_aal2_and_brings_no_new_codes(login, user, key):
    client, _ = _registered(login, user, key)
    refused = client.post(f"{BASE}/registration/options", {}, format="json")
    assert refused.status_code == 403
    assert refused.json()["error"] == "insufficient_aal"
    raised = passkey_assert(client, key, mfa=True)
    assert raised.status_code == 200, raised.content
    second = SoftAuthenticator()
    client = bearer(raised.json()["access_token"])
    options = _options(client, "registration")
    assert options["options"]["excludeCredentials"] == [{"id": b64url(key.credential_id), "type": "public-key"}]
    response = _verify(client, options["challenge_id"], second.create(options["options"]), "registration")
    assert response.status_code == 201, response.content
    assert "recovery_codes" not in response.json()
    assert Passkey.objects.filter(user=user).count() == 2


def test_the_same_credential_cannot_be_registered_twice(login, user, key):
    _registered(login, user, key)
    other, _ = _signed_in(login, UserFactory())
    response = passkey_register(other, key)
    assert response.status_code == 422
    assert response.json()["error"] == "webauthn_credential_exists"


def test_the_passkey_limit_holds(login, user, key, settings):
    settings.PASSKEY_MAX_PER_USER = 1
    client, _ = _registered(login, user, key)
    raised = bearer(passkey_assert(client, key, mfa=True).json()["access_token"])
    response = raised.post(f"{BASE}/registration/options", {}, format="json")
    assert response.status_code == 422
    assert response.json()["error"] == "too_many_passkeys"


def test_registration_without_user_verification_is_refused(login, user, key):
    client, _ = _signed_in(login, user)
    options = _options(client, "registration")
    response = _verify(client, options["challenge_id"], key.create(options["options"], uv=False), "registration")
    assert response.status_code == 400
    assert response.json()["error"] == "webauthn_verification_failed"
    assert not Passkey.objects.exists()


def test_registration_from_another_origin_is_refused(login, user, key):
    client, _ = _signed_in(login, user)
    options = _options(client, "registration")
    credential = key.create(options["options"], origin="https://evil.example")
    response = _verify(client, options["challenge_id"], credential, "registration")
    assert response.status_code == 400
    assert response.json()["error"] == "webauthn_verification_failed"


def test_registration_challenge_of_another_user_is_not_found(login, user, key):
    client, _ = _signed_in(login, user)
    options = _options(client, "registration")
    other, _ = _signed_in(login, UserFactory())
    response = _verify(other, options["challenge_id"], key.create(options["options"]), "registration")
    assert response.status_code == 400
    assert response.json()["error"] == "webauthn_challenge_not_found"


# --- sign-in ---------------------------------------------------------------------------------


def test_a_passkey_signs_in_at_aal2_with_amr_passkey(login, user, key):
    _registered(login, user, key)
    options = _options(APIClient())
    assert "allowCredentials" not in options["options"] or options["options"]["allowCredentials"] == []
    assert options["options"]["userVerification"] == "required"
    response = _verify(APIClient(), options["challenge_id"], key.get(options["options"]))
    assert response.status_code == 200, response.content
    session = _session_of(response.json())
    assert session.user_id == user.pk
    assert session.aal == "aal2"
    assert [entry["method"] for entry in session.amr] == ["passkey"]
    passkey = Passkey.objects.get(user=user)
    assert passkey.sign_count == 1 and passkey.last_used_at is not None
    [success] = [e for e in _events(AuditEvent.Kind.LOGIN_SUCCESS) if e.detail.get("method") == "passkey"]
    assert success.user_id == user.pk and success.detail["passkey"] == str(passkey.pk)


def test_a_replayed_challenge_is_refused(login, user, key):
    _registered(login, user, key)
    options = _options(APIClient())
    assert _verify(APIClient(), options["challenge_id"], key.get(options["options"])).status_code == 200
    replay = _verify(APIClient(), options["challenge_id"], key.get(options["options"]))
    assert replay.status_code == 400
    assert replay.json()["error"] == "webauthn_challenge_not_found"


def test_an_expired_challenge_is_refused_and_spent(login, user, key):
    _registered(login, user, key)
    options = _options(APIClient())
    WebAuthnChallenge.objects.filter(pk=options["challenge_id"]).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    response = _verify(APIClient(), options["challenge_id"], key.get(options["options"]))
    assert response.status_code == 400
    assert response.json()["error"] == "webauthn_challenge_expired"
    assert WebAuthnChallenge.objects.get(pk=options["challenge_id"]).used_at is not None


def test_an_assertion_from_another_origin_is_refused(login, user, key):
    _registered(login, user, key)
    options = _options(APIClient())
    response = _verify(
        APIClient(), options["challenge_id"], key.get(options["options"], origin="http://localhost:9999")
    )
    assert response.status_code == 400
    assert response.json()["error"] == "webauthn_verification_failed"
    assert "origin" in response.json()["detail"]


def test_an_assertion_for_another_rp_id_is_refused(login, user, key):
    _registered(login, user, key)
    options = _options(APIClient())
    response = _verify(APIClient(), options["challenge_id"], key.get(options["options"], rp_id="evil.example"))
    assert response.status_code == 400
    assert "RP ID hash" in response.json()["detail"]


def test_an_assertion_without_user_verification_is_refused(login, user, key):
    _registered(login, user, key)
    options = _options(APIClient())
    response = _verify(APIClient(), options["challenge_id"], key.get(options["options"], uv=False))
    assert response.status_code == 400
    assert "User verification" in response.json()["detail"]


def test_a_sign_count_that_does_not_grow_is_refused_and_audited(login, user, key):
    _registered(login, user, key)
    assert passkey_assert(APIClient(), key, sign_count=5).status_code == 200
    cloned = passkey_assert(APIClient(), key, sign_count=5)
    assert cloned.status_code == 400
    assert cloned.json()["error"] == "webauthn_verification_failed"
    assert Passkey.objects.get(user=user).sign_count == 5
    [regression] = _events(AuditEvent.Kind.PASSKEY_SIGN_COUNT_REGRESSION)
    assert regression.user_id == user.pk
    assert (regression.detail["stored"], regression.detail["received"]) == ("5", "5")
    assert passkey_assert(APIClient(), key, sign_count=6).status_code == 200


def test_a_counter_of_zero_is_refused_once_the_counter_moved(login, user, key):
    _registered(login, user, key)
    assert passkey_assert(APIClient(), key, sign_count=0).status_code == 200  # both zero: no counter, fine
    assert passkey_assert(APIClient(), key, sign_count=3).status_code == 200
    assert passkey_assert(APIClient(), key, sign_count=0).status_code == 400


def test_two_assertions_with_one_counter_value_pass_once(login, user, key):
    """The counter moves by a conditional UPDATE: the second of two racing assertions loses."""
    _registered(login, user, key)
    passkey = Passkey.objects.get(user=user)
    stale = Passkey.objects.get(user=user)
    passkeys._sign_count_advance(passkey=passkey, received=7, backed_up=False)
    with pytest.raises(passkeys.SignCountRegression):
        passkeys._sign_count_advance(passkey=stale, received=7, backed_up=False)


def test_an_unknown_credential_is_refused_and_audited(login, user, key):
    _registered(login, user, key)
    response = passkey_assert(APIClient(), SoftAuthenticator())
    assert response.status_code == 400
    assert response.json()["error"] == "webauthn_verification_failed"
    [failure] = _events(AuditEvent.Kind.LOGIN_FAILURE)
    assert failure.detail["method"] == "passkey"
    assert failure.detail["reason"] == "webauthn_verification_failed"


def test_a_user_handle_naming_someone_else_is_refused(login, user, key):
    _registered(login, user, key)
    key.user_handle = str(UserFactory().pk).encode()
    assert passkey_assert(APIClient(), key).status_code == 400


def test_a_banned_user_cannot_sign_in_with_a_passkey(login, user, key):
    _registered(login, user, key)
    type(user).objects.filter(pk=user.pk).update(banned_until=timezone.now() + timedelta(days=1))
    response = passkey_assert(APIClient(), key)
    assert response.status_code == 403
    assert response.json()["error"] == "user_banned"


@pytest.mark.parametrize(
    "credential",
    [
        "not an object",
        {},
        {"id": 5, "rawId": 5},
        {"id": "!!!", "rawId": "!!!", "response": {}, "type": "public-key"},
        {"id": "AAAA", "rawId": "AAAA", "response": {"clientDataJSON": "x"}, "type": "public-key"},
        {
            "id": "AAAA",
            "rawId": "AAAA",
            "response": {"clientDataJSON": "e30", "authenticatorData": "AA", "signature": "AA", "userHandle": "AA"},
            "type": "public-key",
        },
    ],
)
def test_malformed_credentials_are_a_400(login, user, key, credential):
    _registered(login, user, key)
    options = _options(APIClient())
    response = _verify(APIClient(), options["challenge_id"], credential)
    assert response.status_code == 400
    assert response.json()["error"] == "webauthn_verification_failed"


def test_a_malformed_registration_credential_is_a_400(login, user):
    client, _ = _signed_in(login, user)
    options = _options(client, "registration")
    bad = {"id": "AAAA", "rawId": "AAAA", "response": {"clientDataJSON": "e30", "attestationObject": "oA"}}
    response = _verify(client, options["challenge_id"], {**bad, "type": "public-key"}, "registration")
    assert response.status_code == 400
    assert response.json()["error"] == "webauthn_verification_failed"


def test_a_verify_without_challenge_id_is_a_validation_error():
    response = APIClient().post(f"{BASE}/authentication/verify", {"credential": {}}, format="json")
    assert response.status_code == 400
    assert "challenge_id" in response.json()["fields"]


# --- second factor ---------------------------------------------------------------------------


def test_a_passkey_as_second_factor_raises_the_same_session(login, user, key):
    _registered(login, user, key)
    tokens = login(user)
    session = _session_of(tokens)
    assert session.aal == "aal1"
    response = passkey_assert(bearer(tokens["access_token"]), key, mfa=True)
    assert response.status_code == 200, response.content
    raised = _session_of(response.json())
    assert raised.pk == session.pk
    assert raised.aal == "aal2"
    assert [entry["method"] for entry in raised.amr] == ["password", "passkey"]
    assert raised.factor_id == Passkey.objects.get(user=user).pk
    assert _events(AuditEvent.Kind.MFA_FACTOR_VERIFIED)[0].detail["method"] == "passkey"


def test_second_factor_options_offer_the_users_keys(login, user, key):
    client, _ = _registered(login, user, key)
    options = _options(client, "mfa")["options"]
    assert options["allowCredentials"] == [{"id": b64url(key.credential_id), "type": "public-key"}]


def test_a_second_factor_challenge_is_bound_to_its_session(login, user, key):
    client, _ = _registered(login, user, key)
    options = _options(client, "mfa")
    other_session, _ = _signed_in(login, user)
    response = _verify(other_session, options["challenge_id"], key.get(options["options"]), "mfa")
    assert response.status_code == 400
    assert response.json()["error"] == "webauthn_challenge_not_found"
    # Nor can a sign-in use it.
    sign_in = _verify(APIClient(), options["challenge_id"], key.get(options["options"]))
    assert sign_in.json()["error"] == "webauthn_challenge_not_found"


def test_another_users_passkey_is_no_second_factor(login, user, key):
    _registered(login, user, key)
    stranger = UserFactory()
    client, _ = _registered(login, stranger, SoftAuthenticator())
    response = passkey_assert(client, key, mfa=True)
    assert response.status_code == 400
    assert _events(AuditEvent.Kind.MFA_VERIFY_FAILURE)[0].user_id == stranger.pk


def test_second_factor_options_without_a_passkey_are_refused(login, user):
    client, _ = _signed_in(login, user)
    response = client.post(f"{BASE}/mfa/options", {}, format="json")
    assert response.status_code == 422
    assert response.json()["error"] == "webauthn_credential_not_found"


# --- list, rename, delete --------------------------------------------------------------------


def test_list_and_rename(login, user, key):
    client, _ = _registered(login, user, key)
    passkey_id = str(Passkey.objects.get(user=user).pk)
    renamed = client.patch(f"{BASE}/{passkey_id}", {"friendly_name": "Laptop"}, format="json")
    assert renamed.status_code == 200
    assert renamed.json()["friendly_name"] == "Laptop"
    listed = client.get(BASE).json()["results"]
    assert [(item["id"], item["friendly_name"]) for item in listed] == [(passkey_id, "Laptop")]
    assert client.patch(f"{BASE}/{passkey_id}", {"friendly_name": "x" * 65}, format="json").status_code == 400


def test_another_users_passkey_cannot_be_renamed_or_deleted(login, user, key):
    _registered(login, user, key)
    passkey_id = Passkey.objects.get(user=user).pk
    stranger, _ = _signed_in(login, UserFactory())
    assert stranger.patch(f"{BASE}/{passkey_id}", {"friendly_name": "mine"}, format="json").status_code == 404
    assert stranger.delete(f"{BASE}/{passkey_id}").status_code == 404
    assert Passkey.objects.get(pk=passkey_id).friendly_name == ""


def test_deleting_a_passkey_needs_aal2_and_the_last_one_takes_the_codes(login, user, key):
    client, _ = _registered(login, user, key)
    passkey_id = Passkey.objects.get(user=user).pk
    refused = client.delete(f"{BASE}/{passkey_id}")
    assert refused.status_code == 403
    assert refused.json()["error"] == "insufficient_aal"
    raised = bearer(passkey_assert(client, key, mfa=True).json()["access_token"])
    assert raised.delete(f"{BASE}/{passkey_id}").status_code == 204
    assert not Passkey.objects.exists()
    assert not RecoveryCode.objects.filter(user=user).exists()
    assert len(_events(AuditEvent.Kind.PASSKEY_DELETED)) == 1


def test_an_api_key_cannot_manage_passkeys(api):
    response = api.post("/api/v1/auth/signup", {"email": "keyed@example.com", "password": STRONG}, format="json")
    key = response.json()["api_key"]["key"]
    client = APIClient()
    client.credentials(HTTP_X_API_KEY=key)
    assert client.post(f"{BASE}/registration/options", {}, format="json").status_code == 403


# --- the demo page ---------------------------------------------------------------------------


def test_the_demo_page_is_off_unless_enabled(settings, api):
    settings.PASSKEY_DEMO_PAGE = False
    assert api.get("/passkeys/demo/").status_code == 404
    settings.PASSKEY_DEMO_PAGE = True
    settings.SUPABASE_ANON_KEY = "anon-key-for-the-page-" + "a" * 20
    page = api.get("/passkeys/demo/")
    assert page.status_code == 200
    assert settings.SUPABASE_ANON_KEY in page.content.decode()
    assert "script-src 'self'" in page["Content-Security-Policy"]
