"""Database connection pool statistics and their health status, under the real psycopg pool."""

from __future__ import annotations

import logging

import pytest
from django.db import connection

from monitoring import pool

pytestmark = pytest.mark.django_db(transaction=False)


# --- pool_health thresholds --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("in_use", "max_size", "waiting", "expected"),
    [
        (0, 4, 0, "HEALTHY"),
        (1, 4, 0, "HEALTHY"),
        (49, 100, 0, "HEALTHY"),
        (50, 100, 0, "NORMAL"),
        (2, 4, 0, "NORMAL"),
        (79, 100, 0, "NORMAL"),
        (80, 100, 0, "WARNING"),
        (4, 5, 0, "WARNING"),
        (94, 100, 0, "WARNING"),
        (95, 100, 0, "CRITICAL"),
        (4, 4, 0, "CRITICAL"),
        (0, 4, 1, "CRITICAL"),
        (1, 4, 3, "CRITICAL"),
        (0, 0, 0, "HEALTHY"),
    ],
)
def test_pool_health_by_utilisation_and_waiters(in_use, max_size, waiting, expected):
    assert pool.pool_health(in_use, max_size, waiting) == expected


def test_pool_health_thresholds_are_ordered():
    assert 0 < pool.NORMAL < pool.WARNING < pool.CRITICAL <= 1


# --- pool_stats under the real pool -------------------------------------------------------------


def run_a_query() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


def test_pool_stats_report_the_real_pool(settings):
    run_a_query()
    stats = pool.pool_stats()
    assert stats["enabled"] is True
    assert set(stats) >= {"size", "in_use", "idle", "waiting", "max", "timeouts", "status"}
    assert stats["max"] == settings.DB_POOL_MAX_SIZE
    assert stats["size"] >= 1
    assert 0 <= stats["in_use"] <= stats["max"]
    assert stats["size"] <= stats["max"]
    assert stats["idle"] >= 0
    assert stats["in_use"] + stats["idle"] == stats["size"]
    assert stats["waiting"] == 0
    assert stats["status"] == pool.pool_health(stats["in_use"], stats["max"], stats["waiting"])


def test_the_connection_this_test_holds_counts_as_in_use():
    # The test runs inside a transaction on a connection taken from the pool.
    run_a_query()
    assert connection.in_atomic_block
    assert pool.pool_stats()["in_use"] >= 1


def test_pool_stats_match_the_psycopg_pool_itself():
    run_a_query()
    raw = connection.pool.get_stats()
    stats = pool.pool_stats()
    assert stats["size"] == raw["pool_size"]
    assert stats["idle"] == raw["pool_available"]


def test_pool_status_follows_the_configured_maximum(settings):
    run_a_query()
    in_use = pool.pool_stats()["in_use"]
    assert in_use >= 1
    settings.DB_POOL_MAX_SIZE = in_use  # everything this process may open is in use
    assert pool.pool_stats()["status"] == "CRITICAL"
    settings.DB_POOL_MAX_SIZE = in_use * 100
    assert pool.pool_stats()["status"] == "HEALTHY"


# --- pool_report -------------------------------------------------------------------------------


def pool_records(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "velro.pool"]


def test_pool_report_logs_the_stats_at_info_when_healthy(settings, caplog):
    caplog.set_level(logging.DEBUG, logger="velro.pool")
    settings.DB_POOL_MAX_SIZE = 1000
    run_a_query()
    stats = pool.pool_report()
    records = pool_records(caplog)
    assert len(records) == 1
    assert records[0].levelno == logging.INFO
    assert records[0].getMessage() == "db pool HEALTHY"
    assert records[0].pool == stats
    assert stats["enabled"] is True


def test_pool_report_logs_a_warning_when_the_pool_is_critical(settings, caplog):
    caplog.set_level(logging.DEBUG, logger="velro.pool")
    run_a_query()
    settings.DB_POOL_MAX_SIZE = 1
    stats = pool.pool_report()
    assert stats["status"] == "CRITICAL"
    records = pool_records(caplog)
    assert [r.levelno for r in records] == [logging.WARNING]
    assert "CRITICAL" in records[0].getMessage()


def test_pool_report_publishes_the_gauges():
    from prometheus_client import REGISTRY

    from monitoring.metrics import POOL

    for state in ("size", "in_use", "idle", "waiting"):
        POOL.labels(state).set(-1)  # so a stale value cannot pass for a published one
    run_a_query()
    stats = pool.pool_report()
    for state in ("size", "in_use", "idle", "waiting"):
        assert REGISTRY.get_sample_value("velro_db_connections", {"state": state}) == stats[state], state
