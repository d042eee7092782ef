"""A per-process daemon thread that calls a flush function every few seconds.

Used for the writes kept off the request path: timestamps (accounts.touch),
the audit trail (monitoring.audit), SLO counts (monitoring.slo). Started
lazily by the first request that buffers something, so nothing runs in a
process that never serves (management commands, the gunicorn master).
"""

from __future__ import annotations

import atexit
import threading
from collections.abc import Callable

from django.db import connection


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
