"""Django's PostgreSQL backend, with a cheaper and faster check before the pool lends a connection.

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
and reads the notice off a live one. What neither check notices in time is a
server gone without a FIN or RST (a cut cable): the empty query hangs on that
as well, until TCP gives up.

The pool (`CheckedPool`) runs that check itself, in `getconn`, and on a dead
connection closes it, hands it back (the pool discards it and opens a
replacement in the background) and takes the next one at once. psycopg's own
check loop sleeps about a second, growing, after each failed check: after a
database restart, with every pooled connection dead, a request waited 1 s
for the first and timed out (DB_POOL_TIMEOUT, 2 s) on the second.

ENGINE `velro.pgbackend` (set by velro.settings for a PostgreSQL DATABASE_URL)
is otherwise Django's backend: vendor "postgresql".
"""

from __future__ import annotations

import select
import time
from typing import Any

import psycopg
from django.core.exceptions import ImproperlyConfigured
from django.db.backends.base.base import NO_DB_ALIAS
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


class CheckedPool(ConnectionPool):
    """A psycopg pool that lends a connection only once `connection_check`
    passes, and replaces a dead one without waiting (see the module's text)."""

    def getconn(self, timeout: float | None = None) -> Any:
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            # Past the deadline this raises PoolTimeout, as the pool's own wait does.
            conn = super().getconn(timeout=max(0.0, deadline - time.monotonic()))
            try:
                connection_check(conn)
            except psycopg.Error:
                conn.close()
                self.putconn(conn)  # a closed connection is discarded, and a new one opened
                continue
            return conn


class DatabaseWrapper(base.DatabaseWrapper):
    @property
    def pool(self) -> ConnectionPool | None:
        """Django's pool property (5.2), building a CheckedPool: the pool's
        own check stays off, CheckedPool.getconn checks instead when
        CONN_HEALTH_CHECKS is on."""
        pool_options = self.settings_dict["OPTIONS"].get("pool")
        if self.alias == NO_DB_ALIAS or not pool_options:
            return None
        if self.alias not in self._connection_pools:
            if self.settings_dict.get("CONN_MAX_AGE", 0) != 0:
                raise ImproperlyConfigured("Pooling doesn't support persistent connections.")
            if pool_options is True:
                pool_options = {}
            connect_kwargs = self.get_connection_params()
            connect_kwargs["autocommit"] = True  # as Django: it sets autocommit itself later
            pool_class = CheckedPool if self.settings_dict["CONN_HEALTH_CHECKS"] else ConnectionPool
            pool = pool_class(
                kwargs=connect_kwargs, open=False, configure=self._configure_connection, check=None, **pool_options
            )
            # Not opened yet, so threads racing here make one pool each and the first one kept wins.
            self._connection_pools.setdefault(self.alias, pool)
        return self._connection_pools[self.alias]
