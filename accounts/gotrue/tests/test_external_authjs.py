"""Sign in with a provider through the official @supabase/auth-js client (js/run.mjs, the
"OAuth / OIDC" block) against the local OpenID Connect provider: signInWithOAuth's URL walked
in headless Chromium then exchangeCodeForSession, signInWithIdToken, linkIdentity,
getUserIdentities and unlinkIdentity."""

from __future__ import annotations

import hashlib
from urllib.parse import parse_qs, urlsplit

import pytest

from accounts.gotrue.tests.provider_support import browser_walk, provider_id_token
from accounts.tests.factories import DEFAULT_PASSWORD, UserFactory
from accounts.tests.support import ANON_KEY, run_authjs, supabase_project

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

APP = "https://app.example.com/js"


@pytest.fixture(autouse=True)
def _project(settings, provider_settings):
    supabase_project(settings)


@pytest.fixture
def authjs(live_server):
    def _run(scenario: str, **args) -> dict:
        return run_authjs(scenario, url=f"{live_server.url}/auth/v1", apikey=ANON_KEY, **args)

    return _run


def test_sign_in_with_oauth_pkce_walks_the_provider_then_exchanges_the_code(authjs, live_server, provider_settings):
    started = authjs("signInWithOAuth", provider="acme", redirectTo=APP, flowType="pkce")
    assert started["error"] is None and started["url"].startswith(f"{live_server.url}/auth/v1/authorize?")
    assert "code_challenge=" in started["url"] and started["storage"]
    landed = browser_walk(started["url"], issuer=provider_settings.issuer, login="js-oauth@example.com", until=APP)
    code = parse_qs(urlsplit(landed).query)["code"][0]
    exchanged = authjs("exchangeCode", authCode=code, storage=started["storage"])
    assert exchanged["exchange"]["error"] is None
    user = exchanged["getUser"]["user"]
    assert user["email"] == "js-oauth@example.com" and user["identities"] == ["acme"]
    assert user["app_metadata"]["provider"] == "acme"


def test_sign_in_with_id_token_and_get_user_identities(authjs, provider_settings):
    nonce = "js-raw-nonce"
    token = provider_id_token(
        provider_settings, login="js-id-token@example.com", nonce=hashlib.sha256(nonce.encode()).hexdigest()
    )
    result = authjs("signInWithIdToken", provider="acme", idToken=token["id_token"], nonce=nonce)
    assert result["signIn"]["error"] is None
    assert result["signIn"]["user"]["email"] == "js-id-token@example.com"
    assert [identity["provider"] for identity in result["identities"]] == ["acme"]
    wrong = authjs("signInWithIdToken", provider="acme", idToken=token["id_token"], nonce="not-it")
    assert wrong["signIn"]["error"]["status"] == 400


def test_link_identity_then_unlink_identity_with_the_client(authjs, provider_settings):
    UserFactory(email="js-link@example.com")
    linking = authjs(
        "identities", email="js-link@example.com", password=DEFAULT_PASSWORD, linkProvider="acme", redirectTo=APP
    )
    assert linking["link"]["error"] is None and linking["link"]["url"].startswith(provider_settings.issuer)
    assert [identity["provider"] for identity in linking["identities"]] == ["email"]
    browser_walk(linking["link"]["url"], issuer=provider_settings.issuer, login="js-link-other@example.com", until=APP)
    unlinking = authjs("identities", email="js-link@example.com", password=DEFAULT_PASSWORD, unlinkProvider="acme")
    assert [identity["provider"] for identity in unlinking["identities"]] == ["email", "acme"]
    assert unlinking["unlink"]["error"] is None
    assert [identity["provider"] for identity in unlinking["after"]] == ["email"]
    last = authjs("identities", email="js-link@example.com", password=DEFAULT_PASSWORD, unlinkProvider="email")
    assert last["unlink"]["error"]["code"] == "single_identity_not_deletable"
