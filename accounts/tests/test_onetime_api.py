"""The native API's forgot/reset password, email-code sign-in and email confirmation
(the same flows as GoTrue's /recover, /otp, /verify)."""

from __future__ import annotations

import pytest
import requests
from rest_framework.test import APIClient

from accounts.models import OneTimeToken, Session, User
from accounts.models import OneTimeTokenPurpose as Purpose
from accounts.onetime import ott_code, ott_issue
from accounts.tests.factories import DEFAULT_PASSWORD, UserFactory
from accounts.tests.support import api_login, last_code_to, last_link_to
from notifications.models import EmailNotification
from notifications.tests.support import _enqueue_breaker_closed, celery_worker, smtp_server  # noqa: F401

pytestmark = pytest.mark.django_db

BASE = "/api/v1/auth"
NEW_PASSWORD = "violet tractor umbrella 42"


@pytest.fixture(autouse=True)
def _no_limits(settings):
    settings.RATELIMIT_ENABLE = False
    settings.GOTRUE_SMTP_MAX_FREQUENCY = 0  # the interval's own tests: test_onetime*.py


@pytest.fixture
def api() -> APIClient:
    return APIClient()


def test_forgot_password_answers_the_same_for_known_and_unknown_addresses(api):
    UserFactory(email="known@example.com")
    known = api.post(f"{BASE}/password/forgot", {"email": "known@example.com"}, format="json")
    unknown = api.post(f"{BASE}/password/forgot", {"email": "nobody@example.com"}, format="json")
    assert known.status_code == unknown.status_code == 202
    assert known.json() == unknown.json()
    assert EmailNotification.objects.filter(kind="recovery").count() == 1
    assert not User.objects.filter(email="nobody@example.com").exists()


def test_reset_with_the_code_sets_the_password_and_ends_every_session(api):
    user = UserFactory(email="reset@example.com")
    api_login("reset@example.com")
    issued = ott_issue(user=user, purpose=Purpose.RECOVERY, sent_to=user.email)
    body = {"email": "reset@example.com", "code": issued.code, "new_password": NEW_PASSWORD}
    assert api.post(f"{BASE}/password/reset", body, format="json").status_code == 204
    assert not Session.objects.filter(user=user, revoked_at__isnull=True).exists()
    api_login("reset@example.com", NEW_PASSWORD)
    again = api.post(f"{BASE}/password/reset", body, format="json")
    assert again.status_code == 403 and again.json()["error"] == "otp_expired"


def test_a_weak_new_password_leaves_the_code_usable(api):
    user = UserFactory()
    issued = ott_issue(user=user, purpose=Purpose.RECOVERY, sent_to=user.email)
    weak = api.post(f"{BASE}/password/reset", {"token": issued.link_token, "new_password": "123"}, format="json")
    assert weak.status_code == 400 and "new_password" in weak.json()["fields"]
    body = {"token": issued.link_token, "new_password": NEW_PASSWORD}
    assert api.post(f"{BASE}/password/reset", body, format="json").status_code == 204


def test_a_sign_in_code_is_not_a_recovery_code(api):
    user = UserFactory()
    issued = ott_issue(user=user, purpose=Purpose.MAGICLINK, sent_to=user.email)
    body = {"email": user.email, "code": issued.code, "new_password": NEW_PASSWORD}
    assert api.post(f"{BASE}/password/reset", body, format="json").status_code == 403
    signed_in = api.post(f"{BASE}/email-code/verify", {"email": user.email, "code": issued.code}, format="json")
    assert signed_in.status_code == 200 and signed_in.json()["access_token"]


def test_email_code_request_creates_an_account_only_when_asked(api):
    api.post(f"{BASE}/email-code", {"email": "fresh@example.com"}, format="json")
    assert not User.objects.filter(email="fresh@example.com").exists()
    answer = api.post(f"{BASE}/email-code", {"email": "fresh@example.com", "create_user": True}, format="json")
    assert answer.status_code == 202
    user = User.objects.get(email="fresh@example.com")
    assert OneTimeToken.objects.filter(user=user, purpose=Purpose.MAGICLINK).count() == 1


def test_confirming_the_address_with_the_link_token(api):
    user = UserFactory(email_confirmed_at=None)
    issued = ott_issue(user=user, purpose=Purpose.SIGNUP, sent_to=user.email)
    assert api.post(f"{BASE}/email/confirm", {"token": issued.link_token}, format="json").status_code == 204
    user.refresh_from_db()
    assert user.email_confirmed_at is not None
    # Confirmed: a resend sends nothing (and answers the same).
    assert api.post(f"{BASE}/email/confirm/resend", {"email": user.email}, format="json").status_code == 202
    assert EmailNotification.objects.filter(kind="confirmation").count() == 1


