"""SLOs per auth endpoint, read from the prometheus-client request metrics.

Every request is counted once, by the request middleware, into
`velro_http_request_duration_seconds` (latency histogram, by route and method)
and `velro_http_requests_total` (by route, method and status): see
monitoring/metrics.py. Prometheus scrapes them, and the rolling SLOs are its
rules (monitoring/prometheus/alerts.yml: p95 over 500 ms warns, over 1000 ms is
critical, a success rate under 99% warns, each over 5 minutes).

evaluate() reads the same samples for the staff page /admin/slo/: this
process's registry, or every gunicorn worker's through the multiprocess
collector. The counters are cumulative, so its numbers cover everything since
they started (the deploy); the rolling window is Prometheus'. Percentiles are
computed as Prometheus' histogram_quantile() does, so both agree on the same
samples.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

from django.conf import settings
from prometheus_client import CollectorRegistry

from monitoring import metrics

AUTH_PREFIXES = ("/api/v1/auth/", "/auth/v1/")
UNTRACKED_SUFFIXES = ("/ping", "/middleware-status", "/health")


def tracked(route: str) -> bool:
    """An auth endpoint, not a probe (the same selection as the alert rules)."""
    return route.startswith(AUTH_PREFIXES) and not route.endswith(UNTRACKED_SUFFIXES)


def histogram_quantile(q: float, buckets: dict[float, float]) -> float | None:
    """Prometheus' histogram_quantile over cumulative counts by upper bound ("le"), +Inf included.

    Linear interpolation inside the bucket the rank falls in (from 0 for the
    first one); a rank in the +Inf bucket gives the highest finite bound.
    None without observations.
    """
    edges = sorted(buckets)
    if not edges or not math.isinf(edges[-1]) or buckets[edges[-1]] <= 0:
        return None
    rank = q * buckets[edges[-1]]
    index = next(i for i, edge in enumerate(edges) if buckets[edge] >= rank or i == len(edges) - 1)
    if index == len(edges) - 1:
        return edges[-2] if len(edges) > 1 else None
    edge = edges[index]
    start, below = (edges[index - 1], buckets[edges[index - 1]]) if index else (0.0, 0.0)
    in_bucket = buckets[edge] - below
    if in_bucket <= 0:
        return edge
    return start + (edge - start) * (rank - below) / in_bucket


def _collect(registry: CollectorRegistry) -> tuple[dict[str, dict[float, float]], dict[str, list[float]]]:
    """Per tracked route: cumulative bucket counts (all methods) and [requests, 5xx answers]."""
    buckets: dict[str, dict[float, float]] = defaultdict(lambda: defaultdict(float))
    requests: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for family in registry.collect():
        for sample in family.samples:
            route = sample.labels.get("route", "")
            if not tracked(route):
                continue
            if sample.name == "velro_http_request_duration_seconds_bucket":
                buckets[route][float(sample.labels["le"])] += sample.value
            elif sample.name == "velro_http_requests_total":
                requests[route][0] += sample.value
                if sample.labels.get("status", "").startswith("5"):
                    requests[route][1] += sample.value
    return buckets, requests


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def _level(stats: dict[str, Any]) -> str:
    """The alert rules' comparisons: p95 above a threshold, success rate below the minimum."""
    p95 = stats["p95_ms"] or 0.0
    if p95 > settings.SLO_P95_CRITICAL_MS:
        return "critical"
    if p95 > settings.SLO_P95_WARNING_MS or stats["success_rate"] < settings.SLO_SUCCESS_RATE_MIN:
        return "warning"
    return "ok"


def evaluate(registry: CollectorRegistry | None = None) -> dict[str, Any]:
    """p50/p95/p99, success rate and level per auth endpoint, since the counters started."""
    buckets, requests = _collect(registry or metrics.registry())
    endpoints: dict[str, Any] = {}
    for route, (total, errors) in sorted(requests.items()):
        if total <= 0:
            continue
        stats: dict[str, Any] = {
            "requests": int(total),
            "p50_ms": _ms(histogram_quantile(0.50, buckets[route])),
            "p95_ms": _ms(histogram_quantile(0.95, buckets[route])),
            "p99_ms": _ms(histogram_quantile(0.99, buckets[route])),
            "success_rate": round(1 - errors / total, 4),
        }
        stats["level"] = _level(stats)
        endpoints[route] = stats
    levels = {stats["level"] for stats in endpoints.values()}
    return {
        "status": "critical" if "critical" in levels else "warning" if "warning" in levels else "ok",
        "window": "since_start",  # the rolling window: Prometheus, monitoring/prometheus/alerts.yml
        "thresholds": {
            "p95_warning_ms": settings.SLO_P95_WARNING_MS,
            "p95_critical_ms": settings.SLO_P95_CRITICAL_MS,
            "success_rate_min": settings.SLO_SUCCESS_RATE_MIN,
        },
        "endpoints": endpoints,
    }
