"""Fixtures of the GoTrue-surface tests (the official-client maker, make_client, is in the root conftest)."""

from __future__ import annotations

import pytest


@pytest.fixture
def client(make_client):  # -> SyncGoTrueClient
    return make_client()
