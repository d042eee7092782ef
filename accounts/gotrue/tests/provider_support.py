"""A real OpenID Connect provider for the tests, and a browser that signs in there.

`oidc_provider` (session-scoped) starts accounts/gotrue/tests/oidc/server.mjs (the
certified `oidc-provider` package under node, installed by scripts/test.sh's
ensure_node_deps) on a free loopback port, waits for its discovery document, and
stops it at the end. Velro's client is registered there with the live server's
/auth/v1/callback as redirect URI. Accounts: the login typed on its page is the
account (server.mjs: email = the login, verified unless it contains "+unverified").

`provider_settings` points Velro at it as three providers: "acme" (OIDC_PROVIDERS),
"google" (the same issuer through GOTRUE_EXTERNAL_GOOGLE_URL's path) and "github"
(GitHub's OAuth2 routes and /api/user, /api/user/emails served by the same node
process for the access tokens it issued).
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from accounts import external
from accounts.tests.support import chromium_launch

OIDC_DIR = Path(__file__).resolve().parent / "oidc"
CLIENT_ID = "velro-test-client"
CLIENT_SECRET = "velro-test-client-secret-0123456789abcdef"
PASSWORD = "any password"  # devInteractions accepts any
# Where provider_id_token's own code flow is sent back: a closed loopback port (the
# browser stops there with the code in its URL; Velro's /callback never sees it).
TEST_REDIRECT = "http://127.0.0.1:9/id-token-callback"


@dataclass(frozen=True)
class OidcProvider:
    issuer: str
    callback: str

    def providers(self) -> dict[str, dict]:
        oidc = {
            "kind": "oidc",
            "issuer": self.issuer,
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "scopes": ["openid", "email", "profile"],
            "redirect_uri": self.callback,
        }
        github = {
            "kind": "github",
            "url": self.issuer,
            "api_url": f"{self.issuer}/api",
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "scopes": ["read:user", "user:email"],
            "redirect_uri": self.callback,
        }
        return {"acme": oidc, "google": oidc, "github": github}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def oidc_provider(live_server):
    node = shutil.which("node")
    if node is None or not (OIDC_DIR / "node_modules" / "oidc-provider").is_dir():
        pytest.fail(f"node and {OIDC_DIR}/node_modules are needed: scripts/test.sh runs ensure_node_deps {OIDC_DIR}")
    port = _free_port()
    callback = f"{live_server.url}/auth/v1/callback"
    config = {
        "port": port,
        "clients": [
            {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "redirect_uris": [callback, TEST_REDIRECT]}
        ],
    }
    process = subprocess.Popen(
        [node, "server.mjs"],
        cwd=OIDC_DIR,
        env={"PATH": "/usr/bin:/bin", "OIDC_TEST_CONFIG": json.dumps(config)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    issuer = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            if requests.get(f"{issuer}/.well-known/openid-configuration", timeout=1).ok:
                break
        except requests.RequestException:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"oidc-provider did not start: {process.communicate()[1]}")
        time.sleep(0.1)
    try:
        yield OidcProvider(issuer=issuer, callback=callback)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.fixture
def provider_settings(settings, oidc_provider, live_server):
    settings.EXTERNAL_PROVIDERS = oidc_provider.providers()
    settings.GOTRUE_SITE_URL = live_server.url
    settings.GOTRUE_URI_ALLOW_LIST = ["https://app.example.com/**"]
    external.cache_clear()
    return oidc_provider


# --- the browser -------------------------------------------------------------------------


def _sign_in_at_provider(page: Any, issuer: str, login: str) -> None:
    """The provider's devInteractions pages: the login form, then consent."""
    page.wait_for_selector("input[name=login]")
    page.fill("input[name=login]", login)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_load_state()
    if page.url.startswith(issuer) and page.locator("button[type=submit]").count():
        page.click("button[type=submit]")  # consent: Continue


def browser_walk(url: str, *, issuer: str, login: str, until: str, sign_in: bool = True) -> str:
    """A fresh headless Chromium opens `url` (Velro's /authorize, or a provider URL), signs in
    at the provider as `login` (unless sign_in=False: an already-failed flow), and stops at the
    first navigation to a URL starting with `until`, which it answers itself with an empty
    page (the app's redirect target). Returns that URL, fragment included."""
    from playwright.sync_api import sync_playwright

    landed: list[str] = []

    def _land(route: Any) -> None:
        landed.append(route.request.url)
        route.fulfill(status=200, content_type="text/html", body="<html><body>app</body></html>")

    with sync_playwright() as pw:
        browser = chromium_launch(pw)
        try:
            page = browser.new_context().new_page()
            page.set_default_timeout(15_000)
            page.route(lambda target: target.startswith(until), _land)
            page.goto(url)
            if sign_in and not landed:
                _sign_in_at_provider(page, issuer, login)
            try:
                page.wait_for_url(lambda target: target.startswith(until))
            except Exception as exc:
                pytest.fail(f"the browser stopped at {page.url}, not {until}: {exc}\n{page.content()[:2000]}")
            final = page.url
        finally:
            browser.close()
    # The route sees the request without the fragment; the page's URL keeps it.
    return final if "#" in final or not landed else landed[-1] + final[len(landed[-1]) :]


def provider_id_token(oidc_provider: OidcProvider, *, login: str, nonce: str | None) -> dict:
    """An ID token the provider issues to Velro's client: an authorization code flow the
    test drives itself (authlib builds the request, the browser signs in, the code is
    caught on its way to the redirect URI and exchanged here). Returns the token response."""
    from authlib.integrations.requests_client import OAuth2Session

    session = OAuth2Session(
        CLIENT_ID,
        CLIENT_SECRET,
        scope="openid email profile",
        redirect_uri=TEST_REDIRECT,
        code_challenge_method="S256",
    )
    document = requests.get(f"{oidc_provider.issuer}/.well-known/openid-configuration", timeout=5).json()
    verifier = "v" * 64
    extra = {"nonce": nonce} if nonce else {}
    url, _ = session.create_authorization_url(document["authorization_endpoint"], code_verifier=verifier, **extra)
    landed = browser_walk(url, issuer=oidc_provider.issuer, login=login, until=TEST_REDIRECT)
    return session.fetch_token(document["token_endpoint"], authorization_response=landed, code_verifier=verifier)
