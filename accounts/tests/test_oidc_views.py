"""The native API's sign in with a provider (accounts/oidc_views.py) against the local
OpenID Connect provider in headless Chromium: the flow always ends in a code (PKCE)."""

from __future__ import annotations

import base64
import hashlib
from urllib.parse import parse_qs, urlsplit

import pytest
from rest_framework.test import APIClient

from accounts.gotrue.tests import provider_support
from accounts.gotrue.tests.provider_support import browser_walk, provider_id_token
from accounts.models import Identity
from accounts.services import api_key_create
from accounts.tests.factories import MfaFactorFactory, UserFactory
from accounts.tests.support import api_login, bearer

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

# The GoTrue tests' fixtures (a conftest's fixtures are visible only below it).
oidc_provider = provider_support.oidc_provider
provider_settings = provider_support.provider_settings

APP = "https://app.example.com/native"
VERIFIER = "native-verifier-" + "n" * 40


@pytest.fixture(autouse=True)
def _limits(settings, provider_settings):
    settings.RATELIMIT_ENABLE = False


def _challenge() -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(VERIFIER.encode()).digest()).rstrip(b"=").decode()


def _sign_in(issuer: str, login: str) -> dict:
    started = APIClient().post(
        "/api/v1/auth/oauth/authorize",
        {"provider": "acme", "redirect_to": APP, "code_challenge": _challenge()},
        format="json",
    )
    assert started.status_code == 200, started.content
    landed = browser_walk(started.json()["url"], issuer=issuer, login=login, until=APP)
    code = parse_qs(urlsplit(landed).query)["code"][0]
    tokens = APIClient().post("/api/v1/auth/oauth/token", {"code": code, "code_verifier": VERIFIER}, format="json")
    assert tokens.status_code == 200, tokens.content
    return tokens.json()


def test_the_native_flow_ends_in_a_code_exchanged_for_native_tokens(provider_settings):
    tokens = _sign_in(provider_settings.issuer, "native-walker@example.com")
    api = bearer(tokens["access_token"])
    assert api.get("/api/v1/auth/me").json()["email"] == "native-walker@example.com"
    listed = api.get("/api/v1/auth/identities").json()["identities"]
    assert [identity["provider"] for identity in listed] == ["acme"]
    refused = api.delete(f"/api/v1/auth/identities/{listed[0]['identity_id']}")
    assert (refused.status_code, refused.json()["error"]) == (422, "single_identity_not_deletable")


def test_the_native_id_token_sign_in_and_the_provider_list(provider_settings):
    token = provider_id_token(provider_settings, login="native-id@example.com", nonce=None)
    answer = APIClient().post(
        "/api/v1/auth/oauth/id-token", {"provider": "acme", "id_token": token["id_token"]}, format="json"
    )
    assert answer.status_code == 200, answer.content
    assert Identity.objects.get(provider_id="native-id@example.com").user.email == "native-id@example.com"
    assert APIClient().get("/api/v1/auth/oauth/providers").json() == {"providers": ["acme", "github", "google"]}


def test_the_native_authorize_requires_pkce(provider_settings):
    answer = APIClient().post("/api/v1/auth/oauth/authorize", {"provider": "acme", "redirect_to": APP}, format="json")
    assert answer.status_code == 400


@pytest.mark.parametrize("credential", ["api_key", "aal1_session"])
def test_unlinking_needs_a_session_and_aal2_once_the_user_has_a_second_factor(credential):
    user = UserFactory()
    identity = Identity.objects.create(user=user, provider="acme", provider_id="sub-1", email=user.email)
    MfaFactorFactory(user=user)
    if credential == "api_key":
        _, raw = api_key_create(user=user, name="ci")
        client = APIClient()
        client.credentials(HTTP_X_API_KEY=raw)
    else:
        client = bearer(api_login(user.email)["access_token"])
    response = client.delete(f"/api/v1/auth/identities/{identity.pk}")
    expected = "forbidden" if credential == "api_key" else "insufficient_aal"
    assert (response.status_code, response.json()["error"]) == (403, expected)
    assert Identity.objects.filter(pk=identity.pk).exists()
