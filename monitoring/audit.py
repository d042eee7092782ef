"""Recording auth events without a round trip on the request path.

record() appends to a per-process buffer; a daemon thread writes the buffer
with one bulk INSERT every AUDIT_FLUSH_SECONDS. A worker killed between two
flushes loses at most those seconds of events; in exchange a login pays no
extra query (its budget is 2). AUDIT_FLUSH_SECONDS=0 writes synchronously
instead, for deployments that prefer completeness to latency; a negative
value only buffers (tests flush by hand).
"""

from __future__ import annotations

import logging
import threading
import uuid
from typing import Any

from django.conf import settings
from django.db import DatabaseError
from django.http import HttpRequest
from django.utils import timezone

from monitoring.context import current_request_id
from monitoring.models import AuditEvent
from velro.background import PeriodicFlusher
from velro.net import client_ip, user_agent

logger = logging.getLogger("velro.audit")

_lock = threading.Lock()
_pending: list[AuditEvent] = []
MAX_PENDING = 10_000  # a long database outage must not eat the worker's memory


def record(
    kind: str,
    request: HttpRequest,
    *,
    user_id: uuid.UUID | None = None,
    identifier: str = "",
    **detail: Any,
) -> None:
    event = AuditEvent(
        kind=kind,
        user_id=user_id,
        identifier=identifier[:254],
        ip=client_ip(request),
        user_agent=user_agent(request),
        request_id=current_request_id(),
        detail={key: str(value) for key, value in detail.items()},
        created_at=timezone.now(),
    )
    if settings.AUDIT_FLUSH_SECONDS == 0:
        AuditEvent.objects.bulk_create([event])
        return
    with _lock:
        if len(_pending) < MAX_PENDING:
            _pending.append(event)
    flusher.ensure_started()


def flush() -> int:
    with _lock:
        batch = list(_pending)
        _pending.clear()
    if not batch:
        return 0
    try:
        AuditEvent.objects.bulk_create(batch, batch_size=500)
    except DatabaseError:
        logger.warning("audit flush failed; %d events kept for the next flush", len(batch))
        with _lock:
            _pending[:0] = batch[: MAX_PENDING - len(_pending)]
        return 0
    return len(batch)


def flush_discard() -> None:
    """Drop the buffer (tests)."""
    with _lock:
        _pending.clear()


def pending() -> list[AuditEvent]:
    with _lock:
        return list(_pending)


flusher = PeriodicFlusher("velro-audit", flush, lambda: settings.AUDIT_FLUSH_SECONDS)
