"""Helpers the account tests share (one copy, not one per file)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import secrets
import shutil
import subprocess
import time
from datetime import UTC, datetime
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


def text_of(message: Message) -> str:
    """An email's text/plain part."""
    return _text(message)


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


# --- TOTP second factors -------------------------------------------------------------------


def totp_code(secret: str, *, steps: int = 0) -> str:
    """The code of `secret` now (`steps` away: -1 the previous 30-second step)."""
    import pyotp  # the server's own library: codes as an authenticator app computes them

    totp = pyotp.TOTP(secret)
    return totp.generate_otp(totp.timecode(datetime.now(UTC)) + steps)


# --- second factors --------------------------------------------------------------------------


def session_of(access_token: str):  # -> uuid.UUID
    """The session id an access token (either surface's) names, read without verifying it."""
    import uuid

    claims = jwt.decode(access_token, options={"verify_signature": False})
    return uuid.UUID(claims.get("session_id") or claims["sid"])  # GoTrue's claim, or the native one


def aal2(access_token: str) -> None:
    """Raise the token's session to aal2 (as a verified second factor would)."""
    from accounts import mfa
    from accounts.models import Session

    session = Session.objects.select_related("user").get(pk=session_of(access_token))
    mfa.session_elevate(user=session.user, session_id=session.pk, method="totp")


# --- WebAuthn: a software authenticator ---------------------------------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_bytes(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


WEBAUTHN_ORIGIN = "http://localhost:8000"  # the tests' WEBAUTHN_ORIGINS (webauthn_rp below)
FLAG_UP, FLAG_UV, FLAG_AT = 0x01, 0x04, 0x40


def webauthn_rp(settings: Any, *, origin: str = WEBAUTHN_ORIGIN) -> None:
    """The relying party of the passkey tests: localhost and `origin`."""
    settings.WEBAUTHN_RP_ID = "localhost"
    settings.WEBAUTHN_ORIGINS = [origin]


class SoftAuthenticator:
    """A platform authenticator in software, as the tests' browser: one P-256
    discoverable credential, attestation "none", authenticatorData,
    clientDataJSON and ES256 signatures built byte for byte as a real one does
    (WebAuthn Level 2, 6.1 and 6.5). create()/get() take the server's options
    (WebAuthn's JSON form) and return the credential as
    PublicKeyCredential.toJSON() serializes it. Keyword overrides make it
    misbehave: another origin or RP id, no user verification, a chosen counter."""

    AAGUID = bytes(16)  # attestation "none": zeros

    def __init__(self, *, origin: str = WEBAUTHN_ORIGIN) -> None:
        from cryptography.hazmat.primitives.asymmetric import ec

        self.origin = origin
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.credential_id = secrets.token_bytes(32)
        self.sign_count = 0
        self.user_handle: bytes | None = None
        self.rp_id: str | None = None

    def _cose_key(self) -> bytes:
        import cbor2

        numbers = self.key.public_key().public_numbers()
        return cbor2.dumps({1: 2, 3: -7, -1: 1, -2: numbers.x.to_bytes(32, "big"), -3: numbers.y.to_bytes(32, "big")})

    def _client_data(self, kind: str, challenge: str, origin: str | None) -> bytes:
        data = {"type": kind, "challenge": challenge, "origin": origin or self.origin, "crossOrigin": False}
        return json.dumps(data, separators=(",", ":")).encode()

    @staticmethod
    def _flags(*, uv: bool, attested: bool = False) -> int:
        return FLAG_UP | (FLAG_UV if uv else 0) | (FLAG_AT if attested else 0)

    def create(self, options: dict, *, origin: str | None = None, rp_id: str | None = None, uv: bool = True) -> dict:
        """navigator.credentials.create({publicKey: options}), serialized."""
        import cbor2

        self.rp_id = options["rp"]["id"]
        self.user_handle = b64url_bytes(options["user"]["id"])
        rp_hash = hashlib.sha256((rp_id or self.rp_id).encode()).digest()
        attested = self.AAGUID + len(self.credential_id).to_bytes(2, "big") + self.credential_id + self._cose_key()
        auth_data = rp_hash + bytes([self._flags(uv=uv, attested=True)]) + self.sign_count.to_bytes(4, "big") + attested
        attestation = cbor2.dumps({"fmt": "none", "attStmt": {}, "authData": auth_data})
        client_data = self._client_data("webauthn.create", options["challenge"], origin)
        return {
            "id": b64url(self.credential_id),
            "rawId": b64url(self.credential_id),
            "response": {
                "clientDataJSON": b64url(client_data),
                "attestationObject": b64url(attestation),
                "transports": ["internal"],
            },
            "type": "public-key",
            "clientExtensionResults": {},
            "authenticatorAttachment": "platform",
        }

    def get(
        self,
        options: dict,
        *,
        origin: str | None = None,
        rp_id: str | None = None,
        uv: bool = True,
        sign_count: int | None = None,
        user_handle: bool = True,
    ) -> dict:
        """navigator.credentials.get({publicKey: options}), serialized; the counter moves on by one
        (or is `sign_count`)."""
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec

        self.sign_count = self.sign_count + 1 if sign_count is None else sign_count
        rp_hash = hashlib.sha256((rp_id or options.get("rpId") or self.rp_id or "").encode()).digest()
        auth_data = rp_hash + bytes([self._flags(uv=uv)]) + self.sign_count.to_bytes(4, "big")
        client_data = self._client_data("webauthn.get", options["challenge"], origin)
        signature = self.key.sign(auth_data + hashlib.sha256(client_data).digest(), ec.ECDSA(hashes.SHA256()))
        response = {
            "clientDataJSON": b64url(client_data),
            "authenticatorData": b64url(auth_data),
            "signature": b64url(signature),
        }
        if user_handle and self.user_handle is not None:
            response["userHandle"] = b64url(self.user_handle)
        return {
            "id": b64url(self.credential_id),
            "rawId": b64url(self.credential_id),
            "response": response,
            "type": "public-key",
            "clientExtensionResults": {},
            "authenticatorAttachment": "platform",
        }


