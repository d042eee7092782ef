"""Shared fixtures: a JSON API client and helpers that go through the real API."""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.core.cache import cache
from django.db import connection
from rest_framework.test import APIClient

from accounts import signing, tokens
from accounts.revocations import feed as revocation_feed
from accounts.selectors import session_l1
from accounts.tests.factories import DEFAULT_PASSWORD, UserFactory
from accounts.tests.support import Clock, gotrue_client
from monitoring import audit
from monitoring.checks import readiness_reset
from velro.cache import safe_cache
from velro.db import breaker as db_breaker
from velro.ratelimit import LocalCounters, limiter
from velro.tasks import enqueue_reset


def pytest_runtest_setup(item: pytest.Item) -> None:
    # The embedded-default run (scripts/test.sh, SQLite) skips what only
    # PostgreSQL can do; the main run on PostgreSQL runs everything.
    if item.get_closest_marker("postgresql") and connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL (runs in the main suite)")


_TEST_SLOTS_DIR = tempfile.mkdtemp(prefix="velro-test-hash-slots-")


def _reset_shared_state() -> None:
    cache.clear()
    safe_cache.reset()
    limiter.local = LocalCounters()
    enqueue_reset()
    db_breaker.reset()
    readiness_reset()
    audit.flush_discard()
    revocation_feed.reset()
    session_l1.clear()
    tokens.verified_clear()
    # The key set is reloaded only when a test moves this clock (or changes a key).
    signing.keys.reset(clock=Clock())


@pytest.fixture(autouse=True)
def _isolation(settings):
    # Background writers stay off: tests flush by hand (touch.flush(),
    # audit.flush(), pool.pool_report()); the audit buffer still buffers (< 0).
    settings.TOUCH_FLUSH_INTERVAL_SECONDS = 0
    settings.POOL_REPORT_SECONDS = 0
    settings.AUDIT_FLUSH_SECONDS = -1
    settings.ACCESS_LOG_FLUSH_SECONDS = 0  # each access line at once
    # The database breaker stays closed unless a test is about it
    # (velro/tests/test_db_breaker.py): timeout tests retry right away.
    settings.DB_BREAKER_COOLDOWN_SECONDS = 0
    # The revocation feed's poller thread stays off: tests about it
    # (accounts/tests/test_revocations.py) turn it on and poll by hand.
    settings.REVOCATION_FEED_INTERVAL_SECONDS = 0
    # The machine-wide hashing slots of this test run only: a Velro running on
    # the same box (a benchmark, run.sh) must not make a test's login wait.
    settings.HASH_SLOTS_DIR = _TEST_SLOTS_DIR
    settings.AUTH_L1_EPOCH_PATH = f"{_TEST_SLOTS_DIR}/l1-epoch"
    _reset_shared_state()
    yield
    _reset_shared_state()


def cache_config(location: str) -> dict:
    """A django-redis CACHES setting for `location` (with the app's short socket timeouts)."""
    return {
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": location,
            "KEY_PREFIX": "velro",
            "OPTIONS": {
                "CLIENT_CLASS": "django_redis.client.DefaultClient",
                "SOCKET_CONNECT_TIMEOUT": 0.25,
                "SOCKET_TIMEOUT": 0.25,
            },
        }
    }


@pytest.fixture
def point_cache_at(settings):
    """Point the default cache at `location`; the real one is put back before
    the autouse fixture above clears the cache on teardown."""
    original = copy.deepcopy(django_settings.CACHES)

    def _point(location: str) -> None:
        settings.CACHES = cache_config(location)  # Django resets `caches` on this change
        safe_cache.reset()
        readiness_reset()

    yield _point
    settings.CACHES = original
    safe_cache.reset()
    readiness_reset()


@pytest.fixture
def api() -> APIClient:
    return APIClient()


@pytest.fixture
def password() -> str:
    return DEFAULT_PASSWORD


@pytest.fixture
def user(db):
    return UserFactory()


@pytest.fixture
def login(api):
    """POST /login for a user (factory password by default); returns the token body."""

    def _login(user: Any, password: str = DEFAULT_PASSWORD, **extra: Any) -> dict:
        response = api.post("/api/v1/auth/login", {"email": user.email, "password": password, **extra}, format="json")
        assert response.status_code == 200, response.content
        return response.json()

    return _login


@pytest.fixture
def auth_api(api, user, login):
    """An APIClient carrying a fresh access token for `user`; `.tokens` holds the body."""
    tokens = login(user)
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {tokens['access_token']}")
    api.tokens = tokens
    return api


@pytest.fixture
def start_gunicorn(tmp_path):
    """Start a real gunicorn (velro.tests.support.GunicornServer) for this test:
    `start_gunicorn(workers=2, env={...})` returns it running; all are stopped
    after the test. The gunicorn uses this test's database: make it exist and
    commit what it must see (`django_db(transaction=True)`)."""
    from velro.tests.support import GunicornServer

    started: list[GunicornServer] = []

    def _start(**options: Any) -> GunicornServer:
        server = GunicornServer(tmp_path / f"gunicorn-{len(started)}", **options)
        started.append(server)
        return server.start()

    yield _start
    for server in started:
        server.stop()


@pytest.fixture
def feed_on(settings):
    """The process feed, on, with a hand-driven clock and no poller thread."""
    settings.REVOCATION_FEED_INTERVAL_SECONDS = 0.5
    settings.REVOCATION_FEED_MAX_LAG_SECONDS = 1.0
    clock = Clock()
    revocation_feed.reset(clock=clock)
    revocation_feed.ensure_started = lambda: None  # polled by hand
    yield clock
    del revocation_feed.ensure_started
    revocation_feed.reset()


@pytest.fixture
def make_client(live_server) -> Iterator[Callable[..., Any]]:
    """Official-client makers against this test's live server (accounts.tests.support.gotrue_client:
    the anon key unless told otherwise), closed after the test."""
    clients = []

    def _make(**kwargs: Any):  # -> SyncGoTrueClient
        client = gotrue_client(live_server.url, **kwargs)
        clients.append(client)
        return client

    yield _make
    for client in clients:
        client.close()
