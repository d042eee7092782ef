"""Fixtures of the GoTrue-surface tests: the official Python client against live_server."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from accounts.tests.support import ANON_KEY


@pytest.fixture
def make_client(live_server) -> Iterator[Callable[..., Any]]:
    """SyncGoTrueClient makers against this test's live server, with the anon key
    (`headers`: more request headers; other keywords go to the client), closed after
    the test; no auto-refresh timer thread: the tests refresh by hand."""
    from supabase_auth import SyncGoTrueClient  # a dev dependency: imported only by the tests that use it

    clients: list[SyncGoTrueClient] = []

    def _make(*, headers: dict[str, str] | None = None, **options: Any) -> SyncGoTrueClient:
        client = SyncGoTrueClient(
            url=f"{live_server.url}/auth/v1",
            headers={"apikey": ANON_KEY, **(headers or {})},
            auto_refresh_token=False,
            **options,
        )
        clients.append(client)
        return client

    yield _make
    for client in clients:
        client.close()


@pytest.fixture
def client(make_client):  # -> SyncGoTrueClient
    return make_client()