NATIVE_PASSKEYS = "/api/v1/auth/passkeys"
GOTRUE_PASSKEYS = "/auth/v1/passkeys"


def passkey_register(client: APIClient, authenticator: SoftAuthenticator, *, base: str = NATIVE_PASSKEYS) -> Any:
    """Registration options -> the authenticator -> registration verify, with `client`'s
    credentials; the verify response."""
    options = client.post(f"{base}/registration/options", {}, format="json")
    assert options.status_code == 200, options.content
    body = options.json()
    credential = authenticator.create(body["options"])
    return client.post(
        f"{base}/registration/verify", {"challenge_id": body["challenge_id"], "credential": credential}, format="json"
    )


def passkey_assert(
    client: APIClient, authenticator: SoftAuthenticator, *, base: str = NATIVE_PASSKEYS, mfa: bool = False, **get: Any
) -> Any:
    """Authentication options -> the authenticator (`get` overrides) -> verify: a sign-in, or
    with `mfa` the second-factor routes (`client` carrying the session's bearer)."""
    step = "mfa" if mfa else "authentication"
    options = client.post(f"{base}/{step}/options", {}, format="json")
    assert options.status_code == 200, options.content
    body = options.json()
    credential = authenticator.get(body["options"], **get)
    return client.post(
        f"{base}/{step}/verify", {"challenge_id": body["challenge_id"], "credential": credential}, format="json"
    )


# --- a real browser: Debian's Chromium driven by Playwright ------------------------------------

BASE_DIR = Path(__file__).resolve().parents[2]
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
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def chromium_or_skip() -> Path:
    """The Chromium binary; tries scripts/services.sh ensure_chromium once if it is missing."""
    if CHROMIUM.exists():
        return CHROMIUM
    try:
        result = subprocess.run(
            ["bash", "-c", "source scripts/services.sh && ensure_chromium"],
            cwd=BASE_DIR,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        output = (result.stdout + result.stderr).strip()
    except (OSError, subprocess.TimeoutExpired) as exc:
        output = repr(exc)
    if not CHROMIUM.exists():
        tail = " | ".join(output.splitlines()[-3:])
        pytest.skip(f"Chromium not installed: apt-get install chromium failed ({CHROMIUM} missing; {tail})")
    return CHROMIUM


def sync_playwright_or_skip() -> Any:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright not installed: pip install -r requirements-dev.txt (playwright==1.65.2)")
    return sync_playwright


def chromium_launch(playwright: Any, chromium_path: Path | None = None) -> Any:
    """A headless Chromium of `playwright` (its sync API), Debian's binary (by default
    the one chromium_or_skip finds: the test skips, saying why, when there is none)."""
    path = chromium_path or chromium_or_skip()
    return playwright.chromium.launch(executable_path=str(path), headless=True, args=CHROMIUM_ARGS)


def artifacts_dir(name: str) -> Path:
    """test-artifacts/<name>/, emptied of the screenshots of an earlier run."""
    path = BASE_DIR / "test-artifacts" / name
    path.mkdir(parents=True, exist_ok=True)
    for old in path.glob("*.png"):
        old.unlink()
    return path
