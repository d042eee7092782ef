"""Helpers the account tests share (one copy, not one per file)."""

from __future__ import annotations

from rest_framework.test import APIClient

from accounts.tests.factories import DEFAULT_PASSWORD

LOGIN = "/api/v1/auth/login"


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


def gotrue_client(url: str, *, apikey: str, bearer: str | None = None):  # -> SyncGoTrueClient
    """The official Supabase Auth Python client against a live server (`url`:
    live_server.url), sending `apikey` (and `Authorization: Bearer <bearer>`,
    as supabase-py's server client does with the service-role key); no
    auto-refresh timer thread. Close it after use."""
    from supabase_auth import SyncGoTrueClient  # a dev dependency: imported only by the tests that use it

    headers = {"apikey": apikey}
    if bearer is not None:
        headers["Authorization"] = f"Bearer {bearer}"
    return SyncGoTrueClient(url=f"{url}/auth/v1", headers=headers, auto_refresh_token=False)
