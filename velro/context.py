"""Per-request context: the request id and the time spent in each phase.

Context variables, so the logging filter, the cache wrapper, the hashers and
the database execute wrapper can all reach the current request's record
without passing it around. Platform code: any app may time a phase; the
request middleware (monitoring) begins the record and reports it.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{8,128}$")


@dataclass
class RequestRecord:
    request_id: str
    started: float = field(default_factory=time.perf_counter)
    phases: dict[str, float] = field(default_factory=dict)  # milliseconds
    counts: dict[str, int] = field(default_factory=dict)
    middleware_ran: list[str] = field(default_factory=list)
    middleware_skipped: list[str] = field(default_factory=list)
    # Shed by admission control: logged there (velro.admission), so the
    # request's 503 needs no line of Django's own (see RequestContextMiddleware).
    shed: bool = False

    def add(self, phase: str, ms: float) -> None:
        self.phases[phase] = self.phases.get(phase, 0.0) + ms
        self.counts[phase] = self.counts.get(phase, 0) + 1

    def total_ms(self) -> float:
        return (time.perf_counter() - self.started) * 1000


_current: ContextVar[RequestRecord | None] = ContextVar("velro_request", default=None)


def request_id_from(header: str | None) -> str:
    """The client's X-Request-ID if well-formed, else a new one."""
    if header and REQUEST_ID_RE.match(header):
        return header
    return uuid.uuid4().hex


def begin(request_id: str) -> RequestRecord:
    record = RequestRecord(request_id=request_id)
    _current.set(record)
    return record


def current() -> RequestRecord | None:
    return _current.get()


def current_request_id() -> str:
    record = _current.get()
    return record.request_id if record else "-"


@contextmanager
def phase(name: str) -> Iterator[None]:
    """Time a block into the current request's `name` phase (no-op outside a request)."""
    record = _current.get()
    if record is None:
        yield
        return
    start = time.perf_counter()
    try:
        yield
    finally:
        record.add(name, (time.perf_counter() - start) * 1000)
