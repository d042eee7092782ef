"""Coalesced, off-request-path timestamp writes: `last_login`, `last_used_at`.

A login or an API-key request must not pay for an UPDATE (and its row lock)
just to record a time. Requests put (row, time) into a per-process buffer; a
daemon thread writes the buffer every TOUCH_FLUSH_INTERVAL_SECONDS in one
transaction, one UPDATE per row however many requests touched it. Losing the
last seconds of timestamps when a worker is killed is acceptable: these
fields are informational, sessions and keys hold the truth.
"""

from __future__ import annotations

import logging
import threading
import uuid
from datetime import datetime
from typing import Literal

from django.conf import settings
from django.db import DatabaseError, transaction

from velro.background import PeriodicFlusher

logger = logging.getLogger("velro.touch")

Field = Literal["user.last_login", "apikey.last_used_at"]

_lock = threading.Lock()
_pending: dict[tuple[Field, uuid.UUID], datetime] = {}


def mark(*, field: Field, pk: uuid.UUID, when: datetime) -> None:
    with _lock:
        key = (field, pk)
        if _pending.get(key, when) <= when:
            _pending[key] = when
    flusher.ensure_started()


def last_login(*, user_id: uuid.UUID, when: datetime) -> None:
    mark(field="user.last_login", pk=user_id, when=when)


def api_key_used(*, key_id: uuid.UUID, when: datetime) -> None:
    mark(field="apikey.last_used_at", pk=key_id, when=when)


def pending() -> dict[tuple[Field, uuid.UUID], datetime]:
    with _lock:
        return dict(_pending)


def _write(field: Field, pk: uuid.UUID, when: datetime) -> None:
    from accounts.models import ApiKey, User

    model, column = (User, "last_login") if field == "user.last_login" else (ApiKey, "last_used_at")
    # Never move a timestamp backwards (two workers, out-of-order flushes).
    model.objects.filter(pk=pk).exclude(**{f"{column}__gte": when}).update(**{column: when})


def flush() -> int:
    """Write every buffered timestamp; return how many rows were touched."""
    with _lock:
        batch = dict(_pending)
        _pending.clear()
    if not batch:
        return 0
    try:
        with transaction.atomic():
            for (field, pk), when in batch.items():
                _write(field, pk, when)
    except DatabaseError:
        logger.warning("timestamp flush failed; %d rows retried later", len(batch))
        with _lock:
            for key, when in batch.items():
                _pending.setdefault(key, when)
        return 0
    return len(batch)


flusher = PeriodicFlusher("velro-touch", flush, lambda: settings.TOUCH_FLUSH_INTERVAL_SECONDS)
