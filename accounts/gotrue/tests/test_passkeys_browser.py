"""Passkeys in a real browser: headless Chromium (Debian's package) driven by Playwright,
with Chrome's virtual WebAuthn authenticator (DevTools protocol: WebAuthn domain) standing
in for a platform authenticator with user verification.

The page is the app's own demo (GET /passkeys/demo/, accounts/demo_views.py): plain fetch
against /auth/v1 with the bodies @supabase/auth-js sends, and its credential serialization.
One walk: password sign-in, register a passkey (resident, checked with
WebAuthn.getCredentials), rename, sign out, sign in with the passkey (aal2, amr passkey),
sign out, password sign-in then the passkey as second factor (aal1 -> aal2 on the same
session), delete. Screenshots into test-artifacts/passkeys-browser/.

The page is opened at http://localhost:<port> (not 127.0.0.1): WebAuthn needs a domain as
RP id, and localhost is a secure context over plain HTTP.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest

from accounts.models import Passkey, RecoveryCode, Session
from accounts.tests.factories import DEFAULT_PASSWORD, UserFactory
from accounts.tests.support import (
    PNG_SIGNATURE,
    artifacts_dir,
    b64url_bytes,
    chromium_launch,
    chromium_or_skip,
    supabase_project,
    sync_playwright_or_skip,
    webauthn_rp,
)
from monitoring import audit
from monitoring.models import AuditEvent

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

EMAIL = "passkey-browser@example.com"
KEY_NAME = "Chromium virtual key"
VIRTUAL_AUTHENTICATOR = {
    "protocol": "ctap2",
    "transport": "internal",
    "hasResidentKey": True,
    "hasUserVerification": True,
    "isUserVerified": True,
    "automaticPresenceSimulation": True,
}


@pytest.fixture
def origin(live_server, settings) -> str:
    port = urlsplit(live_server.url).port
    url = f"http://localhost:{port}"
    supabase_project(settings)
    webauthn_rp(settings, origin=url)
    settings.PASSKEY_DEMO_PAGE = True
    return url


def test_a_passkey_is_registered_used_both_ways_and_deleted_in_chromium(origin):
    user = UserFactory(email=EMAIL)
    sync_playwright = sync_playwright_or_skip()
    chromium_path = chromium_or_skip()
    artifacts = artifacts_dir("passkeys-browser")
    shots = []
    seen: dict = {}

    from playwright.sync_api import expect

    # No ORM calls inside this block: Playwright's sync API runs an asyncio
    # loop on this thread, which Django's async-safety check refuses.
    with sync_playwright() as pw:
        browser = chromium_launch(pw, chromium_path)
        context = None
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 1000})
            page = context.new_page()
            page.set_default_timeout(15_000)
            expect.set_options(timeout=15_000)
            cdp = context.new_cdp_session(page)
            cdp.send("WebAuthn.enable")
            authenticator_id = cdp.send("WebAuthn.addVirtualAuthenticator", {"options": VIRTUAL_AUTHENTICATOR})[
                "authenticatorId"
            ]

            status, session, keys = page.locator("#status"), page.locator("#session"), page.locator("#passkeys")

            def run(step: str, shot: str) -> None:
                page.click(f"#{step}")
                expect(status).to_have_attribute("data-step", step)
                expect(status).not_to_have_attribute("data-state", "running")
                if status.get_attribute("data-state") != "ok":
                    raise AssertionError(f"{step}: {page.locator('#error').text_content()}")
                path = artifacts / f"{shot}.png"
                page.screenshot(path=str(path), full_page=True)
                shots.append(path)

            page.goto(f"{origin}/passkeys/demo/")
            expect(status).to_have_attribute("data-ready", "true")
            page.fill("#email", EMAIL)
            page.fill("#password", DEFAULT_PASSWORD)

            # 1. Password sign-in: aal1.
            run("sign-in-password", "01-password-sign-in")
            expect(session).to_have_attribute("data-aal", "aal1")

            # 2. Register: the first second factor brings the recovery codes.
            run("register", "02-registered")
            expect(keys).to_have_attribute("data-count", "1")
            expect(page.locator("#recovery-codes")).to_have_attribute("data-count", "10")
            credentials = cdp.send("WebAuthn.getCredentials", {"authenticatorId": authenticator_id})["credentials"]
            seen["credentials"] = credentials

            # 3. Rename.
            page.fill("#friendly-name", KEY_NAME)
            run("rename", "03-renamed")
            expect(keys.locator("li").first).to_have_attribute("data-name", KEY_NAME)

            # 4. Sign out, then sign in with the passkey: aal2, amr passkey.
            run("sign-out", "04-signed-out")
            expect(session).to_have_attribute("data-signed-in", "false")
            run("sign-in-passkey", "05-passkey-sign-in")
            expect(session).to_have_attribute("data-aal", "aal2")
            expect(session).to_have_attribute("data-amr", "passkey")
            seen["passkey_session"] = session.get_attribute("data-session-id")

            # 5. Password sign-in, then the passkey as second factor: the same session, aal2.
            run("sign-out", "06-signed-out-again")
            run("sign-in-password", "07-password-again")
            expect(session).to_have_attribute("data-aal", "aal1")
            seen["mfa_session"] = session.get_attribute("data-session-id")
            run("second-factor", "08-second-factor")
            expect(session).to_have_attribute("data-aal", "aal2")
            # The token lists the newest method first, as GoTrue.
            expect(session).to_have_attribute("data-amr", "passkey,password")
            expect(session).to_have_attribute("data-session-id", seen["mfa_session"])

            # 6. Delete (the session is aal2 now).
            run("list", "09-listed")
            run("delete", "10-deleted")
            expect(keys).to_have_attribute("data-count", "0")
            seen["after_delete"] = cdp.send("WebAuthn.getCredentials", {"authenticatorId": authenticator_id})[
                "credentials"
            ]
        finally:
            if context is not None:
                context.close()
            browser.close()

    [credential] = seen["credentials"]
    assert credential["isResidentCredential"] is True
    assert credential["rpId"] == "localhost"
    assert (
        b64url_bytes(credential["userHandle"].replace("+", "-").replace("/", "_").rstrip("=")) == str(user.pk).encode()
    )
    assert credential["signCount"] >= 1

    passkey_session = Session.objects.get(pk=seen["passkey_session"])
    assert passkey_session.aal == "aal2"
    assert [entry["method"] for entry in passkey_session.amr] == ["passkey"]
    mfa_session = Session.objects.get(pk=seen["mfa_session"])
    assert mfa_session.aal == "aal2"
    assert [entry["method"] for entry in mfa_session.amr] == ["password", "passkey"]
    assert not Passkey.objects.filter(user=user).exists()
    assert not RecoveryCode.objects.filter(user=user).exists()  # the last second factor is gone
    audit.flush()
    kinds = set(AuditEvent.objects.filter(user_id=user.pk).values_list("kind", flat=True))
    assert {
        AuditEvent.Kind.PASSKEY_REGISTERED,
        AuditEvent.Kind.PASSKEY_UPDATED,
        AuditEvent.Kind.PASSKEY_DELETED,
        AuditEvent.Kind.MFA_FACTOR_VERIFIED,
    } <= kinds
    assert AuditEvent.objects.filter(
        user_id=user.pk, kind=AuditEvent.Kind.LOGIN_SUCCESS, detail__method="passkey"
    ).exists()

    assert len(shots) == 10
    for path in shots:
        data = path.read_bytes()
        assert len(data) > 1000, path
        assert data.startswith(PNG_SIGNATURE), path
