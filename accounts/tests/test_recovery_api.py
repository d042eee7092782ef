"""Recovery codes on the native API: reach aal2 with a code, see what is left,
make a new set (aal2), the per-user limit, and the email each use sends."""

from __future__ import annotations

import pytest

from accounts import recovery
from accounts.models import Session
from accounts.tests.factories import MfaFactorFactory, UserFactory
from accounts.tests.support import bearer, session_of, text_of
from accounts.tokens import access_token_decode
from monitoring import audit
from monitoring.models import AuditEvent
from notifications.models import EmailNotification
from notifications.tests.support import _enqueue_breaker_closed, celery_worker, smtp_server  # noqa: F401

CODES = "/api/v1/auth/mfa/recovery-codes"
VERIFY = "/api/v1/auth/mfa/recovery-codes/verify"
ME = "/api/v1/auth/me"


@pytest.fixture
def codes(user):
    MfaFactorFactory(user=user)
    return recovery.recovery_codes_generate(user_id=user.pk)


def _kinds() -> list[str]:
    return [event.kind for event in audit.pending()]


def test_a_code_raises_the_session_to_aal2_with_new_tokens_of_the_same_session(auth_api, user, codes):
    session_id = session_of(auth_api.tokens["access_token"])
    response = auth_api.post(VERIFY, {"code": codes[0]}, format="json")
    assert response.status_code == 200, response.content
    body = response.json()
    assert set(body) >= {"access_token", "refresh_token", "expires_in", "user"}
    assert access_token_decode(body["access_token"]).session_id == session_id
    session = Session.objects.get(pk=session_id)
    assert session.aal == "aal2"
    assert [entry["method"] for entry in session.amr] == ["password", "recovery"]
    assert bearer(body["access_token"]).get(ME).status_code == 200


def test_each_use_is_audited_with_the_count_left_and_emailed_without_the_code(auth_api, user, codes):
    auth_api.post(VERIFY, {"code": codes[0]}, format="json")
    used = [event for event in audit.pending() if event.kind == AuditEvent.Kind.RECOVERY_CODE_USED]
    assert [(event.user_id, event.detail["remaining"]) for event in used] == [(user.pk, "9")]
    email = EmailNotification.objects.get(recipient=user, kind="recovery_code_used")
    assert email.context["remaining"] == 9
    assert not any(code in str(email.context) for code in codes)


@pytest.mark.parametrize("code", ["aaaaa-bbbbb", "!!!!", "   x  ", "0" * 64])
def test_an_unknown_or_malformed_code_is_refused_and_audited(auth_api, user, codes, code):
    response = auth_api.post(VERIFY, {"code": code}, format="json")
    assert response.status_code == 422
    assert response.json()["error"] == "mfa_verification_failed"
    assert AuditEvent.Kind.MFA_VERIFY_FAILURE in _kinds()
    assert recovery.recovery_codes_remaining(user_id=user.pk) == 10
    assert Session.objects.get(pk=session_of(auth_api.tokens["access_token"])).aal == "aal1"


def test_a_used_code_is_refused(auth_api, codes):
    assert auth_api.post(VERIFY, {"code": codes[0]}, format="json").status_code == 200
    response = auth_api.post(VERIFY, {"code": codes[0]}, format="json")
    assert response.status_code == 422 and response.json()["error"] == "mfa_verification_failed"


def test_a_missing_or_non_string_code_is_a_validation_error(auth_api, codes):
    assert auth_api.post(VERIFY, {}, format="json").status_code == 400
    assert auth_api.post(VERIFY, {"code": 123456}, format="json").status_code == 400


def test_after_the_tenth_code_none_works_and_the_count_is_zero(auth_api, user, codes, settings):
    settings.RATELIMIT_RECOVERY_CODE_USER = (20, 900)  # every try counts, a good one too
    for code in codes:
        assert auth_api.post(VERIFY, {"code": code}, format="json").status_code == 200
    assert auth_api.post(VERIFY, {"code": codes[-1]}, format="json").status_code == 422
    assert auth_api.get(CODES).json()["remaining"] == 0


def test_attempts_are_limited_per_user(auth_api, user, codes, settings):
    settings.RATELIMIT_RECOVERY_CODE_USER = (3, 900)
    for _ in range(3):
        assert auth_api.post(VERIFY, {"code": "wrong-guess"}, format="json").status_code == 422
    response = auth_api.post(VERIFY, {"code": codes[0]}, format="json")
    assert response.status_code == 429 and "Retry-After" in response
    assert recovery.recovery_codes_remaining(user_id=user.pk) == 10


def test_the_count_left_and_when_the_set_was_made(auth_api, user, codes):
    recovery.recovery_code_use(user_id=user.pk, code=codes[0])
    body = auth_api.get(CODES).json()
    assert body["remaining"] == 9 and body["created_at"]


def test_a_user_without_codes_sees_none(auth_api):
    assert auth_api.get(CODES).json() == {"remaining": 0, "created_at": None}


def test_a_new_set_needs_aal2(auth_api, codes):
    response = auth_api.post(CODES)
    assert response.status_code == 403 and response.json()["error"] == "insufficient_aal"


def test_a_new_set_at_aal2_is_shown_once_and_the_old_set_stops_working(auth_api, user, codes):
    tokens = auth_api.post(VERIFY, {"code": codes[0]}, format="json").json()
    client = bearer(tokens["access_token"])
    response = client.post(CODES)
    assert response.status_code == 201, response.content
    body = response.json()
    assert len(body["codes"]) == 10 and body["remaining"] == 10
    assert AuditEvent.Kind.RECOVERY_CODES_GENERATED in _kinds()
    assert client.post(VERIFY, {"code": codes[1]}, format="json").status_code == 422
    assert client.post(VERIFY, {"code": body["codes"][0]}, format="json").status_code == 200
    assert "codes" not in client.get(CODES).json()


def test_a_new_set_needs_a_second_factor(auth_api):
    response = auth_api.post(CODES)
    assert response.status_code == 422 and response.json()["error"] == "second_factor_required"


def test_an_api_key_cannot_use_or_make_codes(api, codes, user):
    from accounts import services

    _, raw = services.api_key_create(user=user, name="script")
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert api.post(VERIFY, {"code": codes[0]}, format="json").status_code == 403
    assert api.post(CODES).status_code == 403


def test_another_users_session_cannot_spend_the_code(api, login, codes):
    other = UserFactory()
    tokens = login(other)
    response = bearer(tokens["access_token"]).post(VERIFY, {"code": codes[0]}, format="json")
    assert response.status_code == 422


# --- the email, through the real outbox: a Celery worker and an SMTP listener ---------------


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_a_used_code_is_emailed_with_the_count_left_and_never_the_code(celery_worker, smtp_server, login):  # noqa: F811
    celery_worker()
    user = UserFactory(email="lost-phone@example.com")
    MfaFactorFactory(user=user)
    codes = recovery.recovery_codes_generate(user_id=user.pk)
    client = bearer(login(user)["access_token"])
    assert client.post(VERIFY, {"code": codes[3]}, format="json").status_code == 200
    smtp_server.wait_for(1)
    [message] = smtp_server.to("lost-phone@example.com")
    assert message["Subject"] == "A Velro recovery code was used"
    text = text_of(message)
    assert "9 of your recovery codes remain" in text
    assert "If it was not you" in text
    raw = message.as_string()
    assert not any(code in raw or code.replace("-", "") in raw for code in codes)
