"""The read cache behind the selectors: warm reads run no SQL, every write path
invalidates at once, no secrets are cached, and the breaker/generation logic
of velro.cache.SafeCache holds (real Redis here; outages in test_redis_down)."""

from __future__ import annotations

import logging
import re
import uuid

import pytest
from django.core.cache.backends.locmem import LocMemCache
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from django_redis import get_redis_connection
from rest_framework.test import APIClient

from accounts import services
from accounts.models import ApiKey, PublicUser, Session, User
from accounts.tests.support import bearer
from velro.cache import GENERATION_KEY, SafeCache, safe_cache

pytestmark = pytest.mark.django_db(transaction=False)

SIGNUP = "/api/v1/auth/signup"
LOGIN = "/api/v1/auth/login"
REFRESH = "/api/v1/auth/refresh"
LOGOUT = "/api/v1/auth/logout"
PASSWORD = "/api/v1/auth/password"
ME = "/api/v1/auth/me"
API_KEYS = "/api/v1/auth/api-keys"

SECRET = "quiet orchard lantern 58"
NEW_SECRET = "another quiet passphrase 77"


# --- helpers ---------------------------------------------------------------------


def x_api_key(key: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_X_API_KEY=key)
    return client


def me(client: APIClient):
    return client.get(ME)


def sql_of(client: APIClient) -> tuple[object, list[str]]:
    """GET /me with `client`; (response, the SQL it ran)."""
    with CaptureQueriesContext(connection) as captured:
        response = client.get(ME)
    return response, [query["sql"] for query in captured.captured_queries]


def login(email: str, password: str = SECRET) -> dict:
    response = APIClient().post(LOGIN, {"email": email, "password": password}, format="json")
    assert response.status_code == 200, response.content
    return response.json()


@pytest.fixture
def account():
    """A user created through POST /signup: the signup body (tokens + primary API key)."""
    email = f"cache-{uuid.uuid4().hex[:10]}@example.com"
    response = APIClient().post(SIGNUP, {"email": email, "password": SECRET}, format="json")
    assert response.status_code == 201, response.content
    body = response.json()
    body["email"] = email
    body["user_id"] = uuid.UUID(body["user"]["id"])
    return body


@pytest.fixture
def warm(account):
    """The signup session, its /me already answered once (cache warm)."""
    client = bearer(account["access_token"])
    assert me(client).status_code == 200
    response, queries = sql_of(client)
    assert response.status_code == 200
    assert queries == []  # precondition: really warm
    return client


def redis_items() -> dict[bytes, bytes]:
    """Every key of the test cache's Redis DB with its raw stored value."""
    redis = get_redis_connection("default")
    items = {}
    for key in redis.scan_iter("*"):
        value = redis.get(key)
        items[key] = value if value is not None else b""
    return items


# --- 0 SQL on a warm cache ----------------------------------------------------------


def test_second_me_with_an_access_token_runs_no_sql(account):
    client = bearer(account["access_token"])
    first, first_queries = sql_of(client)
    second, second_queries = sql_of(client)
    assert first.status_code == second.status_code == 200
    assert first_queries  # the cold read did go to the database
    assert second_queries == []
    assert second.json() == first.json()
    assert second.json()["email"] == account["email"]


@pytest.mark.parametrize("make_client", [x_api_key, bearer], ids=["x-api-key", "bearer-vk-live"])
def test_second_me_with_an_api_key_runs_no_sql(account, make_client):
    key = account["api_key"]["key"]
    assert key.startswith("vk_live_")
    client = make_client(key)
    first, first_queries = sql_of(client)
    second, second_queries = sql_of(client)
    assert first.status_code == second.status_code == 200, (first.content, second.content)
    assert first_queries
    assert second_queries == []
    assert second.json()["id"] == str(account["user_id"])


def test_warm_me_of_a_second_session_of_the_same_user_needs_only_its_session_row(account):
    bearer(account["access_token"]).get(ME)
    other = bearer(login(account["email"])["access_token"])
    _, cold = sql_of(other)
    _, warm_queries = sql_of(other)
    assert len(cold) == 1  # one query: session joined with user and mirror
    assert warm_queries == []


# --- every write path invalidates at once --------------------------------------------


