"""Recovery codes on the GoTrue surface (/auth/v1/mfa/recovery-codes..., beyond
GoTrue): GoTrue's session body and error shapes, and the official client
reading the raised session's level."""

from __future__ import annotations

import pytest
import requests
from rest_framework.test import APIClient

from accounts import recovery
from accounts.models import Session
from accounts.tests.factories import DEFAULT_PASSWORD, MfaFactorFactory, UserFactory
from accounts.tests.support import ANON_KEY, aal2, session_of, supabase_project, token_claims
from monitoring import audit
from monitoring.models import AuditEvent

CODES = "/auth/v1/mfa/recovery-codes"
VERIFY = "/auth/v1/mfa/recovery-codes/verify"
PASSWORD_GRANT = "/auth/v1/token?grant_type=password"
VERSIONED = {"HTTP_X_SUPABASE_API_VERSION": "2024-01-01"}


@pytest.fixture(autouse=True)
def _project(settings):
    supabase_project(settings)


@pytest.fixture
def member(db):
    user = UserFactory()
    MfaFactorFactory(user=user)
    user.codes = recovery.recovery_codes_generate(user_id=user.pk)
    return user


def _signed_in(user) -> APIClient:
    client = APIClient(HTTP_APIKEY=ANON_KEY)
    body = client.post(PASSWORD_GRANT, {"email": user.email, "password": DEFAULT_PASSWORD}, format="json").json()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {body['access_token']}")
    client.session_body = body
    return client


def test_a_code_answers_the_session_at_aal2_in_gotrues_shape(member):
    client = _signed_in(member)
    response = client.post(VERIFY, {"code": member.codes[0]}, format="json")
    assert response.status_code == 200, response.content
    body = response.json()
    assert set(body) >= {"access_token", "token_type", "expires_in", "expires_at", "refresh_token", "user"}
    claims = token_claims(body["access_token"], audience="authenticated")
    assert claims["aal"] == "aal2"
    assert [entry["method"] for entry in claims["amr"]] == ["recovery", "password"]  # newest first, as GoTrue
    assert session_of(body["access_token"]) == session_of(client.session_body["access_token"])
    assert Session.objects.get(pk=session_of(body["access_token"])).aal == "aal2"
    used = [e for e in audit.pending() if e.kind == AuditEvent.Kind.RECOVERY_CODE_USED]
    assert [(e.detail["remaining"], e.detail["surface"]) for e in used] == [("9", "gotrue")]


@pytest.mark.parametrize("code", ["aaaaa-bbbbb", "%%%"])
def test_a_wrong_code_is_mfa_verification_failed_in_both_error_flavours(member, code):
    client = _signed_in(member)
    response = client.post(VERIFY, {"code": code}, format="json")
    assert response.status_code == 422
    assert response.json() == {
        "code": 422,
        "error_code": "mfa_verification_failed",
        "msg": "Invalid recovery code entered",
    }
    versioned = client.post(VERIFY, {"code": code}, format="json", **VERSIONED)
    assert versioned.json() == {"code": "mfa_verification_failed", "message": "Invalid recovery code entered"}


def test_a_used_code_is_refused(member):
    client = _signed_in(member)
    assert client.post(VERIFY, {"code": member.codes[0]}, format="json").status_code == 200
    assert (
        client.post(VERIFY, {"code": member.codes[0]}, format="json").json()["error_code"] == "mfa_verification_failed"
    )


def test_no_code_is_a_validation_failure(member):
    response = _signed_in(member).post(VERIFY, {}, format="json")
    assert response.status_code == 400 and response.json()["error_code"] == "validation_failed"


def test_without_a_bearer_token_no_authorization(member):
    response = APIClient(HTTP_APIKEY=ANON_KEY).post(VERIFY, {"code": member.codes[0]}, format="json")
    assert response.status_code == 401 and response.json()["error_code"] == "no_authorization"


def test_the_count_left(member):
    body = _signed_in(member).get(CODES).json()
    assert body["remaining"] == 10 and body["created_at"]


def test_a_new_set_at_aal1_is_insufficient_aal(member):
    response = _signed_in(member).post(CODES)
    assert response.status_code == 403
    assert response.json()["error_code"] == "insufficient_aal"


def test_a_new_set_at_aal2_replaces_the_old_one(member):
    client = _signed_in(member)
    aal2(client.session_body["access_token"])
    response = client.post(CODES)
    assert response.status_code == 200, response.content
    fresh = response.json()["codes"]
    assert len(fresh) == 10
    assert client.post(VERIFY, {"code": member.codes[0]}, format="json").status_code == 422
    assert client.post(VERIFY, {"code": fresh[0]}, format="json").status_code == 200


def test_a_new_set_without_a_second_factor_is_refused(db):
    response = _signed_in(UserFactory()).post(CODES)
    assert response.status_code == 422 and response.json()["error_code"] == "second_factor_required"


@pytest.mark.django_db(transaction=True)
def test_the_official_client_reads_aal2_after_a_recovery_code(make_client, live_server):
    user = UserFactory(email="codes@example.com")
    MfaFactorFactory(user=user)
    codes = recovery.recovery_codes_generate(user_id=user.pk)
    client = make_client()
    session = client.sign_in_with_password({"email": user.email, "password": DEFAULT_PASSWORD}).session
    assert client.mfa.get_authenticator_assurance_level().current_level == "aal1"
    response = requests.post(
        f"{live_server.url}{VERIFY}",
        json={"code": codes[0]},
        headers={"apikey": ANON_KEY, "Authorization": f"Bearer {session.access_token}"},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    raised = response.json()
    client.set_session(raised["access_token"], raised["refresh_token"])
    level = client.mfa.get_authenticator_assurance_level()
    assert level.current_level == "aal2"
    assert [entry.method for entry in level.current_authentication_methods] == [
        "recovery",
        "password",
    ]  # newest first, as GoTrue
    refreshed = client.refresh_session()
    assert token_claims(refreshed.session.access_token, audience="authenticated")["aal"] == "aal2"
