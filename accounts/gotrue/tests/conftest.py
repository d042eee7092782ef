"""Fixtures of the GoTrue-surface tests (the official-client maker, make_client, is in the root conftest)."""

from __future__ import annotations

import pytest

# The local OpenID Connect provider and Velro's settings for it (sign in with a provider).
from accounts.gotrue.tests.provider_support import oidc_provider, provider_settings  # noqa: F401


@pytest.fixture
def client(make_client):  # -> SyncGoTrueClient
    return make_client()