def test_logout_ends_the_warm_token_at_once(account, warm):
    assert warm.post(LOGOUT, {}, format="json").status_code == 204
    assert me(warm).status_code == 401


def test_global_logout_ends_other_warm_sessions_at_once(account, warm):
    other = bearer(login(account["email"])["access_token"])
    assert me(other).status_code == 200
    assert other.post(LOGOUT, {"scope": "global"}, format="json").status_code == 204
    assert me(warm).status_code == 401
    assert me(other).status_code == 401


def test_password_change_ends_other_warm_sessions_at_once(account, warm):
    other = bearer(login(account["email"])["access_token"])
    assert me(other).status_code == 200
    response = other.post(PASSWORD, {"current_password": SECRET, "new_password": NEW_SECRET}, format="json")
    assert response.status_code == 204, response.content
    assert me(warm).status_code == 401
    assert me(other).status_code == 200  # the session that changed it stays


def test_profile_patch_shows_on_the_next_warm_me(account, warm):
    response = warm.patch(ME, {"display_name": "Renamed Person"}, format="json")
    assert response.status_code == 200, response.content
    assert me(warm).json()["display_name"] == "Renamed Person"
    assert x_api_key(account["api_key"]["key"]).get(ME).json()["display_name"] == "Renamed Person"


def test_admin_role_change_on_the_mirror_shows_on_the_next_warm_me(account, warm):
    key_client = x_api_key(account["api_key"]["key"])
    assert me(key_client).json()["role"] == "viewer"
    mirror = PublicUser.objects.get(pk=account["user_id"])
    mirror.role = "admin"
    mirror.save()
    assert me(warm).json()["role"] == "admin"
    assert me(key_client).json()["role"] == "admin"


def test_admin_email_change_shows_on_the_next_warm_me(account, warm):
    user = User.objects.get(pk=account["user_id"])
    user.email = "changed-by-admin@example.com"
    user.save()
    assert me(warm).json()["email"] == "changed-by-admin@example.com"


def test_deactivating_the_user_ends_warm_tokens_and_keys_at_once(account, warm):
    key_client = x_api_key(account["api_key"]["key"])
    assert me(key_client).status_code == 200
    user = User.objects.get(pk=account["user_id"])
    user.is_active = False
    user.save()
    assert me(warm).status_code == 401
    assert me(key_client).status_code == 401
    # and it stays ended once the inactive state itself is cached
    assert me(warm).status_code == 401
    assert me(key_client).status_code == 401


def test_deleting_the_user_ends_warm_tokens_and_keys_at_once(account, warm):
    key_client = x_api_key(account["api_key"]["key"])
    assert me(key_client).status_code == 200
    User.objects.get(pk=account["user_id"]).delete()
    assert me(warm).status_code == 401
    assert me(key_client).status_code == 401


def test_admin_session_revoke_ends_the_warm_token_at_once(account, warm):
    assert services.session_revoke(session_ids=[Session.objects.get(user_id=account["user_id"]).pk], reason="admin")
    assert me(warm).status_code == 401


def test_refresh_token_replay_revokes_the_warm_session_at_once(account, warm, settings):
    settings.REFRESH_REUSE_GRACE_SECONDS = 0
    first = APIClient().post(REFRESH, {"refresh_token": account["refresh_token"]}, format="json")
    assert first.status_code == 200
    successor = bearer(first.json()["access_token"])
    assert me(successor).status_code == 200
    replay = APIClient().post(REFRESH, {"refresh_token": account["refresh_token"]}, format="json")
    assert replay.status_code == 401
    assert me(warm).status_code == 401
    assert me(successor).status_code == 401


@pytest.mark.parametrize("make_client", [x_api_key, bearer], ids=["x-api-key", "bearer-vk-live"])
def test_api_key_revoke_ends_the_warm_key_at_once(account, warm, make_client):
    key_client = make_client(account["api_key"]["key"])
    assert me(key_client).status_code == 200
    _, queries = sql_of(key_client)
    assert queries == []  # warm
    response = warm.delete(f"{API_KEYS}/{account['api_key']['id']}")
    assert response.status_code == 204, response.content
    assert me(key_client).status_code == 401
    assert me(warm).status_code == 200  # the session is untouched


