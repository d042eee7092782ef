"""Per-operation database budgets.

Every connection already carries statement_timeout, lock_timeout and
idle_in_transaction_session_timeout (settings, via libpq `options`). The auth
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
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from django.conf import settings
from django.db import OperationalError, connection, transaction

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


def db_params(model: type, **values: Any) -> list[Any]:
    """Values for a raw statement on `model`'s table, prepared by their fields.

    Raw SQL (kept where one statement beats the ORM's several) bypasses the
    fields' adaptation; without it a UUID or a dict binds on PostgreSQL but
    not on SQLite, the embedded default."""
    return [model._meta.get_field(name).get_db_prep_save(value, connection) for name, value in values.items()]


class BreakerOpen(OperationalError):
    """Refused by the breaker (no query was sent): does not extend the cooldown."""


class DatabaseBreaker:
    """Fail fast for a moment after the database stalled or went away.

    Without it, during a stall every request in a process waits out its own
    lock or statement timeout, and the requests queued behind them wait even
    longer. After one such failure, queries in this process fail at once
    (503 + Retry-After) for DB_BREAKER_COOLDOWN_SECONDS; requests that need no
    SQL (a token check on a warm cache) carry on. Per process, like the pool.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._open_until = 0.0

    @property
    def open(self) -> bool:
        return self.clock() < self._open_until

    def trip(self, exc: Exception | None = None) -> None:
        if isinstance(exc, BreakerOpen):
            return  # our own refusal: the cooldown must run out while traffic goes on
        first = not self.open
        self._open_until = self.clock() + settings.DB_BREAKER_COOLDOWN_SECONDS
        if first and settings.DB_BREAKER_COOLDOWN_SECONDS > 0:
            logger.warning(
                "database stalled or unreachable: failing fast for %.1fs", settings.DB_BREAKER_COOLDOWN_SECONDS
            )

    def reset(self) -> None:
        self._open_until = 0.0

    def guard(self, execute: Callable, sql: str, params: Any, many: bool, context: dict) -> Any:
        """An execute wrapper: refuse the query while the breaker is open."""
        if self.open:
            raise BreakerOpen("database breaker open: a recent query stalled")
        return execute(sql, params, many, context)


breaker = DatabaseBreaker()
