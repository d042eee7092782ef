"""Liveness, readiness and version: the probes an orchestrator and an operator call.

Real dependencies throughout: the readiness checks run against the test
PostgreSQL, Redis and broker; the outages are real refused connections (a
closed port), and the database outage runs in a separate interpreter.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
import time
from datetime import datetime

import pytest
from django.conf import settings as django_settings
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from monitoring import checks
from monitoring.checks import readiness_reset
from velro.cache import safe_cache
from velro.celery import app as celery_app

pytestmark = pytest.mark.django_db(transaction=False)

HEALTH = "/health"
PING = "/api/v1/auth/ping"
VERSION = "/__version"
CLOSED_REDIS = "redis://127.0.0.1:1/0"
DEPENDENCIES = ("database", "cache", "broker")
STATUSES = {"ok", "down", "degraded"}


# --- helpers and fixtures ------------------------------------------------------------------------


def statements(captured: CaptureQueriesContext) -> list[str]:
    return [q["sql"] for q in captured.captured_queries if not q["sql"].startswith(("SAVEPOINT", "RELEASE"))]


@pytest.fixture
def cache_down(point_cache_at):
    """The default cache points at a closed port (restored by point_cache_at)."""
    point_cache_at(CLOSED_REDIS)


@pytest.fixture
def broker_down(monkeypatch):
    """Celery's broker URL points at a closed port (Celery reads the environment
    variable before its config, so both are switched); restored afterwards."""
    saved = celery_app.conf.broker_url
    monkeypatch.setenv("CELERY_BROKER_URL", CLOSED_REDIS)
    celery_app.conf.broker_url = CLOSED_REDIS
    readiness_reset()
    try:
        yield
    finally:
        celery_app.conf.broker_url = saved
        readiness_reset()


def get_ping(client: Client) -> tuple[object, dict]:
    response = client.get(PING)
    return response, response.json()


# --- /health -----------------------------------------------------------------------------------


def test_health_is_200_ok(client):
    response = client.get(HEALTH)
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_health_runs_no_sql_and_touches_no_cache(client):
    client.get(HEALTH)  # any first-request warm-up is out of the way
    stats_before = dict(safe_cache.stats)
    with CaptureQueriesContext(connection) as captured:
        response = client.get(HEALTH)
    assert response.status_code == 200
    assert captured.captured_queries == []
    assert dict(safe_cache.stats) == stats_before
    assert "cache" not in response["Server-Timing"]
    assert "db;" not in response["Server-Timing"]


def test_health_only_answers_get(client):
    assert client.post(HEALTH).status_code == 405


# --- /api/v1/auth/ping -------------------------------------------------------------------------


def test_ping_with_every_dependency_up_is_200_ok_with_the_documented_shape(client):
    response, body = get_ping(client)
    assert response.status_code == 200
    assert body["status"] == "ok"
    for name in DEPENDENCIES:
        dependency = body[name]
        assert dependency["status"] == "ok", (name, dependency)
        assert isinstance(dependency["latency_ms"], float), (name, dependency)
        assert 0 <= dependency["latency_ms"] < django_settings.READINESS_TIMEOUT_MS * 4, (name, dependency)
    checked_at = datetime.fromisoformat(body["checked_at"])
    assert checked_at.tzinfo is not None
    assert "Retry-After" not in response


def test_ping_reports_the_connection_pool(client):
    _, body = get_ping(client)
    pool = body["pool"]
    assert set(pool) >= {"size", "in_use", "idle", "waiting", "max", "status"}
    assert pool["status"] in {"HEALTHY", "NORMAL", "WARNING", "CRITICAL"}
    assert pool["max"] == django_settings.DB_POOL_MAX_SIZE
    assert 0 <= pool["in_use"] <= pool["size"] <= pool["max"]
    assert pool["idle"] == pool["size"] - pool["in_use"]
    assert pool["waiting"] >= 0


def test_ping_dependency_statuses_are_from_the_documented_set(client):
    _, body = get_ping(client)
    assert body["status"] in STATUSES
    assert {body[name]["status"] for name in DEPENDENCIES} <= STATUSES


def test_ping_result_is_cached_so_a_probe_storm_does_not_reach_the_database(client):
    with CaptureQueriesContext(connection) as first_queries:
        first = client.get(PING).json()
    assert statements(first_queries), "the first ping must check the database"

    with CaptureQueriesContext(connection) as second_queries:
        second = client.get(PING).json()
    assert statements(second_queries) == []
    assert second["checked_at"] == first["checked_at"]

    readiness_reset()
    with CaptureQueriesContext(connection) as third_queries:
        third = client.get(PING).json()
    assert statements(third_queries), "after a reset the database is checked again"
    assert third["checked_at"] != first["checked_at"]


def test_ping_checks_again_once_the_cache_window_has_passed(client, settings):
    settings.READINESS_CACHE_SECONDS = 0.5
    first = client.get(PING).json()
    assert client.get(PING).json()["checked_at"] == first["checked_at"]
    time.sleep(0.6)
    with CaptureQueriesContext(connection) as queries:
        later = client.get(PING).json()
    assert later["checked_at"] != first["checked_at"]
    assert statements(queries)


def test_ping_with_the_cache_down_is_200_and_degraded(client, cache_down):
    started = time.monotonic()
    response, body = get_ping(client)
    elapsed = time.monotonic() - started
    assert response.status_code == 200
    assert body["cache"]["status"] in {"down", "degraded"}
    assert body["database"]["status"] == "ok"
    assert body["status"] == "degraded"
    assert elapsed < 3, elapsed


def test_ping_with_the_cache_breaker_open_says_degraded(client, cache_down):
    safe_cache.set("probe", 1)  # the refused connection opens the breaker
    assert not safe_cache.available
    response, body = get_ping(client)
    assert response.status_code == 200
    assert body["cache"]["status"] == "degraded"
    assert body["status"] == "degraded"


def test_ping_with_the_broker_down_is_200_with_broker_down_within_a_bounded_time(client, broker_down):
    started = time.monotonic()
    response, body = get_ping(client)
    elapsed = time.monotonic() - started
    assert response.status_code == 200
    assert body["broker"]["status"] == "down"
    assert body["database"]["status"] == "ok"
    assert body["status"] == "degraded"
    assert elapsed < 3, elapsed  # every check has a short timeout


def test_ping_recovers_once_the_broker_is_back(client, broker_down):
    assert get_ping(client)[1]["broker"]["status"] == "down"
    celery_app.conf.broker_url = django_settings.CELERY_BROKER_URL
    os.environ["CELERY_BROKER_URL"] = django_settings.CELERY_BROKER_URL
    readiness_reset()
    assert get_ping(client)[1]["broker"]["status"] == "ok"


def test_readiness_force_bypasses_the_cached_result():
    first = checks.readiness()
    assert checks.readiness() is first
    assert checks.readiness(force=True) is not first


# --- the database down (separate interpreter) -----------------------------------------------

DOWN_SCRIPT = r"""
import json, time

