"""Recording auth events without a round trip on the request path.

record() appends to a per-process buffer (velro.background.BufferedWriter);
a daemon thread writes the buffer with one bulk INSERT every
AUDIT_FLUSH_SECONDS. A worker killed between two
flushes loses at most those seconds of events; in exchange a login pays no
extra query (its budget is 2). AUDIT_FLUSH_SECONDS=0 writes synchronously
instead, for deployments that prefer completeness to latency; a negative
value only buffers (tests flush by hand).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Hashable
from typing import Any

from django.conf import settings
from django.http import HttpRequest
from django.utils import timezone

from monitoring.models import AuditEvent
from velro.background import BufferedWriter
from velro.context import current_request_id
from velro.net import client_ip, user_agent

logger = logging.getLogger("velro.audit")

MAX_PENDING = 10_000  # a long database outage must not eat the worker's memory


def _write(batch: dict[Hashable, AuditEvent]) -> None:
    AuditEvent.objects.bulk_create(list(batch.values()), batch_size=500)


writer: BufferedWriter[AuditEvent] = BufferedWriter(
    "velro-audit",
    _write,
    interval=lambda: settings.AUDIT_FLUSH_SECONDS,
    logger=logger,
    max_pending=MAX_PENDING,
)


def surface_detail(surface: str) -> dict[str, str]:
    """The detail naming the API surface an event came from: native events carry
    no tag (as before the GoTrue surface existed), others {"surface": name}."""
    return {} if surface == "native" else {"surface": surface}


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
    writer.add(event)


def flush() -> int:
    """Write the buffered events in one bulk INSERT; return how many."""
    return writer.flush()


def flush_discard() -> None:
    """Drop the buffer (tests)."""
    writer.discard()


def pending() -> list[AuditEvent]:
    return list(writer.pending().values())


# GoTrue's /admin/audit `query=<scope>:<value>` scopes -> what they match here.
AUDIT_QUERY_SCOPES = ("author", "action", "type")


def audit_events_page(*, page: int, per_page: int, scope: str = "", value: str = "") -> tuple[list[AuditEvent], int]:
    """One page of the audit trail, newest first, and the total of what the
    query matches (two queries whatever the page size). `scope`: "action" (the
    event kind), "type" (its log type, the kind's first word: login, logout,
    admin...) or "author" (the actor: a user id, or "service_role")."""
    events = AuditEvent.objects.all()
    if scope == "action":
        events = events.filter(kind=value)
    elif scope == "type":
        events = events.filter(kind__startswith=value)
    elif scope == "author":
        actor = _uuid(value)
        if value == "service_role":
            events = events.filter(detail__actor=value)
        else:
            events = events.filter(user_id=actor) if actor is not None else events.none()
    offset = (page - 1) * per_page
    return list(events.order_by("-created_at", "-id")[offset : offset + per_page]), events.count()


def _uuid(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(value)
    except ValueError:
        return None
