"""Sign in with a provider against a real OpenID Connect provider (oidc-provider under node)
and a real browser (headless Chromium): GET /auth/v1/authorize -> the provider's login and
consent pages -> /callback -> redirect_to with the session (implicit) or ?code= (PKCE).
Plus signInWithIdToken with a provider-issued ID token, identity linking and unlinking,
and the refusals (state, nonce, PKCE tampering; open redirects; unverified addresses)."""

from __future__ import annotations

import base64
import hashlib
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
import requests

from accounts.gotrue.tests.provider_support import browser_walk, provider_id_token
from accounts.models import Identity, User
from accounts.tests.factories import DEFAULT_PASSWORD, UserFactory
from accounts.tests.support import ANON_KEY, supabase_project
from monitoring import audit
from monitoring.models import AuditEvent

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

APP = "https://app.example.com/welcome"


@pytest.fixture(autouse=True)
def _project(settings, provider_settings):
    supabase_project(settings)


def _authorize(live_server, **params) -> str:
    return f"{live_server.url}/auth/v1/authorize?{urlencode(params)}"


def _fragment(url: str) -> dict[str, str]:
    return {key: values[0] for key, values in parse_qs(urlsplit(url).fragment, keep_blank_values=True).items()}


def _query(url: str) -> dict[str, str]:
    return {key: values[0] for key, values in parse_qs(urlsplit(url).query, keep_blank_values=True).items()}


def _gotrue(live_server, method: str, path: str, token: str | None = None, **kwargs) -> requests.Response:
    headers = {"apikey": ANON_KEY, **({"Authorization": f"Bearer {token}"} if token else {})}
    return requests.request(method, f"{live_server.url}/auth/v1/{path}", headers=headers, timeout=10, **kwargs)


def _walk(live_server, issuer: str, login: str, provider: str = "acme", until: str = APP, **params) -> str:
    url = _authorize(live_server, provider=provider, redirect_to=until, **params)
    return browser_walk(url, issuer=issuer, login=login, until=until)


def _events(kind: str, user_id) -> list[AuditEvent]:
    audit.flush()  # the tests' audit buffer is flushed by hand
    return list(AuditEvent.objects.filter(kind=kind, user_id=user_id))