def test_code_and_token_together_or_neither_are_a_validation_error(api):
    both = api.post(f"{BASE}/email-code/verify", {"email": "a@example.com", "code": "1", "token": "t"}, format="json")
    neither = api.post(f"{BASE}/email-code/verify", {"email": "a@example.com"}, format="json")
    assert both.status_code == neither.status_code == 400


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_forgot_then_reset_over_http_with_the_emailed_code(live_server, smtp_server, celery_worker):  # noqa: F811
    celery_worker(env={"GOTRUE_SITE_URL": live_server.url})
    UserFactory(email="http@example.com")
    url = f"{live_server.url}{BASE}"
    assert requests.post(f"{url}/password/forgot", json={"email": "http@example.com"}, timeout=10).status_code == 202
    code = last_code_to(smtp_server, "http@example.com")
    assert last_link_to(smtp_server, "http@example.com").startswith(f"{live_server.url}/auth/v1/verify?token=")
    body = {"email": "http@example.com", "code": code, "new_password": NEW_PASSWORD}
    assert requests.post(f"{url}/password/reset", json=body, timeout=10).status_code == 204
    login = requests.post(f"{url}/login", json={"email": "http@example.com", "password": NEW_PASSWORD}, timeout=10)
    assert login.status_code == 200
    old = requests.post(f"{url}/login", json={"email": "http@example.com", "password": DEFAULT_PASSWORD}, timeout=10)
    assert old.status_code == 401


def test_confirmation_required_signup_answers_202_without_tokens_until_confirmed(api, settings):
    settings.GOTRUE_MAILER_AUTOCONFIRM = False
    body = {"email": "pending@example.com", "password": NEW_PASSWORD}
    signed_up = api.post(f"{BASE}/signup", body, format="json")
    assert signed_up.status_code == 202 and "access_token" not in signed_up.json()
    login = api.post(f"{BASE}/login", body, format="json")
    assert login.status_code == 400 and login.json()["error"] == "email_not_confirmed"
    token = OneTimeToken.objects.get(user__email="pending@example.com", purpose=Purpose.SIGNUP)
    assert EmailNotification.objects.filter(event_key=f"ott:{token.pk}", kind="confirmation").exists()


def test_an_email_change_applies_once_both_addresses_confirm(api):
    user = UserFactory(email="before@example.com")
    UserFactory(email="taken@example.com")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {api_login('before@example.com')['access_token']}")
    taken = client.post(f"{BASE}/email/change", {"new_email": "taken@example.com"}, format="json")
    assert taken.status_code == 409 and taken.json()["error"] == "email_taken"
    assert client.post(f"{BASE}/email/change", {"new_email": "after@example.com"}, format="json").status_code == 202
    tokens = {t.purpose: t for t in OneTimeToken.objects.filter(user=user, purpose__startswith="email_change")}
    assert tokens[Purpose.EMAIL_CHANGE_NEW].sent_to == "after@example.com"
    assert tokens[Purpose.EMAIL_CHANGE_CURRENT].sent_to == "before@example.com"
    new_code = ott_code(token_id=tokens[Purpose.EMAIL_CHANGE_NEW].pk)
    first = api.post(f"{BASE}/email/change/confirm", {"email": "after@example.com", "code": new_code}, format="json")
    assert first.status_code == 200 and first.json()["changed"] is False
    assert first.json()["user"]["email"] == "before@example.com"
    old_code = ott_code(token_id=tokens[Purpose.EMAIL_CHANGE_CURRENT].pk)
    second = api.post(f"{BASE}/email/change/confirm", {"email": "before@example.com", "code": old_code}, format="json")
    assert second.json()["changed"] is True and second.json()["user"]["email"] == "after@example.com"


@pytest.mark.parametrize(("proof", "method"), [("code", "otp"), ("token", "magiclink")])
def test_a_session_started_by_an_email_code_or_link_names_that_method(api, proof, method):
    user = UserFactory()
    issued = ott_issue(user=user, purpose=Purpose.MAGICLINK, sent_to=user.email)
    body = {"email": user.email, "code": issued.code} if proof == "code" else {"token": issued.link_token}
    assert api.post(f"{BASE}/email-code/verify", body, format="json").status_code == 200
    session = Session.objects.get(user=user)
    assert (session.aal, [entry["method"] for entry in session.amr]) == ("aal1", [method])
