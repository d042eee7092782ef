"""Prometheus metrics, correct under several gunicorn workers.

With PROMETHEUS_MULTIPROC_DIR set (gunicorn.conf.py sets it for the web
workers), prometheus-client writes each process's samples to files in that
directory and /metrics aggregates them; without it, the in-process registry
is used (tests, runserver).

The SLOs are read from the request histogram and counter: by Prometheus
(monitoring/prometheus/alerts.yml) and by monitoring.slo for /admin/slo/.
"""

from __future__ import annotations

import os

# A configured but missing directory would crash every process at import.
if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.makedirs(os.environ["PROMETHEUS_MULTIPROC_DIR"], exist_ok=True)

from django.conf import settings
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess

from velro.background import PeriodicFlusher

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

REQUESTS = Counter("velro_http_requests_total", "HTTP requests", ["route", "method", "status"])
LATENCY = Histogram(
    "velro_http_request_duration_seconds", "Server time per request", ["route", "method"], buckets=LATENCY_BUCKETS
)
LOGINS = Counter("velro_login_outcomes_total", "Login outcomes", ["outcome"])
CACHE = Counter("velro_cache_operations_total", "Cache lookups by result", ["result"])
ENQUEUE_FAILURES = Counter("velro_celery_enqueue_failures_total", "Celery publishes that failed or were skipped")
SHED = Counter("velro_admission_shed_total", "Requests shed by admission control (503 overloaded)", ["pool", "reason"])
POOL = Gauge("velro_db_connections", "Database connections of this process", ["state"], multiprocess_mode="livesum")


def observe_request(*, route: str, method: str, status: int, ms: float) -> None:
    REQUESTS.labels(route, method, str(status)).inc()
    LATENCY.labels(route, method).observe(ms / 1000)
    pool_reporter.ensure_started()


def login_outcome(outcome: str) -> None:
    """success / invalid / rate_limited / unavailable."""
    LOGINS.labels(outcome).inc()


def registry() -> CollectorRegistry:
    """Every worker's samples (multiprocess mode), else this process's registry."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        aggregated = CollectorRegistry()
        multiprocess.MultiProcessCollector(aggregated)
        return aggregated
    return REGISTRY


def exposition() -> bytes:
    return generate_latest(registry())


def _pool_report() -> None:
    from monitoring.pool import pool_report

    pool_report()


# Each serving process logs its pool statistics (and sets the POOL gauges) every
# POOL_REPORT_SECONDS; started by its first request.
pool_reporter = PeriodicFlusher("velro-pool-report", _pool_report, lambda: settings.POOL_REPORT_SECONDS)
