"""Readiness checks: database, cache, broker. Each bounded by a short timeout,
and the set cached for READINESS_CACHE_SECONDS per process so a probe storm
cannot load the dependencies."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from django.conf import settings
from django.db import connection

from monitoring.pool import pool_stats
from velro.cache import safe_cache
from velro.db import db_budget

_lock = threading.Lock()
_running = threading.Lock()
_cached: tuple[float, dict[str, Any]] | None = None


def _timed(check: Callable[[], str]) -> dict[str, Any]:
    start = time.perf_counter()
    try:
        status = check()
    except Exception as exc:  # a failing dependency is a "down", never a 500
        status, error = "down", exc.__class__.__name__
    else:
        error = None
    result: dict[str, Any] = {"status": status, "latency_ms": round((time.perf_counter() - start) * 1000, 2)}
    if error:
        result["error"] = error
    return result


def check_database() -> str:
    budget = db_budget(statement_ms=settings.READINESS_TIMEOUT_MS, lock_ms=settings.READINESS_TIMEOUT_MS)
    with budget, connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return "ok"


def check_cache() -> str:
    if not safe_cache.available:
        return "degraded"  # breaker open: requests bypass the cache
    backend = safe_cache.backend
    backend.set("readiness", "1", timeout=10)
    return "ok" if backend.get("readiness") == "1" else "degraded"


def check_broker() -> str:
    from velro.celery import app

    with app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=0, timeout=settings.READINESS_TIMEOUT_MS / 1000)
    return "ok"


def readiness(*, force: bool = False) -> dict[str, Any]:
    """The dependency checks, run by one thread at a time and cached briefly."""
    global _cached
    with _lock:
        if not force and _cached is not None and time.monotonic() - _cached[0] < settings.READINESS_CACHE_SECONDS:
            return _cached[1]
    if not _running.acquire(blocking=_cached is None):
        return _cached[1]  # another thread is checking right now: the last answer will do
    try:
        result = {
            "database": _timed(check_database),
            "cache": _timed(check_cache),
            "broker": _timed(check_broker),
        }
        result["status"] = "ok" if result["database"]["status"] == "ok" else "down"
        if result["status"] == "ok" and any(result[name]["status"] != "ok" for name in ("cache", "broker")):
            result["status"] = "degraded"
        result["pool"] = pool_stats()
        result["checked_at"] = datetime.now(UTC).isoformat()
        with _lock:
            # Stamped when the checks end: a slow check (database down) must
            # not use up the cache window it is meant to fill.
            _cached = (time.monotonic(), result)
        return result
    finally:
        _running.release()


def readiness_reset() -> None:
    global _cached
    with _lock:
        _cached = None