def _challenge(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


# --- implicit and PKCE ----------------------------------------------------------------------


def test_a_new_user_signs_in_with_the_provider_and_lands_with_a_session(live_server, provider_settings):
    landed = _walk(live_server, provider_settings.issuer, "new-walker@example.com")
    assert landed.startswith(APP + "#")
    session = _fragment(landed)
    assert session["token_type"] == "bearer" and session["refresh_token"] and session["provider_token"]
    assert int(session["expires_in"]) > 0 and int(session["expires_at"]) > 0
    me = _gotrue(live_server, "GET", "user", session["access_token"]).json()
    assert me["email"] == "new-walker@example.com"
    assert me["app_metadata"]["provider"] == "acme" and me["app_metadata"]["providers"] == ["acme"]
    assert [identity["provider"] for identity in me["identities"]] == ["acme"]
    assert me["identities"][0]["identity_data"]["email_verified"] is True
    user = User.objects.get(email="new-walker@example.com")
    assert not user.has_usable_password() and user.email_confirmed_at is not None
    [login] = _events(AuditEvent.Kind.LOGIN_SUCCESS, user.pk)
    assert login.detail["method"] == "oauth" and login.detail["provider"] == "acme"
    assert len(_events(AuditEvent.Kind.IDENTITY_LINKED, user.pk)) == 1


def test_a_returning_user_reaches_the_same_account_without_a_second_identity(live_server, provider_settings):
    first = _fragment(_walk(live_server, provider_settings.issuer, "returning@example.com"))
    second = _fragment(_walk(live_server, provider_settings.issuer, "returning@example.com"))
    one = _gotrue(live_server, "GET", "user", first["access_token"]).json()
    two = _gotrue(live_server, "GET", "user", second["access_token"]).json()
    assert one["id"] == two["id"]
    assert Identity.objects.filter(provider="acme", provider_id="returning@example.com").count() == 1
    assert User.objects.filter(email="returning@example.com").count() == 1


def test_the_pkce_flow_lands_with_a_code_exchanged_once_for_a_session(live_server, provider_settings):
    verifier = "pkce-verifier-" + "x" * 40
    landed = _walk(
        live_server,
        provider_settings.issuer,
        "pkce-walker@example.com",
        code_challenge=_challenge(verifier),
        code_challenge_method="s256",
    )
    assert "#" not in landed
    code = _query(landed)["code"]
    wrong = _gotrue(live_server, "POST", "token?grant_type=pkce", json={"auth_code": code, "code_verifier": "y" * 50})
    assert (wrong.status_code, wrong.json()["error_code"]) == (400, "bad_code_verifier")
    exchanged = _gotrue(
        live_server, "POST", "token?grant_type=pkce", json={"auth_code": code, "code_verifier": verifier}
    )
    assert exchanged.status_code == 200, exchanged.content
    assert exchanged.json()["user"]["email"] == "pkce-walker@example.com"
    again = _gotrue(live_server, "POST", "token?grant_type=pkce", json={"auth_code": code, "code_verifier": verifier})
    assert (again.status_code, again.json()["error_code"]) == (404, "flow_state_not_found")


def test_the_github_flow_maps_the_api_user_and_its_primary_verified_email(live_server, provider_settings):
    session = _fragment(_walk(live_server, provider_settings.issuer, "octo-cat@example.com", provider="github"))
    me = _gotrue(live_server, "GET", "user", session["access_token"]).json()
    assert me["email"] == "octo-cat@example.com" and me["app_metadata"]["provider"] == "github"
    identity = me["identities"][0]
    assert identity["provider"] == "github" and identity["id"].isdigit()  # GitHub's numeric user id
    assert identity["identity_data"]["user_name"] == "octo-cat" and identity["identity_data"]["email_verified"]


# --- linking ------------------------------------------------------------------------------------


def test_a_verified_provider_email_links_to_the_existing_password_account(live_server, provider_settings):
    owner = UserFactory(email="linked-owner@example.com")
    session = _fragment(_walk(live_server, provider_settings.issuer, "linked-owner@example.com"))
    me = _gotrue(live_server, "GET", "user", session["access_token"]).json()
    assert me["id"] == str(owner.pk)
    assert sorted(identity["provider"] for identity in me["identities"]) == ["acme", "email"]
    assert me["app_metadata"]["providers"] == ["email", "acme"]
    password = _gotrue(
        live_server, "POST", "token?grant_type=password", json={"email": owner.email, "password": DEFAULT_PASSWORD}
    )
    assert password.status_code == 200  # the password still signs in
    [linked] = _events(AuditEvent.Kind.IDENTITY_LINKED, owner.pk)
    assert linked.detail["link"] == "verified_email" and linked.detail["provider"] == "acme"


def test_an_unverified_provider_email_taken_by_an_account_is_refused_not_linked(live_server, provider_settings):
    UserFactory(email="victim+unverified@example.com")
    landed = _walk(live_server, provider_settings.issuer, "victim+unverified@example.com")
    error = _query(landed)
    # As GoTrue's redirectErrors: a 422 has no OAuth error of its own, so "server_error".
    assert error["error_code"] == "email_exists" and error["error"] == "server_error"
    assert _fragment(landed)["error_code"] == "email_exists"
    assert not Identity.objects.exists()


def test_an_unverified_provider_email_that_is_free_makes_an_unconfirmed_account(live_server, provider_settings):
    session = _fragment(_walk(live_server, provider_settings.issuer, "fresh+unverified@example.com"))
    assert session["access_token"]
    assert User.objects.get(email="fresh+unverified@example.com").email_confirmed_at is None


def test_link_identity_adds_the_provider_to_the_signed_in_user(live_server, provider_settings):
    owner = UserFactory(email="manual-link@example.com")
    token = _gotrue(
        live_server, "POST", "token?grant_type=password", json={"email": owner.email, "password": DEFAULT_PASSWORD}
    ).json()["access_token"]
    query = urlencode({"provider": "acme", "redirect_to": APP, "skip_http_redirect": "true"})
    answer = _gotrue(live_server, "GET", f"user/identities/authorize?{query}", token)
    assert answer.status_code == 200 and answer.json()["url"].startswith(provider_settings.issuer)
    # Another address at the provider: linking does not need a matching email.
    landed = browser_walk(
        answer.json()["url"], issuer=provider_settings.issuer, login="other-me@example.com", until=APP
    )
    assert _fragment(landed)["access_token"]
    identity = Identity.objects.get(user=owner)
    assert identity.provider_id == "other-me@example.com"
    assert _events(AuditEvent.Kind.IDENTITY_LINKED, owner.pk)[0].detail["link"] == "manual"
    # The same identity again: already linked.
    again = _gotrue(live_server, "GET", f"user/identities/authorize?{query}", token).json()["url"]
    refused = browser_walk(again, issuer=provider_settings.issuer, login="other-me@example.com", until=APP)
    assert _query(refused)["error_code"] == "identity_already_exists"


# --- unlinking ---------------------------------------------------------------------------------


def test_the_last_identity_cannot_be_unlinked(live_server, provider_settings):
    session = _fragment(_walk(live_server, provider_settings.issuer, "only-one@example.com"))
    me = _gotrue(live_server, "GET", "user", session["access_token"]).json()
    refused = _gotrue(
        live_server, "DELETE", f"user/identities/{me['identities'][0]['identity_id']}", session["access_token"]
    )
    assert (refused.status_code, refused.json()["error_code"]) == (422, "single_identity_not_deletable")


def test_unlinking_the_provider_leaves_password_sign_in(live_server, provider_settings):
    owner = UserFactory(email="unlinker@example.com")
    session = _fragment(_walk(live_server, provider_settings.issuer, "unlinker@example.com"))
    me = _gotrue(live_server, "GET", "user", session["access_token"]).json()
    acme = next(identity for identity in me["identities"] if identity["provider"] == "acme")
    done = _gotrue(live_server, "DELETE", f"user/identities/{acme['identity_id']}", session["access_token"])
    assert done.status_code == 200 and done.json() == {}
    after = _gotrue(live_server, "GET", "user", session["access_token"]).json()
    assert [identity["provider"] for identity in after["identities"]] == ["email"]
    assert after["app_metadata"]["providers"] == ["email"]
    password = _gotrue(
        live_server, "POST", "token?grant_type=password", json={"email": owner.email, "password": DEFAULT_PASSWORD}
    )
    assert password.status_code == 200
    email = after["identities"][0]["identity_id"]
    last = _gotrue(live_server, "DELETE", f"user/identities/{email}", session["access_token"])
    assert last.json()["error_code"] == "single_identity_not_deletable"
    assert len(_events(AuditEvent.Kind.IDENTITY_UNLINKED, owner.pk)) == 1


# --- signInWithIdToken ------------------------------------------------------------------------


def test_sign_in_with_a_provider_issued_id_token_and_its_hashed_nonce(live_server, provider_settings):
    raw_nonce = "raw-nonce-for-the-app"
    token = provider_id_token(
        provider_settings, login="id-token@example.com", nonce=hashlib.sha256(raw_nonce.encode()).hexdigest()
    )
    body = {"provider": "acme", "id_token": token["id_token"], "access_token": token["access_token"]}
    wrong = _gotrue(live_server, "POST", "token?grant_type=id_token", json={**body, "nonce": "another"})
    assert wrong.status_code == 400
    missing = _gotrue(live_server, "POST", "token?grant_type=id_token", json=body)
    assert missing.status_code == 400
    signed_in = _gotrue(live_server, "POST", "token?grant_type=id_token", json={**body, "nonce": raw_nonce})
    assert signed_in.status_code == 200, signed_in.content
    assert signed_in.json()["user"]["email"] == "id-token@example.com"
    assert signed_in.json()["user"]["identities"][0]["provider"] == "acme"
    tampered = token["id_token"][:-4] + ("AAAA" if not token["id_token"].endswith("AAAA") else "BBBB")
    forged = _gotrue(
        live_server, "POST", "token?grant_type=id_token", json={**body, "id_token": tampered, "nonce": raw_nonce}
    )
    assert forged.status_code == 400
    unknown = _gotrue(live_server, "POST", "token?grant_type=id_token", json={**body, "provider": "nope"})
    assert (unknown.status_code, unknown.json()["error_code"]) == (400, "validation_failed")


# --- refusals -------------------------------------------------------------------------------------


def test_a_tampered_or_replayed_state_is_refused(live_server, provider_settings):
    tampered = requests.get(
        f"{live_server.url}/auth/v1/callback?code=abc&state=forged", allow_redirects=False, timeout=10
    )
    assert tampered.status_code == 302
    assert _query(tampered.headers["Location"])["error_code"] == "bad_oauth_state"
    assert tampered.headers["Location"].startswith(live_server.url)  # no flow: the site URL


def test_an_open_redirect_is_refused_and_the_site_url_used_instead(live_server, provider_settings, settings):
    settings.GOTRUE_SITE_URL = "https://site.example.org"
    url = _authorize(live_server, provider="acme", redirect_to="https://evil.example.net/steal")
    landed = browser_walk(
        url, issuer=provider_settings.issuer, login="redirected@example.com", until="https://site.example.org"
    )
    assert _fragment(landed)["access_token"]
    assert User.objects.filter(email="redirected@example.com").exists()


def test_an_unknown_provider_is_validation_failed(live_server, provider_settings):
    answer = requests.get(_authorize(live_server, provider="nope", redirect_to=APP), allow_redirects=False, timeout=10)
    assert (answer.status_code, answer.json()["error_code"]) == (400, "validation_failed")


def test_settings_list_the_configured_providers(live_server, provider_settings):
    external = _gotrue(live_server, "GET", "settings").json()["external"]
    assert external["acme"] is True and external["github"] is True and external["google"] is True
    assert external["email"] is True and external["apple"] is False
