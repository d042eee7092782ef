"""Helpers the account tests share (one copy, not one per file)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from email.message import Message
from pathlib import Path
from typing import Any

import jwt
import pytest
from rest_framework.test import APIClient

from accounts import signing, tokens
from accounts.tests.factories import DEFAULT_PASSWORD

LOGIN = "/api/v1/auth/login"

# The Supabase project of the GoTrue-surface tests (supabase_project below).
PROJECT_JWT_SECRET = "supabase-project-jwt-secret-" + "p" * 20
ANON_KEY = "anon-key-" + "a" * 30
SERVICE_ROLE_KEY = "service-role-key-" + "s" * 30
STRONG = "violet tractor umbrella 42"  # passwords the validators accept
STRONGER = "marble penguin orchestra 97"


def supabase_project(settings: Any, *, service_role: bool = False) -> None:
    """A GoTrue-surface test's project: its JWT secret and anon key (and
    service-role key), rate limits off (live_server's clients all come from
    127.0.0.1; tests about a limit turn it back on)."""
    settings.SUPABASE_JWT_SECRET = PROJECT_JWT_SECRET
    settings.SUPABASE_ANON_KEY = ANON_KEY
    if service_role:
        settings.SUPABASE_SERVICE_ROLE_KEY = SERVICE_ROLE_KEY
    settings.RATELIMIT_ENABLE = False


def bearer(access_token: str) -> APIClient:
    """An APIClient sending `Authorization: Bearer <access_token>`."""
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {access_token}")
    return client


def api_login(email: str, password: str = DEFAULT_PASSWORD) -> dict:
    """POST /login through the API; the token body (asserts it succeeded)."""
    response = APIClient().post(LOGIN, {"email": email, "password": password}, format="json")
    assert response.status_code == 200, response.content
    return response.json()


class Clock:
    """A hand-driven clock (monotonic seconds)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --- one-time codes and links, read from the emails the real SMTP listener received -------

_CODE = re.compile(r"Your code: (\d{6,10})")
_LINK = re.compile(r"(https?://\S+/auth/v1/verify\?\S+)")


def _text(message: Message) -> str:
    for part in message.walk():
        if part.get_content_type() == "text/plain":
            return part.get_payload(decode=True).decode()
    return ""


def mail_to(smtp_server, address: str, *, count: int = 1, timeout: float = 15.0) -> Message:
    """The `count`-th email with a one-time code to `address` (waits for it, bounded;
    other emails, a welcome, are skipped)."""
    deadline = time.monotonic() + timeout
    while True:
        messages = [message for message in smtp_server.to(address) if _CODE.search(_text(message))]
        if len(messages) >= count:
            return messages[count - 1]
        if time.monotonic() >= deadline:
            raise AssertionError(f"no email #{count} to {address} within {timeout} s: {len(messages)} received")
        time.sleep(0.02)


def code_in(message: Message) -> str:
    match = _CODE.search(_text(message))
    assert match, _text(message)
    return match.group(1)


def link_in(message: Message) -> str:
    match = _LINK.search(_text(message))
    assert match, _text(message)
    return match.group(1)


def last_code_to(smtp_server, address: str, *, count: int = 1) -> str:
    """The code in the `count`-th email to `address`."""
    return code_in(mail_to(smtp_server, address, count=count))


def last_link_to(smtp_server, address: str, *, count: int = 1) -> str:
    """The link in the `count`-th email to `address`."""
    return link_in(mail_to(smtp_server, address, count=count))


def gotrue_client(
    url: str,
    *,
    apikey: str | None = ANON_KEY,
    bearer: str | None = None,
    headers: dict[str, str] | None = None,
    **options: Any,
):  # -> SyncGoTrueClient
    """The official Supabase Auth Python client against a live server (`url`:
    live_server.url), sending `apikey` (None: none) and `Authorization: Bearer
    <bearer>` (as supabase-py's server client does with the service-role key)
    and `headers`; `options` go to the client. No auto-refresh timer thread:
    the tests refresh by hand. Close it after use."""
    from supabase_auth import SyncGoTrueClient  # a dev dependency: imported only by the tests that use it

    sent = {} if apikey is None else {"apikey": apikey}
    if bearer is not None:
        sent["Authorization"] = f"Bearer {bearer}"
    sent.update(headers or {})
    return SyncGoTrueClient(url=f"{url}/auth/v1", headers=sent, auto_refresh_token=False, **options)


# The official @supabase/auth-js client (pinned in accounts/gotrue/tests/js/package.json,
# installed by scripts/test.sh's ensure_node_deps).
AUTHJS_DIR = Path(__file__).resolve().parent.parent / "gotrue" / "tests" / "js"
AUTHJS_TIMEOUT_SECONDS = 60


def run_authjs(scenario: str, **args: Any) -> dict:
    """Run one scenario of accounts/gotrue/tests/js/run.mjs (auth-js under node) with `args`
    as its JSON argument; its one-line JSON result. Fails the test with node's stderr when
    node is missing, the scenario throws or it runs past the timeout."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("node not found: the auth-js tests need Node.js >= 20 (./scripts/test.sh installs it)")
    if not (AUTHJS_DIR / "node_modules" / "@supabase" / "auth-js").is_dir():
        pytest.fail(f"@supabase/auth-js not installed: run `npm ci` in {AUTHJS_DIR} (./scripts/test.sh does)")
    try:
        done = subprocess.run(
            [node, "run.mjs", scenario, json.dumps(args)],
            cwd=AUTHJS_DIR,
            capture_output=True,
            text=True,
            timeout=AUTHJS_TIMEOUT_SECONDS,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"auth-js scenario {scenario} ran past {AUTHJS_TIMEOUT_SECONDS} s; stderr:\n{exc.stderr or ''}")
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        pytest.fail(f"auth-js scenario {scenario} failed (exit {done.returncode}); stderr:\n{done.stderr}")
    return json.loads(lines[-1])


def sign_token(claims: dict, *, hs256_key: bytes | str | None = None) -> str:
    """A JWT signed as the server signs access tokens now (the active key, its
    `kid` in the header); with `hs256_key`, an HS256 token without a kid, as
    signed before the asymmetric keys (the legacy secrets, or an attacker's key)."""
    if hs256_key is not None:
        return jwt.encode(claims, hs256_key, algorithm="HS256")
    return tokens.jwt_sign(claims)


def token_claims(token: str, *, audience: str) -> dict:
    """The claims of an access token of either surface, verified as a downstream
    service does: with the public key its `kid` names in the JWKS, and that
    key's algorithm only."""
    published = {jwk["kid"]: jwk for jwk in signing.keys.jwks()["keys"]}
    jwk = published[jwt.get_unverified_header(token)["kid"]]
    return jwt.decode(token, jwt.PyJWK(jwk).key, algorithms=[jwk["alg"]], audience=audience)


def signing_keys_warm() -> None:
    """Load this process's signing keys (creating the first active key): what a
    running node holds between reloads, so a query budget measures the request."""
    signing.keys.signer()


# Headless Chromium (Debian's package, driven by Python playwright; scripts/services.sh
# ensure_chromium installs it). No ORM calls while a sync playwright block runs: its
# asyncio loop on this thread trips Django's async-safety check.
CHROMIUM = Path(os.environ.get("VELRO_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_launch(playwright: Any):  # -> playwright Browser
    """Chromium under `playwright` (sync API), skipping the test when it is not installed."""
    if not CHROMIUM.exists():
        pytest.skip(f"Chromium not installed ({CHROMIUM}): source scripts/services.sh && ensure_chromium")
    return playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
