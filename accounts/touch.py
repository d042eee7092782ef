"""Coalesced, off-request-path writes of `last_login`.

A login must not pay for an UPDATE of the user row (and its lock) just to
record a timestamp. Requests put (user, time) into a per-process buffer; a
daemon thread writes the buffer every TOUCH_FLUSH_INTERVAL_SECONDS in one
transaction. Losing the last couple of seconds of timestamps when a worker is
killed is acceptable: `last_login` is informational, sessions hold the truth.
"""

from __future__ import annotations

import atexit
import logging
import threading
import uuid
from datetime import datetime

from django.conf import settings
from django.db import DatabaseError, connection, transaction

logger = logging.getLogger("velro.touch")

_lock = threading.Lock()
_pending: dict[uuid.UUID, datetime] = {}
_thread: threading.Thread | None = None


def last_login(*, user_id: uuid.UUID, when: datetime) -> None:
    with _lock:
        if _pending.get(user_id, when) <= when:
            _pending[user_id] = when
    _ensure_thread()


def pending() -> dict[uuid.UUID, datetime]:
    with _lock:
        return dict(_pending)


def flush() -> int:
    """Write every buffered timestamp; return how many users were touched."""
    from accounts.models import User

    with _lock:
        batch = dict(_pending)
        _pending.clear()
    if not batch:
        return 0
    try:
        with transaction.atomic():
            for user_id, when in batch.items():
                # Never move last_login backwards (two workers, out-of-order flushes).
                User.objects.filter(pk=user_id).exclude(last_login__gte=when).update(last_login=when)
    except DatabaseError:
        logger.warning("last_login flush failed; %d timestamps retried later", len(batch))
        with _lock:
            for user_id, when in batch.items():
                _pending.setdefault(user_id, when)
        return 0
    return len(batch)


def _run() -> None:
    interval = settings.TOUCH_FLUSH_INTERVAL_SECONDS
    stop = threading.Event()
    while not stop.wait(interval):
        try:
            flush()
        finally:
            connection.close()  # this thread's own connection; don't hold it idle


def _ensure_thread() -> None:
    global _thread
    if settings.TOUCH_FLUSH_INTERVAL_SECONDS <= 0 or (_thread is not None and _thread.is_alive()):
        return  # 0 disables the thread: tests call flush() themselves
    with _lock:
        if _thread is None or not _thread.is_alive():
            _thread = threading.Thread(target=_run, name="velro-touch", daemon=True)
            _thread.start()
            atexit.register(flush)
