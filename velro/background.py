"""Work kept off the request path, done by a per-process daemon thread.

- PeriodicFlusher: calls a function every few seconds (monitoring's pool report).
- BufferedWriter: the one buffer-and-flush writer: requests `add` to a
  per-process buffer, the thread writes the buffer every few seconds in one go
  (accounts.touch: last_login / last_used_at; monitoring.audit: the audit
  trail). A failed write keeps the batch for the next flush.

Threads start lazily, with the first request that buffers something, so
nothing runs in a process that never serves (management commands, the
gunicorn master). An interval <= 0 starts no thread: tests flush by hand.
"""

from __future__ import annotations

import atexit
import itertools
import logging
import threading
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

from django.db import DatabaseError, connection

V = TypeVar("V")


class PeriodicFlusher:
    def __init__(self, name: str, flush: Callable[[], object], interval: Callable[[], float]) -> None:
        self.name = name
        self.flush = flush
        self.interval = interval
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def ensure_started(self) -> None:
        """Start the thread unless running, or disabled (interval <= 0: tests flush by hand)."""
        if self.interval() <= 0 or (self._thread is not None and self._thread.is_alive()):
            return
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()
                atexit.register(self.flush)

    def _run(self) -> None:
        stop = threading.Event()
        while not stop.wait(self.interval()):
            try:
                self.flush()
            finally:
                connection.close()  # this thread's connection goes back to the pool


class BufferedWriter(Generic[V]):
    """A per-process buffer of values by key, written every `interval()` seconds.

    `add(value, key=...)`: a value added under a key already buffered is
    `merge(buffered, new)`d into it (default: the new one replaces it), so a row
    touched by many requests is written once; without a key every value is kept
    (in order). At most `max_pending` keys are buffered (None: no bound); beyond
    that new keys are dropped, so a long outage cannot eat the worker's memory.

    `write(batch)` gets the buffered {key: value} and writes them; when it raises
    one of `retry_on`, the batch is logged once and kept for the next flush
    (merged with what was added meanwhile).
    """

    def __init__(
        self,
        name: str,
        write: Callable[[dict[Hashable, V]], object],
        *,
        interval: Callable[[], float],
        logger: logging.Logger,
        merge: Callable[[V, V], V] | None = None,
        max_pending: int | None = None,
        retry_on: tuple[type[BaseException], ...] = (DatabaseError,),
    ) -> None:
        self.name = name
        self.write = write
        self.logger = logger
        self.merge = merge or (lambda old, new: new)
        self.max_pending = max_pending
        self.retry_on = retry_on
        self._lock = threading.Lock()
        self._pending: dict[Hashable, V] = {}
        self._sequence = itertools.count()
        self.flusher = PeriodicFlusher(name, self.flush, interval)

    def add(self, value: V, *, key: Hashable | None = None) -> None:
        with self._lock:
            if key is None:
                key = ("#", next(self._sequence))
            if key in self._pending:
                self._pending[key] = self.merge(self._pending[key], value)
            elif self.max_pending is None or len(self._pending) < self.max_pending:
                self._pending[key] = value
        self.flusher.ensure_started()

    def pending(self) -> dict[Hashable, V]:
        with self._lock:
            return dict(self._pending)

    def flush(self) -> int:
        """Write everything buffered; return how many values were written (0 on failure)."""
        with self._lock:
            batch = self._pending
            self._pending = {}
        if not batch:
            return 0
        try:
            self.write(batch)
        except self.retry_on as exc:
            self.logger.warning(
                "%s: flush failed (%s); %d kept for the next flush", self.name, exc.__class__.__name__, len(batch)
            )
            self._keep(batch)
            return 0
        return len(batch)

    def _keep(self, batch: dict[Hashable, V]) -> None:
        """Put a failed batch back in front of what was added since."""
        with self._lock:
            merged = dict(batch)
            for key, value in self._pending.items():
                merged[key] = self.merge(merged[key], value) if key in merged else value
            if self.max_pending is not None and len(merged) > self.max_pending:
                merged = dict(itertools.islice(merged.items(), self.max_pending))
            self._pending = merged

    def discard(self) -> None:
        """Drop the buffer (tests)."""
        with self._lock:
            self._pending.clear()
