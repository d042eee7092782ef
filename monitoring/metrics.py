"""Prometheus metrics, correct under several gunicorn workers.

With PROMETHEUS_MULTIPROC_DIR set (gunicorn.conf.py sets it for the web
workers), prometheus-client writes each process's samples to files in that
directory and /metrics aggregates them; without it, the in-process registry
is used (tests, runserver).
"""

from __future__ import annotations

import os

# A configured but missing directory would crash every process at import.
if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.makedirs(os.environ["PROMETHEUS_MULTIPROC_DIR"], exist_ok=True)

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

REQUESTS = Counter("velro_http_requests_total", "HTTP requests", ["route", "method", "status"])
LATENCY = Histogram(
    "velro_http_request_duration_seconds", "Server time per request", ["route", "method"], buckets=LATENCY_BUCKETS
)
LOGINS = Counter("velro_login_outcomes_total", "Login outcomes", ["outcome"])
CACHE = Counter("velro_cache_operations_total", "Cache lookups by result", ["result"])
ENQUEUE_FAILURES = Counter("velro_celery_enqueue_failures_total", "Celery publishes that failed or were skipped")
POOL = Gauge("velro_db_connections", "Database connections of this process", ["state"], multiprocess_mode="livesum")
SLO = Gauge(
    "velro_slo_latency_ms",
    "Rolling latency percentiles per auth endpoint",
    ["route", "quantile"],
    multiprocess_mode="mostrecent",
)
SLO_SUCCESS = Gauge(
    "velro_slo_success_ratio", "Rolling success ratio per auth endpoint", ["route"], multiprocess_mode="mostrecent"
)


def observe_request(*, route: str, method: str, status: int, ms: float) -> None:
    REQUESTS.labels(route, method, str(status)).inc()
    LATENCY.labels(route, method).observe(ms / 1000)


def login_outcome(outcome: str) -> None:
    """success / invalid / rate_limited / unavailable."""
    LOGINS.labels(outcome).inc()


def exposition() -> bytes:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)
    return generate_latest()
