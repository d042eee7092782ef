"""Email codes and links through the official @supabase/auth-js client (node, js/run.mjs):
recovery, code sign-in and reuse, PKCE magic link to exchangeCodeForSession. A real Celery
worker sends the outbox to a real SMTP listener, from which the tests read codes and links."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from accounts.tests.factories import DEFAULT_PASSWORD, UserFactory
from accounts.tests.support import ANON_KEY, last_code_to, last_link_to, run_authjs
from notifications.tests.support import _enqueue_breaker_closed, celery_worker, smtp_server  # noqa: F401

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

NEW_PASSWORD = "violet tractor umbrella 42"
REDIRECT = "https://app.example.com/auth/callback"


@pytest.fixture(autouse=True)
def _settings(settings, live_server):
    settings.SUPABASE_ANON_KEY = ANON_KEY
    settings.RATELIMIT_ENABLE = False
    settings.GOTRUE_SITE_URL = live_server.url
    settings.GOTRUE_URI_ALLOW_LIST = ["https://app.example.com/**"]


@pytest.fixture
def mailbox(celery_worker, smtp_server, live_server):  # noqa: F811
    celery_worker(env={"GOTRUE_SITE_URL": live_server.url})
    return smtp_server


@pytest.fixture
def authjs(live_server):
    def _run(scenario: str, **args) -> dict:
        return run_authjs(scenario, url=f"{live_server.url}/auth/v1", apikey=ANON_KEY, **args)

    return _run


def test_auth_js_recovers_a_password_with_the_emailed_code(authjs, mailbox):
    UserFactory(email="js-recover@example.com")
    assert authjs("requestEmail", action="recover", email="js-recover@example.com")["error"] is None
    code = last_code_to(mailbox, "js-recover@example.com")
    result = authjs(
        "verifyOtp", email="js-recover@example.com", token=code, type="recovery", updates=[{"password": NEW_PASSWORD}]
    )
    assert result["verify"]["error"] is None and result["verify"]["session"]["access_token"]
    assert result["updates"][0]["error"] is None  # a recovery session needs no current password
    signed_in = authjs("signInWithPassword", email="js-recover@example.com", password=NEW_PASSWORD)
    assert signed_in["signIn"]["error"] is None
    old = authjs("signInWithPassword", email="js-recover@example.com", password=DEFAULT_PASSWORD)
    assert old["signIn"]["error"]["code"] == "invalid_credentials"


def test_auth_js_signs_in_with_an_email_code_once(authjs, mailbox):
    user = UserFactory(email="js-otp@example.com")
    assert authjs("requestEmail", action="otp", email="js-otp@example.com", createUser=False)["error"] is None
    code = last_code_to(mailbox, "js-otp@example.com")
    first = authjs("verifyOtp", email="js-otp@example.com", token=code, type="email")
    assert first["verify"]["error"] is None and first["getUser"]["user"]["id"] == str(user.pk)
    again = authjs("verifyOtp", email="js-otp@example.com", token=code, type="email")
    assert (again["verify"]["error"]["status"], again["verify"]["error"]["code"]) == (403, "otp_expired")


def test_auth_js_pkce_magic_link_ends_in_exchange_code_for_session(authjs, mailbox):
    user = UserFactory(email="js-pkce@example.com")
    asked = authjs("requestEmail", action="otp", email="js-pkce@example.com", redirectTo=REDIRECT, flowType="pkce")
    assert asked["error"] is None and asked["storage"]  # the code verifier, kept as a browser would
    link = last_link_to(mailbox, "js-pkce@example.com")
    followed = requests.get(link, allow_redirects=False, timeout=10)
    assert followed.status_code == 303 and followed.headers["Location"].startswith(f"{REDIRECT}?code=")
    auth_code = parse_qs(urlsplit(followed.headers["Location"]).query)["code"][0]
    exchanged = authjs("exchangeCode", authCode=auth_code, storage=asked["storage"])
    assert exchanged["exchange"]["error"] is None
    assert exchanged["getUser"]["user"]["id"] == str(user.pk)
    replay = authjs("exchangeCode", authCode=auth_code, storage=asked["storage"])
    assert replay["exchange"]["error"] is not None