def test_admin_api_key_revoke_ends_the_warm_key_at_once(account):
    key_client = x_api_key(account["api_key"]["key"])
    assert me(key_client).status_code == 200
    assert services.api_keys_revoke(key_ids=[uuid.UUID(account["api_key"]["id"])]) == 1
    assert me(key_client).status_code == 401


def test_a_new_api_key_works_while_others_are_warm(account, warm):
    assert me(x_api_key(account["api_key"]["key"])).status_code == 200
    created = warm.post(API_KEYS, {"name": "ci"}, format="json")
    assert created.status_code == 201, created.content
    new_client = x_api_key(created.json()["key"])
    assert me(new_client).status_code == 200
    _, queries = sql_of(new_client)
    assert queries == []


# --- what the cache holds -------------------------------------------------------------


def test_the_cache_never_holds_password_hashes_or_raw_secrets(account):
    session_two = login(account["email"])
    rotated = APIClient().post(REFRESH, {"refresh_token": session_two["refresh_token"]}, format="json").json()
    created = bearer(session_two["access_token"]).post(API_KEYS, {"name": "second"}, format="json").json()
    tokens = [account, session_two, rotated]
    for body in tokens:
        for _ in range(2):
            assert me(bearer(body["access_token"])).status_code == 200
    for key in (account["api_key"]["key"], created["key"]):
        for make_client in (x_api_key, bearer):
            assert me(make_client(key)).status_code == 200

    password_hash = User.objects.get(pk=account["user_id"]).password
    assert password_hash.startswith("argon2$")
    secrets = {
        "password hash": password_hash,
        "password hash digest": password_hash.rsplit("$", 1)[1],
        "plain password": SECRET,
        "primary API key": account["api_key"]["key"],
        "second API key": created["key"],
    }
    for index, body in enumerate(tokens):
        secrets[f"access token {index}"] = body["access_token"]
        secrets[f"refresh token {index}"] = body["refresh_token"]

    items = redis_items()
    # Not vacuous: the user, its sessions and both keys are cached.
    names = b"\n".join(items)
    assert f"user:v2:{account['user_id']}".encode() in names
    assert len([key for key in items if b":session:v1:" in key]) == 2  # signup + login (refresh keeps its session)
    assert len([key for key in items if b":apikey:v1:" in key]) == 2
    for key, value in items.items():
        for label, secret in secrets.items():
            assert secret.encode() not in key, f"{label} in cache key {key!r}"
            assert secret.encode() not in value, f"{label} in the value of {key!r}"


def test_cache_keys_are_namespaced_and_versioned(account, settings):
    assert me(bearer(account["access_token"])).status_code == 200
    assert me(x_api_key(account["api_key"]["key"])).status_code == 200
    login(account["email"])  # rate-limit counters
    _simulate_outage_and_recovery(settings)  # and a generation key
    safe_cache.get("anything")

    keys = [key.decode() for key in redis_items()]
    versioned = re.compile(r"^velro:\d+:(user|session|apikey):v\d+:[0-9a-f-]+$")
    other = re.compile(rf"^velro:\d+:({GENERATION_KEY}|rl:[a-z-]+:[0-9a-f]{{32}}:\d+)$")
    assert any(key.endswith(f":user:v2:{account['user_id']}") for key in keys)
    assert any(":rl:login-ip:" in key for key in keys)
    assert any(key.endswith(f":{GENERATION_KEY}") for key in keys)
    for key in keys:
        assert key.startswith("velro:"), key
        assert versioned.match(key) or other.match(key), key


def test_cached_entries_expire_after_the_configured_ttl(account, settings):
    assert me(bearer(account["access_token"])).status_code == 200
    redis = get_redis_connection("default")
    entries = [key for key in redis.scan_iter("*") if b":v1:" in key]
    assert entries
    for key in entries:
        assert 0 < redis.ttl(key) <= settings.CACHE_TTL


# --- hit/miss stats ---------------------------------------------------------------------


