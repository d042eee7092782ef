"""Coalesced, off-request-path timestamp writes: `last_login`, `last_used_at`.

A login or an API-key request must not pay for an UPDATE (and its row lock)
just to record a time. Requests put (row, time) into a per-process buffer
(velro.background.BufferedWriter); a daemon thread writes the buffer every
TOUCH_FLUSH_INTERVAL_SECONDS in one transaction, one UPDATE per row however
many requests touched it. Losing the last seconds of timestamps when a worker
is killed is acceptable: these fields are informational, sessions and keys hold the truth.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Hashable
from datetime import datetime
from typing import Literal

from django.conf import settings
from django.db import transaction

from velro.background import BufferedWriter

logger = logging.getLogger("velro.touch")

Field = Literal["user.last_login", "apikey.last_used_at"]


def _write_row(field: Field, pk: uuid.UUID, when: datetime) -> None:
    from accounts.models import ApiKey, User

    model, column = (User, "last_login") if field == "user.last_login" else (ApiKey, "last_used_at")
    # Never move a timestamp backwards (two workers, out-of-order flushes).
    model.objects.filter(pk=pk).exclude(**{f"{column}__gte": when}).update(**{column: when})


def _write(batch: dict[Hashable, datetime]) -> None:
    """One transaction, one UPDATE per row."""
    with transaction.atomic():
        for (field, pk), when in batch.items():
            _write_row(field, pk, when)


writer: BufferedWriter[datetime] = BufferedWriter(
    "velro-touch",
    _write,
    interval=lambda: settings.TOUCH_FLUSH_INTERVAL_SECONDS,
    logger=logger,
    merge=max,  # the latest time per row wins
)


def mark(*, field: Field, pk: uuid.UUID, when: datetime) -> None:
    writer.add(when, key=(field, pk))


def last_login(*, user_id: uuid.UUID, when: datetime) -> None:
    mark(field="user.last_login", pk=user_id, when=when)


def api_key_used(*, key_id: uuid.UUID, when: datetime) -> None:
    mark(field="apikey.last_used_at", pk=key_id, when=when)


def pending() -> dict[tuple[Field, uuid.UUID], datetime]:
    return writer.pending()  # type: ignore[return-value]


def flush() -> int:
    """Write every buffered timestamp; return how many rows were touched."""
    return writer.flush()
