"""After a stalled query, a process fails its queries fast instead of queueing behind the stall."""

from __future__ import annotations

import pytest

from accounts.tests.factories import DEFAULT_PASSWORD, UserFactory
from velro.db import breaker
from velro.tests.support import second_connection

pytestmark = pytest.mark.django_db(transaction=True)

LOGIN = "/api/v1/auth/login"


@pytest.fixture
def clock(settings):
    settings.DB_BREAKER_COOLDOWN_SECONDS = 1.0
    settings.AUTH_LOCK_TIMEOUT_MS = 200
    now = [1000.0]
    breaker.clock = lambda: now[0]
    yield now
    breaker.clock = __import__("time").monotonic
    breaker.reset()


def test_a_lock_timeout_opens_the_breaker_and_queries_fail_fast_until_it_closes(api, clock):
    user = UserFactory()
    tokens = api.post(LOGIN, {"email": user.email, "password": DEFAULT_PASSWORD}, format="json").json()
    bearer = {"HTTP_AUTHORIZATION": f"Bearer {tokens['access_token']}"}
    assert api.get("/api/v1/auth/me", **bearer).status_code == 200  # warm cache

    locker = second_connection()
    try:
        with locker.cursor() as cursor:
            cursor.execute("SELECT id FROM auth_refresh_tokens FOR UPDATE")
        stalled = api.post("/api/v1/auth/refresh", {"refresh_token": tokens["refresh_token"]}, format="json")
    finally:
        locker.rollback()
        locker.close()
    assert stalled.status_code == 503
    assert breaker.open

    # The lock is gone, but for the cooldown this process does not even try.
    fast = api.post(LOGIN, {"email": user.email, "password": DEFAULT_PASSWORD}, format="json")
    assert fast.status_code == 503
    assert fast.json()["error"] == "unavailable"
    assert fast["Retry-After"]
    # A request that needs no SQL (token check on a warm cache) still works.
    assert api.get("/api/v1/auth/me", **bearer).status_code == 200

    clock[0] += 1.5
    assert not breaker.open
    assert api.post(LOGIN, {"email": user.email, "password": DEFAULT_PASSWORD}, format="json").status_code == 200


def test_with_no_cooldown_the_breaker_never_opens(api, settings):
    settings.DB_BREAKER_COOLDOWN_SECONDS = 0
    breaker.trip()
    assert not breaker.open


def test_refusals_by_the_open_breaker_do_not_keep_it_open(api, clock):
    user = UserFactory()
    breaker.trip()
    for _ in range(3):  # steady traffic during the cooldown
        assert api.post(LOGIN, {"email": user.email, "password": DEFAULT_PASSWORD}, format="json").status_code == 503
    clock[0] += 1.1
    assert api.post(LOGIN, {"email": user.email, "password": DEFAULT_PASSWORD}, format="json").status_code == 200