def test_a_cold_me_counts_misses_and_a_warm_one_counts_hits(account):
    client = bearer(account["access_token"])
    before = dict(safe_cache.stats)
    assert me(client).status_code == 200
    cold = dict(safe_cache.stats)
    assert cold.get("misses", 0) > before.get("misses", 0)
    assert cold.get("hits", 0) == before.get("hits", 0)
    assert me(client).status_code == 200
    warm_stats = dict(safe_cache.stats)
    assert warm_stats.get("hits", 0) > cold.get("hits", 0)
    assert warm_stats.get("misses", 0) == cold.get("misses", 0)


# --- generation: no stale entry survives an outage ------------------------------------------


def _simulate_outage_and_recovery(settings) -> None:
    """The breaker trips (a Redis error) and, its cooldown over, the next cache
    call succeeds: the recovery path of SafeCache."""
    settings.CACHE_BREAKER_COOLDOWN_SECONDS = 0
    safe_cache._trip("test", ConnectionError("simulated outage"))
    assert safe_cache.available


def test_a_revocation_missed_during_an_outage_is_not_answered_from_the_cache(account, warm, settings):
    # The logout happened while Redis was unreachable: the DB row is revoked but
    # the invalidation never reached the cache (simulated by bypassing it).
    Session.objects.filter(user_id=account["user_id"]).update(revoked_at=timezone.now())
    assert me(warm).status_code == 200  # precondition: the stale entry is there
    _simulate_outage_and_recovery(settings)
    assert me(warm).status_code == 401
    assert me(warm).status_code == 401


def test_an_api_key_revocation_missed_during_an_outage_is_not_answered_from_the_cache(account, settings):
    key_client = x_api_key(account["api_key"]["key"])
    assert me(key_client).status_code == 200
    ApiKey.objects.filter(pk=account["api_key"]["id"]).update(revoked_at=timezone.now())
    assert me(key_client).status_code == 200  # precondition: stale entry
    _simulate_outage_and_recovery(settings)
    assert me(key_client).status_code == 401


def test_recovery_bumps_the_generation_once(account, warm, settings):
    redis = get_redis_connection("default")
    assert redis.get(f"velro:1:{GENERATION_KEY}") is None
    _simulate_outage_and_recovery(settings)
    me(warm)
    me(warm)
    assert int(redis.get(f"velro:1:{GENERATION_KEY}")) == 1


def test_caching_resumes_right_after_a_recovery(account, warm, settings):
    _simulate_outage_and_recovery(settings)
    first = me(warm)  # the call that finds Redis back: a miss, refilled
    second, queries = sql_of(warm)
    assert first.status_code == second.status_code == 200
    assert queries == []


# --- SafeCache unit tests (injected clock and backend) ---------------------------------------


class FlakyBackend:
    """A cache backend that raises while `failing`; counts every call."""

    def __init__(self) -> None:
        self.store = LocMemCache(f"unit-{uuid.uuid4()}", {})
        self.failing = False
        self.calls = 0

    def _enter(self) -> None:
        self.calls += 1
        if self.failing:
            raise ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    def get_many(self, keys):
        self._enter()
        return self.store.get_many(keys)

    def set_many(self, data, timeout=None):
        self._enter()
        return self.store.set_many(data, timeout=timeout)

    def delete_many(self, keys):
        self._enter()
        return self.store.delete_many(keys)

    def add(self, key, value, timeout=None):
        self._enter()
        return self.store.add(key, value, timeout=timeout)

    def incr(self, key, delta=1):
        self._enter()
        return self.store.incr(key, delta)

    def get(self, key, default=None):
        self._enter()
        return self.store.get(key, default)


@pytest.fixture
def clock():
    return [1000.0]


@pytest.fixture
def backend():
    return FlakyBackend()


@pytest.fixture
def breaker(backend, clock):
    return SafeCache(backend, clock=lambda: clock[0], cooldown=5)


def _unavailable_warnings(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "velro.cache" and "cache unavailable" in r.getMessage()]


def test_safe_cache_passes_calls_through_while_healthy(breaker, backend):
    breaker.set("k", "v")
    assert breaker.get("k") == "v"
    assert breaker.get_many(["k", "missing"]) == {"k": "v"}
    assert breaker.incr("counter", 2, timeout=60) == 2
    assert breaker.stats["hits"] == 2
    assert breaker.stats["misses"] == 1
    assert breaker.stats["errors"] == 0
    assert backend.calls >= 5


