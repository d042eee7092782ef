"""GoTrue's passkey API through the official JavaScript client, @supabase/auth-js (js/run.mjs,
the `passkeys` block at its end, run under node): the calls that need no browser (options,
list, update, delete). The ceremonies themselves run in Chromium: test_passkeys_browser.py."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from accounts.models import Passkey
from accounts.tests.factories import DEFAULT_PASSWORD, UserFactory
from accounts.tests.support import (
    ANON_KEY,
    GOTRUE_PASSKEYS,
    SoftAuthenticator,
    passkey_assert,
    passkey_register,
    run_authjs,
    supabase_project,
    webauthn_rp,
)

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


@pytest.fixture(autouse=True)
def _project(settings):
    supabase_project(settings)
    webauthn_rp(settings)


def _gotrue(access_token: str | None = None) -> APIClient:
    client = APIClient()
    client.credentials(
        HTTP_APIKEY=ANON_KEY, **({"HTTP_AUTHORIZATION": f"Bearer {access_token}"} if access_token else {})
    )
    return client


def test_auth_js_passkey_calls_list_rename_and_delete(live_server):
    user = UserFactory(email="js-passkeys@example.com")
    key = SoftAuthenticator()
    signed_in = _gotrue().post(
        "/auth/v1/token?grant_type=password", {"email": user.email, "password": DEFAULT_PASSWORD}, format="json"
    )
    client = _gotrue(signed_in.json()["access_token"])
    assert passkey_register(client, key, base=GOTRUE_PASSKEYS).status_code == 200
    aal2 = passkey_assert(client, key, base=GOTRUE_PASSKEYS, mfa=True).json()
    passkey_id = str(Passkey.objects.get(user=user).pk)

    result = run_authjs(
        "passkeys",
        url=f"{live_server.url}/auth/v1",
        apikey=ANON_KEY,
        email=user.email,
        password=DEFAULT_PASSWORD,
        passkeyId=passkey_id,
        friendlyName="From auth-js",
        aal2Session={"access_token": aal2["access_token"], "refresh_token": aal2["refresh_token"]},
    )

    assert "passkey" in result["withoutFlag"].lower()
    # Registration options of a user who has a passkey: aal2 needed, the password session is aal1.
    assert result["registrationOptions"]["error"]["code"] == "insufficient_aal"
    assert result["registrationOptions"]["error"]["status"] == 403
    sign_in = result["authenticationOptions"]
    assert sign_in["error"] is None
    assert set(sign_in["data"]) == {"challenge_id", "options", "expires_at"}
    assert sign_in["data"]["options"]["rpId"] == "localhost"
    assert sign_in["data"]["options"].get("allowCredentials", []) == []
    [listed] = result["list"]["data"]
    assert listed["id"] == passkey_id
    assert result["update"]["error"] is None
    assert result["update"]["data"]["friendly_name"] == "From auth-js"
    assert result["updateUnknown"]["error"]["status"] == 404
    assert result["deleteAtAal1"]["error"]["code"] == "insufficient_aal"
    assert result["setSession"]["error"] is None
    assert result["deleteAtAal2"] == {"data": None, "error": None}
    assert result["listAfterDelete"] == {"data": [], "error": None}
    assert not Passkey.objects.filter(user=user).exists()
    paths = [request["path"] for request in result["requests"]]
    assert "/auth/v1/passkeys/registration/options" in paths
    assert f"/auth/v1/passkeys/{passkey_id}" in paths
