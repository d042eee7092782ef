"""Django admin in a real browser: headless Chromium (Debian's package) driven by Playwright.

One walk through the operator's day, against the live test server: log in,
find a user by email, read their mirror row, sessions and referrals, revoke a
session (and check its access token stops working), list the credited
referrals. Every page is screenshotted into test-artifacts/admin-browser/.

Skipped (with the reason) only when the playwright package is missing or no
Chromium binary exists after trying to install it (scripts/services.sh
ensure_chromium, which scripts/test.sh also runs).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from accounts.models import Session
from accounts.tests.factories import DEFAULT_PASSWORD, UserFactory
from accounts.tests.support import (
    PNG_SIGNATURE,
    artifacts_dir,
    chromium_launch,
    chromium_or_skip,
    sync_playwright_or_skip,
)
from accounts.tokens import access_token_decode
from referrals.models import ReferralStatus
from referrals.tests.factories import refer, refer_rejected

ME = "/api/v1/auth/me"
OPERATOR_EMAIL = "operator@example.com"
MEMBER_EMAIL = "browser-member@example.com"

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def sync_playwright():
    return sync_playwright_or_skip()


@pytest.fixture
def chromium_path() -> Path:
    return chromium_or_skip()


@pytest.fixture
def artifacts() -> Path:
    return artifacts_dir("admin-browser")


def _me_status(api, access_token: str) -> int:
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {access_token}")
    try:
        return api.get(ME).status_code
    finally:
        api.credentials()


def test_operator_walks_through_the_admin_in_headless_chromium(
    live_server, api, login, sync_playwright, chromium_path, artifacts
):
    UserFactory(email=OPERATOR_EMAIL, is_staff=True, is_superuser=True)
    member = UserFactory(email=MEMBER_EMAIL)
    UserFactory(email="browser-bystander@example.com")
    revoked_tokens = login(member)
    kept_tokens = login(member)
    revoked_sid = access_token_decode(revoked_tokens["access_token"]).session_id
    kept_sid = access_token_decode(kept_tokens["access_token"]).session_id
    credited = refer(member, email="friend-credited@example.com")
    rejected = refer_rejected(member, email="friend-rejected@example.com")
    assert credited.status == ReferralStatus.CREDITED
    assert rejected.status == ReferralStatus.REJECTED
    assert _me_status(api, revoked_tokens["access_token"]) == 200  # warm any cache first

    from playwright.sync_api import expect

    shots: list[Path] = []

    def shot(page, name: str) -> None:
        path = artifacts / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        shots.append(path)

    # No ORM calls inside this block: Playwright's sync API runs an asyncio
    # loop on this thread, which Django's async-safety check refuses.
    with sync_playwright() as pw:
        browser = chromium_launch(pw, chromium_path)
        context = None
        try:
            context = browser.new_context(viewport={"width": 1920, "height": 1080})
            page = context.new_page()
            page.set_default_timeout(15_000)
            expect.set_options(timeout=15_000)

            # 1. Log in as staff (the admin's username field is the email).
            page.goto(f"{live_server.url}/admin/login/?next=/admin/")
            page.fill("#id_username", OPERATOR_EMAIL)
            page.fill("#id_password", DEFAULT_PASSWORD)
            shot(page, "01-login")
            page.click("input[type=submit]")
            expect(page.locator("#user-tools")).to_contain_text(OPERATOR_EMAIL)
            shot(page, "02-index")

            # 2. Search users by email.
            page.goto(f"{live_server.url}/admin/accounts/user/")
            page.fill("#searchbar", MEMBER_EMAIL)
            page.press("#searchbar", "Enter")
            rows = page.locator("#result_list tbody tr")
            expect(rows).to_have_count(1)
            expect(rows.first).to_contain_text(MEMBER_EMAIL)
            assert "q=" in page.url
            shot(page, "03-search")

            # 3. Open the user: mirror row, sessions and referrals inlines.
            rows.first.get_by_role("link", name=MEMBER_EMAIL).click()
            expect(page.locator("#id_email")).to_have_value(MEMBER_EMAIL)
            mirror = page.locator("#profile-group")
            expect(mirror).to_contain_text(re.compile(r"public user \(mirror\)", re.I))
            expect(mirror.locator("select[name='profile-0-role']")).to_have_value("viewer")
            expect(mirror).to_contain_text(MEMBER_EMAIL)
            sessions_inline = page.locator("#auth_sessions-group")
            expect(sessions_inline).to_contain_text(str(revoked_sid))
            expect(sessions_inline).to_contain_text(str(kept_sid))
            referrals_inline = page.locator("#referrals_made-group")
            expect(referrals_inline).to_contain_text(re.compile("referrals made", re.I))
            expect(referrals_inline).to_contain_text("friend-credited@example.com")
            expect(referrals_inline).to_contain_text("friend-rejected@example.com")
            expect(referrals_inline.locator("tbody tr.has_original")).to_have_count(2)
            shot(page, "04-user")

            # 4. Revoke one of the member's sessions with the changelist action.
            page.goto(f"{live_server.url}/admin/accounts/session/")
            expect(page.locator("#result_list")).to_contain_text(MEMBER_EMAIL)
            page.check(f"input[name='_selected_action'][value='{revoked_sid}']")
            page.select_option("select[name='action']", "revoke_sessions")
            shot(page, "05-sessions-selected")
            page.click("button[name='index']")
            expect(page.locator("ul.messagelist li.success")).to_have_text("Revoked 1 session(s).")
            revoked_row = page.locator("#result_list tbody tr").filter(has_text=str(revoked_sid))
            expect(revoked_row.locator("td.field-revoked_reason")).to_have_text("admin")
            kept_row = page.locator("#result_list tbody tr").filter(has_text=str(kept_sid))
            expect(kept_row.locator("td.field-revoked_at")).to_have_text("-")
            shot(page, "06-session-revoked")

            # 5. Referrals filtered by status: only the credited one.
            page.goto(f"{live_server.url}/admin/referrals/referral/?status__exact=credited")
            referral_rows = page.locator("#result_list tbody tr")
            expect(referral_rows).to_have_count(1)
            expect(referral_rows.first).to_contain_text("friend-credited@example.com")
            expect(page.locator("#result_list")).not_to_contain_text("friend-rejected@example.com")
            shot(page, "07-referrals-credited")
        finally:
            if context is not None:
                context.close()
            browser.close()

    revoked = Session.objects.get(pk=revoked_sid)
    assert revoked.revoked_at is not None
    assert revoked.revoked_reason == "admin"
    assert Session.objects.get(pk=kept_sid).revoked_at is None
    assert _me_status(api, revoked_tokens["access_token"]) == 401
    assert _me_status(api, kept_tokens["access_token"]) == 200

    assert [p.name for p in shots] == [
        "01-login.png",
        "02-index.png",
        "03-search.png",
        "04-user.png",
        "05-sessions-selected.png",
        "06-session-revoked.png",
        "07-referrals-credited.png",
    ]
    for path in shots:
        data = path.read_bytes()
        assert len(data) > 1000, path
        assert data.startswith(PNG_SIGNATURE), path