def test_the_generation_key_is_not_counted_as_a_hit_or_miss(breaker):
    breaker.get_many(["k", GENERATION_KEY])
    assert breaker.stats["misses"] == 1
    assert breaker.stats["hits"] == 0


def test_first_failure_opens_the_breaker(breaker, backend):
    backend.failing = True
    assert breaker.get("k") is None
    assert backend.calls == 1
    assert breaker.stats["errors"] == 1
    assert not breaker.available


def test_calls_within_the_cooldown_do_not_touch_the_backend(breaker, backend, clock):
    backend.failing = True
    breaker.get("k")
    assert backend.calls == 1
    clock[0] += 4.99
    assert breaker.get("k") is None
    assert breaker.get_many(["a", "b"]) == {}
    breaker.set("k", "v")
    breaker.delete_many(["k"])
    assert breaker.incr("counter", 1, timeout=60) is None
    assert backend.calls == 1
    assert breaker.stats["bypassed"] == 5
    assert breaker.stats["errors"] == 1


def test_after_the_cooldown_one_call_goes_through_and_a_failure_reopens(breaker, backend, clock):
    backend.failing = True
    breaker.get("k")
    clock[0] += 5
    assert breaker.available
    breaker.get("k")
    assert backend.calls == 2
    assert not breaker.available  # reopened for another cooldown
    clock[0] += 4.9
    breaker.get("k")
    breaker.get("k")
    assert backend.calls == 2
    assert breaker.stats["errors"] == 2


def test_success_after_the_cooldown_closes_the_breaker_and_bumps_the_generation(breaker, backend, clock, caplog):
    breaker.set("k", "v")
    backend.failing = True
    breaker.get("k")
    clock[0] += 5
    backend.failing = False
    with caplog.at_level(logging.WARNING, logger="velro.cache"):
        breaker.get("k")
    assert breaker.available
    assert backend.store.get(GENERATION_KEY) == 1
    assert any("available again" in r.getMessage() for r in caplog.records if r.name == "velro.cache")
    calls = backend.calls
    assert breaker.get("k") == "v"
    assert backend.calls == calls + 1  # closed: calls reach the backend again
    assert backend.store.get(GENERATION_KEY) == 1  # bumped once per recovery, not per call


def test_each_recovery_bumps_the_generation_again(breaker, backend, clock):
    for expected in (1, 2):
        backend.failing = True
        breaker.get("k")
        clock[0] += 5
        backend.failing = False
        breaker.get("k")
        assert breaker.generation(backend.store.get_many([GENERATION_KEY])) == expected


def test_the_outage_warning_is_logged_once_per_outage(breaker, backend, clock, caplog):
    caplog.set_level(logging.WARNING, logger="velro.cache")
    backend.failing = True
    for _ in range(4):  # four failed attempts, one per cooldown, plus bypassed calls
        breaker.get("k")
        breaker.set("k", "v")
        clock[0] += 5
    assert breaker.stats["errors"] == 4
    assert len(_unavailable_warnings(caplog)) == 1

    backend.failing = False
    breaker.get("k")  # recovery ends the outage
    backend.failing = True
    breaker.get("k")  # a new outage
    warnings = _unavailable_warnings(caplog)
    assert len(warnings) == 2
    assert "ConnectionError" in warnings[0].getMessage()


def test_a_failing_generation_bump_keeps_the_breaker_open(breaker, backend, clock):
    backend.failing = True
    breaker.get("k")
    clock[0] += 5
    backend.failing = False
    original_incr = backend.incr

    def incr_fails(key, delta=1):
        raise ConnectionError("lost again during the bump")

    backend.incr = incr_fails
    breaker.get("k")
    assert not breaker.available
    backend.incr = original_incr
    clock[0] += 5
    breaker.get("k")
    assert breaker.available
    assert backend.store.get(GENERATION_KEY) == 1


def test_reset_closes_the_breaker_and_zeroes_the_counters(breaker, backend):
    backend.failing = True
    breaker.get("k")
    breaker.reset()
    assert breaker.available
    assert not breaker.stats
    backend.failing = False
    breaker.get("k")
    assert backend.calls == 2
