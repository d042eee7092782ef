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

from collections.abc import Iterator
from contextlib import contextmanager

from django.conf import settings
from django.db import connection, transaction


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