import django

django.setup()

from django.test import Client

client = Client()  # raise_request_exception=True: a 500 would raise, reported below
out = {}
for name, path in (("ping", "/api/v1/auth/ping"), ("ping_again", "/api/v1/auth/ping"), ("health", "/health")):
    started = time.monotonic()
    try:
        response = client.get(path)
        try:
            body = json.loads(response.content)
        except ValueError:
            body = response.content.decode(errors="replace")[:300]
        out[name] = {"status": response.status_code, "body": body, "retry_after": response.headers.get("Retry-After")}
    except Exception as exc:
        out[name] = {"status": "raised", "error": repr(exc)[:500]}
    out[name]["seconds"] = round(time.monotonic() - started, 3)
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def database_down_results() -> dict:
    env = dict(os.environ)
    env.pop("DJANGO_ENV_FILE", None)
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "velro.settings",
            "DATABASE_URL": "postgres://root@127.0.0.1:1/nope",  # nothing listens on port 1
            "DJANGO_ALLOWED_HOSTS": "testserver",
            "DJANGO_SECRET_KEY": secrets.token_urlsafe(40),
            "DJANGO_DEBUG": "false",
            "REDIS_URL": "",  # in-process cache: this is about the database alone
            "CELERY_BROKER_URL": "redis://127.0.0.1:1/0",
            "PYTHONPATH": str(django_settings.BASE_DIR),
            "ACCESS_LOG": "false",  # stdout carries the script's result alone
        }
    )
    proc = subprocess.run(
        [sys.executable, "-c", DOWN_SCRIPT],
        cwd=django_settings.BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_ping_with_the_database_down_is_503_with_retry_after(database_down_results):
    result = database_down_results["ping"]
    assert result["status"] == 503, result
    body = result["body"]
    assert body["database"]["status"] == "down", body
    assert body["status"] == "down", body
    assert isinstance(body["database"]["latency_ms"], float)
    assert {"cache", "broker", "checked_at", "pool"} <= set(body)
    assert result["retry_after"] is not None and int(result["retry_after"]) >= 1, result


def test_ping_with_the_database_down_answers_fast(database_down_results):
    # A refused connection is reported at once, not after the connect timeout.
    assert database_down_results["ping"]["seconds"] < django_settings.DB_CONNECT_TIMEOUT, database_down_results


def test_ping_with_the_database_down_serves_the_next_probe_from_the_cached_result(database_down_results):
    # The checks took as long as the pool timeout; a probe sent right after
    # them is inside READINESS_CACHE_SECONDS of the answer and must not wait
    # on the dead database again.
    first, again = database_down_results["ping"], database_down_results["ping_again"]
    assert again["status"] == 503, again
    assert again["retry_after"] is not None
    assert again["body"]["checked_at"] == first["body"]["checked_at"], (first, again)
    assert again["seconds"] < 0.5, again


def test_health_with_the_database_down_is_still_200(database_down_results):
    result = database_down_results["health"]
    assert result["status"] == 200, result
    assert result["body"] == {"status": "ok"}


# --- /__version --------------------------------------------------------------------------------


def test_version_reports_build_and_runtime(client):
    response = client.get(VERSION)
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"version", "commit", "build_time", "process_started", "python", "django"}
    assert body["version"] == django_settings.VELRO_VERSION
    assert body["commit"] == "unknown" or re.fullmatch(r"[0-9a-f]{40}", body["commit"]), body["commit"]
    assert body["build_time"] in (None, django_settings.BUILD_TIME)
    started = datetime.fromisoformat(body["process_started"])
    assert started.tzinfo is not None
    assert started.timestamp() <= time.time()
    assert body["python"] == ".".join(str(part) for part in sys.version_info[:3])
    import django

    assert body["django"] == django.get_version()


def test_version_runs_no_sql(client):
    with CaptureQueriesContext(connection) as captured:
        assert client.get(VERSION).status_code == 200
    assert captured.captured_queries == []
