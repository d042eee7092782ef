"""The pool's check before it lends a connection: a socket poll; a round trip
only for a socket with something to read (velro/pgbackend)."""

from __future__ import annotations

import select
import time

import psycopg
import psycopg_pool.pool
import pytest
from django.db import connection
from psycopg_pool import ConnectionPool

from accounts.models import User
from velro.pgbackend.base import connection_check
from velro.tests.support import second_connection

pytestmark = [pytest.mark.postgresql, pytest.mark.django_db(transaction=True)]


def _connect() -> psycopg.Connection:
    return second_connection(autocommit=True)


def _until_readable(conn: psycopg.Connection) -> None:
    deadline = time.monotonic() + 5
    while not select.select([conn.fileno()], [], [], 0.05)[0]:
        assert time.monotonic() < deadline, "the server's FATAL never arrived"


@pytest.fixture
def full_checks(monkeypatch):
    """psycopg's own check (a round trip), spied on: the calls it got."""
    calls = []
    real = ConnectionPool.check_connection

    def spy(conn):
        calls.append(conn)
        real(conn)

    monkeypatch.setattr(ConnectionPool, "check_connection", staticmethod(spy))
    return calls


def test_a_healthy_idle_connection_passes_without_a_round_trip(full_checks):
    with _connect() as conn:
        connection_check(conn)
    assert full_checks == []


def test_a_connection_the_server_ended_is_refused(full_checks):
    conn = _connect()
    try:
        with _connect() as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", [conn.info.backend_pid])
        _until_readable(conn)
        with pytest.raises(psycopg.OperationalError):
            connection_check(conn)
        assert len(full_checks) == 1  # the socket had something to say: checked in full
    finally:
        conn.close()


def test_a_closed_connection_is_refused_without_touching_its_socket():
    conn = _connect()
    conn.close()
    with pytest.raises(psycopg.OperationalError):
        connection_check(conn)


def test_the_apps_pool_lends_its_connections_without_a_round_trip_each():
    assert connection.pool is not None, "the suite runs on the pool (DB_POOL)"
    for _ in range(3):
        assert User.objects.count() >= 0
        connection.close()  # handed back to the pool, checked on the next checkout
        connection.ensure_connection()
        with _connect() as observer:
            (last,) = observer.execute(
                "SELECT query FROM pg_stat_activity WHERE pid = %s", [connection.connection.info.backend_pid]
            ).fetchone()
        # psycopg's check leaves its empty query as the connection's last statement.
        assert last != ""
        connection.close()


def test_after_the_server_ends_every_pooled_connection_the_next_query_gets_a_live_one_at_once(monkeypatch):
    # psycopg's own check loop slept ~1 s (growing) after each dead connection,
    # and ran out of DB_POOL_TIMEOUT (2 s) on the second: recorded, not slept.
    sleeps = []
    monkeypatch.setattr(psycopg_pool.pool, "sleep", sleeps.append)
    User.objects.count()
    pid = connection.connection.info.backend_pid
    connection.close()  # back in the pool, idle
    with _connect() as admin:  # as a restart does: every connection of the database but this one
        ended = admin.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchone()[0]
    assert ended >= 2  # the pool keeps DB_POOL_MIN_SIZE (2) open
    time.sleep(0.2)  # the FATALs and the closes reach the pooled sockets
    assert User.objects.count() >= 0
    assert connection.connection.info.backend_pid != pid
    assert sleeps == []  # each dead one was replaced at once
