"""GoTrue's admin API through the official JavaScript client, @supabase/auth-js (js/run.mjs
scenario `admin`, run under node): what server code on Node calls with the service-role key.
test_admin_api.py covers each call in depth with the Python client."""

from __future__ import annotations

import pytest

from accounts.models import User
from accounts.tests.factories import UserFactory
from accounts.tests.support import ANON_KEY, STRONG, run_authjs, supabase_project
from accounts.tests.support import SERVICE_ROLE_KEY as SERVICE_KEY

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


@pytest.fixture(autouse=True)
def _supabase_settings(settings):
    supabase_project(settings, service_role=True)


def test_auth_js_admin_calls_run_a_users_whole_life_with_the_service_role_key(live_server):
    UserFactory.create_batch(2)  # older users: the new one is first on page 1
    result = run_authjs(
        "admin",
        url=f"{live_server.url}/auth/v1",
        apikey=SERVICE_KEY,
        anonKey=ANON_KEY,
        email="js-admin@example.com",
        password=STRONG,
        perPage=1,
    )
    created = result["create"]
    assert created["error"] is None
    user_id = created["user"]["id"]
    assert created["user"]["email_confirmed_at"] is not None
    assert created["user"]["user_metadata"] == {"full_name": "Ada Lovelace"}
    assert created["user"]["app_metadata"]["plan"] == "pro"
    # listUsers reads the pagination from GoTrue's Link and X-Total-Count headers.
    assert result["list"] == {
        "ids": [user_id],
        "aud": "authenticated",
        "nextPage": 2,
        "lastPage": 3,
        "total": 3,
        "error": None,
    }
    assert result["get"]["user"]["id"] == user_id
    assert result["update"]["user"]["user_metadata"] == {"full_name": "Ada Lovelace", "theme": "dark"}
    assert result["signOut"]["error"] is None
    # The signed-out token is refused (session_not_found, which auth-js reports as a missing session).
    assert result["afterSignOut"]["error"]["name"] == "AuthSessionMissingError"
    assert ("POST", 204) in [
        (r["method"], r["status"]) for r in result["requests"] if r["path"].startswith("/auth/v1/logout")
    ]
    assert result["ban"]["error"] is None and result["ban"]["banned_until"]
    banned = result["bannedSignIn"]["error"]
    assert (banned["status"], banned["code"]) == (400, "user_banned")
    assert result["unban"]["error"] is None
    assert result["signInAfterUnban"]["error"] is None
    assert result["delete"]["error"] is None
    gone = result["afterDelete"]["error"]
    assert (gone["status"], gone["code"]) == (404, "user_not_found")
    not_admin = result["anonKey"]["error"]
    assert (not_admin["status"], not_admin["code"]) == (403, "not_admin")
    assert not User.objects.filter(pk=user_id).exists()
