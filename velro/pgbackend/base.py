"""Django's PostgreSQL backend, with a cheaper check before the pool lends a connection.

Django builds its psycopg pool with `ConnectionPool.check_connection` when
CONN_HEALTH_CHECKS is on: an empty query, so one round trip per checkout. A
login checks out twice (its connection is handed back for the password
verify, velro.db.db_release), and on an idle box those two round trips were
a sixth of a login's time that was not the hash.

A connection idle in the pool has nothing to say: the server writes to it
unprompted only to end it (an administrator's or a shutdown's FATAL, then the
close; PgBouncer's restart closes it too) or for a rare asynchronous notice.
So `connection_check` polls the socket with a zero timeout: a healthy idle
connection costs a system call. Only a socket with something to read (a
FATAL, EOF, a notice) gets psycopg's full check, which raises for a dead one
(the pool then discards it and lends another) and reads the notice off a live
one. What neither check notices in time is a server gone without a FIN or RST
(a cut cable): the empty query hangs on that as well, until TCP gives up.

ENGINE `velro.pgbackend` (set by velro.settings for a PostgreSQL DATABASE_URL
with DB_POOL) is otherwise Django's backend: vendor "postgresql".
"""

from __future__ import annotations

import select
from typing import Any

import psycopg
from django.db.backends.postgresql import base
from psycopg_pool import ConnectionPool


def connection_check(conn: Any) -> None:
    """Raise (psycopg.OperationalError) unless `conn` is fit to lend."""
    if conn.closed or conn.broken:
        raise psycopg.OperationalError("the connection is closed")
    try:
        readable, _, _ = select.select([conn.fileno()], [], [], 0)
    except (OSError, ValueError) as exc:  # a socket already gone
        raise psycopg.OperationalError(f"the connection's socket is unusable: {exc}") from exc
    if readable:
        ConnectionPool.check_connection(conn)


class DatabaseWrapper(base.DatabaseWrapper):
    @property
    def pool(self) -> ConnectionPool | None:
        pool = super().pool
        # Django passes its own check to the pool's constructor (and refuses
        # one in OPTIONS); the pool is not open yet, so ours replaces it
        # before the first checkout. CONN_HEALTH_CHECKS decides, as before,
        # whether connections are checked at all.
        if pool is not None and pool._check is ConnectionPool.check_connection:
            pool._check = connection_check
        return pool
