"""Per-operation database budgets, and the connection-level timeouts.

Every connection already carries statement_timeout, lock_timeout and
idle_in_transaction_session_timeout: sent by each connection as libpq
`options`, or, behind a transaction-pooling PgBouncer (DB_PGBOUNCER, which
refuses `options`), set on the server for the app's role in its database
(`manage.py db_apply_timeouts`; the system check below warns while a
connection does not carry them). The auth
transactions (signup, refresh, logout, password change) run under a tighter
budget set with SET LOCAL, which lasts only until that transaction ends, so a
stalled row or a held lock costs the client at most the budget before the
503, never a hung worker.

The login's user read is a single autocommit statement: wrapping it would add
a round trip to the hottest path, so it is bounded by the connection-level
timeouts instead.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from django.conf import settings
from django.core import checks
from django.db import DEFAULT_DB_ALIAS, DatabaseError, OperationalError, connection, connections, transaction

from velro.breaker import Breaker

logger = logging.getLogger("velro.db")


@contextmanager
def db_budget(*, statement_ms: int | None = None, lock_ms: int | None = None) -> Iterator[None]:
    """A transaction whose statements are cut after `statement_ms` and whose
    lock waits give up after `lock_ms` (defaults: the AUTH_* settings)."""
    statement_ms = statement_ms or settings.AUTH_STATEMENT_TIMEOUT_MS
    lock_ms = lock_ms or settings.AUTH_LOCK_TIMEOUT_MS
    with transaction.atomic():
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                # One round trip for both; `true` = local to this transaction.
                cursor.execute(
                    "SELECT set_config('statement_timeout', %s, true), set_config('lock_timeout', %s, true)",
                    [f"{statement_ms}ms", f"{lock_ms}ms"],
                )
        yield


def db_release() -> None:
    """Hand this thread's pooled connection back until its next query.

    For a request about to spend a while without the database (waiting for a
    password-hashing slot, then hashing): held through that, a burst of logins
    would keep every connection of the pool (DB_POOL_MAX_SIZE) busy doing
    nothing. Only with the pool (a plain connection would be closed for good)
    and outside a transaction."""
    if getattr(connection, "pool", None) is not None and not connection.in_atomic_block:
        connection.close()


def db_params(model: type, **values: Any) -> list[Any]:
    """Values for a raw statement on `model`'s table, prepared by their fields.

    Raw SQL (kept where one statement beats the ORM's several) bypasses the
    fields' adaptation; without it a UUID or a dict binds on PostgreSQL but
    not on SQLite, the embedded default."""
    return [model._meta.get_field(name).get_db_prep_save(value, connection) for name, value in values.items()]


class BreakerOpen(OperationalError):
    """Refused by the breaker (no query was sent): does not extend the cooldown."""


# Fail fast for a moment after the database stalled or went away.
#
# Without it, during a stall every request in a process waits out its own lock
# or statement timeout, and the requests queued behind them wait even longer.
# After one such failure (velro.errors.database_unavailable trips it), queries
# in this process fail at once (503 + Retry-After) for
# DB_BREAKER_COOLDOWN_SECONDS; requests that need no SQL (a token check on a
# warm cache) carry on. Per process, like the pool. Installed as an execute
# wrapper (`guard`) by the request middleware.
breaker = Breaker(
    "database",
    cooldown=lambda: settings.DB_BREAKER_COOLDOWN_SECONDS,
    logger=logger,
    opened="database stalled or unreachable ({error}): failing fast for {cooldown:.1f}s at a time"
    " until it answers again",
    closed="database answers again",
    ignore=(BreakerOpen,),  # our own refusal: the cooldown must run out while traffic goes on
)


def guard(execute: Callable, sql: str, params: Any, many: bool, context: dict) -> Any:
    """An execute wrapper: refuse the query while the breaker is open; a query
    that succeeds ends the outage."""
    if breaker.open:
        raise BreakerOpen("database breaker open: a recent query stalled")
    result = execute(sql, params, many, context)
    breaker.recover()
    return result


# --- connection-level timeouts on the server (PgBouncer) -------------------------------------------

TIMEOUT_SETTINGS = ("statement_timeout", "lock_timeout", "idle_in_transaction_session_timeout")
_UNITS_MS = {"us": 0.001, "ms": 1, "s": 1000, "min": 60_000, "h": 3_600_000, "d": 86_400_000}


def connection_timeouts() -> dict[str, int]:
    """The connection-level timeouts the settings ask for, in milliseconds, by PostgreSQL name."""
    return {
        "statement_timeout": settings.DB_STATEMENT_TIMEOUT_MS,
        "lock_timeout": settings.DB_LOCK_TIMEOUT_MS,
        "idle_in_transaction_session_timeout": settings.DB_IDLE_IN_TRANSACTION_TIMEOUT_MS,
    }


def timeout_ms(value: str) -> int | None:
    """A timeout as PostgreSQL writes it ('3000ms', '3s', '1min', '0') in milliseconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*", value or "")
    if not match or match.group(2) not in {"", *_UNITS_MS}:
        return None
    return round(float(match.group(1)) * _UNITS_MS.get(match.group(2), 1))


def timeouts_live(using: str = DEFAULT_DB_ALIAS) -> dict[str, int | None]:
    """What the connection `using` runs under right now (behind PgBouncer: the
    server connection this statement happened to run on)."""
    with connections[using].cursor() as cursor:
        cursor.execute("SELECT name, setting, unit FROM pg_settings WHERE name = ANY(%s)", [list(TIMEOUT_SETTINGS)])
        return {name: timeout_ms(f"{setting}{unit or ''}") for name, setting, unit in cursor.fetchall()}


def timeouts_stored(using: str = DEFAULT_DB_ALIAS) -> dict[str, int | None]:
    """The timeouts set for the current role in the current database (ALTER ROLE ... IN DATABASE ... SET):
    what every new session of the role there starts with."""
    with connections[using].cursor() as cursor:
        cursor.execute(
            "SELECT unnest(s.setconfig) FROM pg_db_role_setting s"
            " JOIN pg_database d ON d.oid = s.setdatabase AND d.datname = current_database()"
            " JOIN pg_roles r ON r.oid = s.setrole AND r.rolname = current_user"
        )
        stored = dict(row[0].split("=", 1) for row in cursor.fetchall())
    return {name: timeout_ms(stored[name]) for name in TIMEOUT_SETTINGS if name in stored}


def _shown(value: int | None) -> str:
    return "not set" if value is None else f"{value}ms"


@checks.register(checks.Tags.database)
def check_server_timeouts(app_configs: Any = None, databases: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """Behind PgBouncer (DB_PGBOUNCER) the timeouts live on the server: warn
    while a connection does not run under them. A database check (Django runs
    those in `check --database default` and in `migrate`): it queries."""
    if not settings.DB_PGBOUNCER or not databases or DEFAULT_DB_ALIAS not in databases:
        return []
    if connections[DEFAULT_DB_ALIAS].vendor != "postgresql":
        return []
    expected = connection_timeouts()
    try:
        live = timeouts_live()
        stored = timeouts_stored()
    except DatabaseError as exc:
        return [
            checks.Warning(
                f"DB_PGBOUNCER is on, but the database timeouts could not be read ({exc.__class__.__name__}: {exc})",
                id="velro.W003",
            )
        ]
    wrong = [name for name in TIMEOUT_SETTINGS if live.get(name) != expected[name]]
    if not wrong:
        return []
    shown = ", ".join(f"{name} is {_shown(live.get(name))} (expected {expected[name]}ms)" for name in wrong)
    if all(stored.get(name) == expected[name] for name in TIMEOUT_SETTINGS):
        return [
            checks.Warning(
                f"The database timeouts are set on the server, but this connection started before: {shown}.",
                hint=(
                    "PgBouncer lends server connections opened before the timeouts were set on with the old values"
                    " (up to server_lifetime): RECONNECT on the PgBouncer admin console (or restart PgBouncer)."
                ),
                id="velro.W002",
            )
        ]
    return [
        checks.Warning(
            f"DB_PGBOUNCER is on but the database timeouts are not set on the server: {shown}; a locked or"
            " stalled table then hangs requests instead of answering 503.",
            hint="Run `python manage.py db_apply_timeouts` (ALTER ROLE ... IN DATABASE ... SET, from the settings).",
            id="velro.W001",
        )
    ]
