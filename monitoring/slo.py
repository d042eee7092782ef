"""Rolling latency percentiles and success rate per auth endpoint.

Each web process counts its requests into per-minute latency histograms in
memory (no work on the request path beyond a dict update); a daemon thread
adds them to Redis every SLO_FLUSH_SECONDS (HINCRBY, one pipeline), where all
processes' counts meet. evaluate() reads the last SLO_WINDOW_MINUTES, computes
p50/p95/p99 (upper bound of the histogram bucket the percentile falls in) and
the success ratio (answers that are not 5xx), and compares them with the
thresholds; the Celery beat task `monitoring.evaluate_slos` runs it every
minute and logs a warning or critical line when one is crossed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

from django.conf import settings

from velro.background import PeriodicFlusher

logger = logging.getLogger("velro.slo")

EDGES_MS = (5, 10, 25, 50, 75, 100, 150, 250, 500, 750, 1000, 2500, 5000, 10000)
AUTH_PREFIXES = ("/api/v1/auth/", "/auth/v1/")
KEY_PREFIX = "velro:slo"

_lock = threading.Lock()
_pending: dict[tuple[str, int], dict[str, int]] = defaultdict(lambda: defaultdict(int))


def _bucket(ms: float) -> str:
    for index, edge in enumerate(EDGES_MS):
        if ms <= edge:
            return f"b{index}"
    return f"b{len(EDGES_MS)}"


def tracked(route: str) -> bool:
    return route.startswith(AUTH_PREFIXES) and not route.endswith(("/ping", "/middleware-status", "/health"))


def record(route: str, ms: float, ok: bool, *, now: float | None = None) -> None:
    minute = int((now or time.time()) // 60)
    with _lock:
        counts = _pending[(route, minute)]
        counts["count"] += 1
        counts["errors"] += 0 if ok else 1
        counts[_bucket(ms)] += 1
    flusher.ensure_started()


def _redis() -> Any:
    from django_redis import get_redis_connection

    return get_redis_connection("default")


def flush() -> int:
    """Add the buffered counts to Redis; return how many (route, minute) rows."""
    with _lock:
        batch = {key: dict(counts) for key, counts in _pending.items()}
        _pending.clear()
    if not batch:
        return 0
    try:
        pipe = _redis().pipeline(transaction=False)
        for (route, minute), counts in batch.items():
            key = f"{KEY_PREFIX}:{route}:{minute}"
            for name, value in counts.items():
                pipe.hincrby(key, name, value)
            pipe.expire(key, 3600)
        pipe.execute()
    except Exception as exc:  # Redis down: keep the counts still inside the window
        logger.debug("slo flush failed: %s", exc.__class__.__name__)
        oldest = int(time.time() // 60) - settings.SLO_WINDOW_MINUTES
        with _lock:
            for key, counts in batch.items():
                if key[1] >= oldest:
                    for name, value in counts.items():
                        _pending[key][name] += value
        return 0
    return len(batch)


def _read(routes: Iterable[str], minutes: Iterable[int]) -> dict[str, dict[str, int]]:
    client = _redis()
    totals: dict[str, dict[str, int]] = {}
    for route in routes:
        merged: dict[str, int] = defaultdict(int)
        for minute in minutes:
            for name, value in client.hgetall(f"{KEY_PREFIX}:{route}:{minute}").items():
                merged[name.decode()] += int(value)
        if merged.get("count"):
            totals[route] = merged
    return totals


def _routes() -> list[str]:
    client = _redis()
    return sorted({key.decode().split(":")[2] for key in client.scan_iter(f"{KEY_PREFIX}:*", count=500)})


def percentile(counts: dict[str, int], q: float) -> float:
    total = counts.get("count", 0)
    if not total:
        return 0.0
    target, seen = q * total, 0
    for index, edge in enumerate(EDGES_MS):
        seen += counts.get(f"b{index}", 0)
        if seen >= target:
            return float(edge)
    return float(EDGES_MS[-1] * 2)  # beyond the last edge


def _level(stats: dict[str, float]) -> str:
    # p95_ms is the upper edge of its bucket: "> threshold" means the real p95
    # is above it (a threshold on an edge must not fire for samples below it).
    if stats["p95_ms"] > settings.SLO_P95_CRITICAL_MS:
        return "critical"
    if stats["p95_ms"] > settings.SLO_P95_WARNING_MS or stats["success_rate"] < settings.SLO_SUCCESS_RATE_MIN:
        return "warning"
    return "ok"


def evaluate(*, log: bool = True, now: float | None = None, read: Callable | None = None) -> dict[str, Any]:
    """The rolling stats per endpoint and their level; log the crossings."""
    flush()
    current = int((now or time.time()) // 60)
    minutes = range(current - settings.SLO_WINDOW_MINUTES + 1, current + 1)
    try:
        totals = (read or _read)(_routes(), minutes)
    except Exception as exc:
        return {"status": "unknown", "error": exc.__class__.__name__, "endpoints": {}}
    endpoints: dict[str, Any] = {}
    for route, counts in totals.items():
        stats: dict[str, Any] = {
            "requests": counts["count"],
            "p50_ms": percentile(counts, 0.50),
            "p95_ms": percentile(counts, 0.95),
            "p99_ms": percentile(counts, 0.99),
            "success_rate": round(1 - counts.get("errors", 0) / counts["count"], 4),
        }
        stats["level"] = _level(stats)
        endpoints[route] = stats
        if log and stats["level"] != "ok":
            logger.log(
                logging.CRITICAL if stats["level"] == "critical" else logging.WARNING,
                "SLO %s for %s: p95=%.0fms success=%.2f%%",
                stats["level"],
                route,
                stats["p95_ms"],
                stats["success_rate"] * 100,
                extra={"route": route, "slo": stats},
            )
    levels = {stats["level"] for stats in endpoints.values()}
    status = "critical" if "critical" in levels else "warning" if "warning" in levels else "ok"
    return {
        "status": status,
        "window_minutes": settings.SLO_WINDOW_MINUTES,
        "thresholds": {
            "p95_warning_ms": settings.SLO_P95_WARNING_MS,
            "p95_critical_ms": settings.SLO_P95_CRITICAL_MS,
            "success_rate_min": settings.SLO_SUCCESS_RATE_MIN,
        },
        "endpoints": endpoints,
    }


def publish() -> None:
    """Copy the current rolling stats into the Prometheus gauges (for /metrics)."""
    from monitoring.metrics import SLO, SLO_SUCCESS

    try:
        result = evaluate(log=False)
    except Exception:
        return
    for route, stats in result["endpoints"].items():
        for quantile in ("p50", "p95", "p99"):
            SLO.labels(route, quantile).set(stats[f"{quantile}_ms"])
        SLO_SUCCESS.labels(route).set(stats["success_rate"])


def reset() -> None:
    with _lock:
        _pending.clear()


_last_pool_report = 0.0


def _flush_and_report() -> None:
    """The background tick: counts to Redis; this process's pool logged each minute."""
    global _last_pool_report
    from monitoring.pool import pool_report

    flush()
    if time.monotonic() - _last_pool_report >= 60:
        _last_pool_report = time.monotonic()
        pool_report()


flusher = PeriodicFlusher("velro-slo", _flush_and_report, lambda: settings.SLO_FLUSH_SECONDS)
