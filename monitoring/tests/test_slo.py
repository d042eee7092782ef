"""SLOs per auth endpoint, read from the prometheus-client request metrics (monitoring.slo), and /admin/slo/.

Synthetic samples go into a fresh registry, through metrics of the same names
and buckets as monitoring/metrics.py; real requests go through the middleware
into this process's registry; a real gunicorn's two workers are read through
the multiprocess collector, as /metrics and /admin/slo/ read them. The alert
rules on the same metrics: test_alert_rules.py.
"""

from __future__ import annotations

import logging
import math
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.contrib.auth import get_user_model
from prometheus_client import CollectorRegistry, Counter, Histogram, multiprocess

from monitoring import metrics, slo
from velro.tests.support import http_get

pytestmark = pytest.mark.django_db(transaction=False)

SLO_URL = "/admin/slo/"
LOGIN = "/api/v1/auth/login"
INF = math.inf


class Synthetic:
    """The request counter and latency histogram of monitoring/metrics.py, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "velro_http_requests_total", "HTTP requests", ["route", "method", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "velro_http_request_duration_seconds",
            "Server time per request",
            ["route", "method"],
            buckets=metrics.LATENCY_BUCKETS,
            registry=self.registry,
        )

    def add(self, route: str, latencies_ms: list[float], *, errors: int = 0, method: str = "POST", status: int = 200):
        """One request per latency; the first `errors` of them answered 500."""
        for index, ms in enumerate(latencies_ms):
            self.requests.labels(route, method, str(500 if index < errors else status)).inc()
            self.latency.labels(route, method).observe(ms / 1000)
        return self

    def evaluate(self) -> dict:
        return slo.evaluate(self.registry)

    def stats(self, route: str) -> dict:
        result = self.evaluate()
        assert route in result["endpoints"], result
        return result["endpoints"][route]


@pytest.fixture
def synthetic() -> Synthetic:
    return Synthetic()


# --- histogram_quantile: Prometheus' algorithm ------------------------------------------------------


def test_quantile_of_nothing_is_none():
    assert slo.histogram_quantile(0.95, {}) is None
    assert slo.histogram_quantile(0.95, {0.5: 0, INF: 0}) is None
    assert slo.histogram_quantile(0.95, {0.5: 3, 1.0: 3}) is None  # no +Inf bucket: Prometheus gives NaN


def test_quantile_interpolates_inside_its_bucket():
    buckets = {0.25: 90, 0.5: 90, 1.0: 100, 2.5: 100, INF: 100}
    assert slo.histogram_quantile(0.95, buckets) == pytest.approx(0.75)  # halfway through (0.5, 1.0]
    assert slo.histogram_quantile(0.50, buckets) == pytest.approx(0.25 * 50 / 90)  # first bucket: from 0
    assert slo.histogram_quantile(0.90, buckets) == pytest.approx(0.25)


def test_quantile_in_the_inf_bucket_is_the_highest_finite_bound():
    assert slo.histogram_quantile(0.95, {0.5: 10, 1.0: 10, INF: 100}) == 1.0


# --- levels --------------------------------------------------------------------------------------------


def test_all_fast_is_ok(synthetic):
    stats = synthetic.add(LOGIN, [12.0] * 100).stats(LOGIN)
    assert stats["level"] == "ok"
    assert stats["requests"] == 100
    assert 10 < stats["p50_ms"] <= stats["p95_ms"] <= stats["p99_ms"] <= 25
    assert stats["success_rate"] == 1.0
    assert set(stats) == {"requests", "p50_ms", "p95_ms", "p99_ms", "success_rate", "level"}


def test_p95_between_warning_and_critical_is_a_warning(synthetic):
    stats = synthetic.add(LOGIN, [20.0] * 90 + [700.0] * 10).stats(LOGIN)
    assert stats["p95_ms"] == 750.0
    assert stats["level"] == "warning"


def test_p95_above_critical_is_critical(synthetic):
    stats = synthetic.add(LOGIN, [20.0] * 90 + [1800.0] * 10).stats(LOGIN)
    assert stats["p95_ms"] == 1750.0
    assert stats["level"] == "critical"


# The thresholds are bucket bounds (test_alert_rules.py checks it): requests that
# all took 300 ms are under the 500 ms warning, 900 ms ones under the 1 s critical.


def test_p95_under_the_warning_threshold_is_ok(synthetic):
    stats = synthetic.add(LOGIN, [300.0] * 100).stats(LOGIN)
    assert stats["p95_ms"] <= 500
    assert stats["level"] == "ok", stats


def test_p95_under_the_critical_threshold_is_only_a_warning(synthetic):
    stats = synthetic.add(LOGIN, [900.0] * 100).stats(LOGIN)
    assert 500 < stats["p95_ms"] <= 1000
    assert stats["level"] == "warning", stats


def test_success_rate_below_the_minimum_is_a_warning(synthetic):
    stats = synthetic.add(LOGIN, [20.0] * 100, errors=5).stats(LOGIN)
    assert stats["success_rate"] == 0.95
    assert stats["p95_ms"] < 500
    assert stats["level"] == "warning"


def test_success_rate_exactly_at_the_minimum_is_ok(synthetic):
    stats = synthetic.add(LOGIN, [20.0] * 100, errors=1).stats(LOGIN)
    assert stats["success_rate"] == 0.99
    assert stats["level"] == "ok"


def test_client_errors_are_successes(synthetic):
    stats = synthetic.add(LOGIN, [20.0] * 10, status=401).stats(LOGIN)
    assert stats["success_rate"] == 1.0


def test_overall_status_is_the_worst_endpoint(synthetic):
    synthetic.add(LOGIN, [20.0] * 10).add("/auth/v1/token", [700.0] * 10)
    result = synthetic.evaluate()
    assert result["endpoints"][LOGIN]["level"] == "ok"
    assert result["endpoints"]["/auth/v1/token"]["level"] == "warning"
    assert result["status"] == "warning"


def test_no_traffic_is_ok_with_no_endpoints(synthetic):
    result = synthetic.evaluate()
    assert result["status"] == "ok"
    assert result["endpoints"] == {}
    assert result["window"] == "since_start"


# --- which endpoints ---------------------------------------------------------------------------------


def test_only_auth_endpoints_without_the_probes_are_evaluated(synthetic):
    for route in ("/api/v1/auth/ping", "/api/v1/auth/middleware-status", "/auth/v1/health", "/health", "/admin/"):
        synthetic.add(route, [1800.0] * 10, errors=10, method="GET")
    synthetic.add("/api/v1/auth/me", [20.0], method="GET").add("/auth/v1/user", [20.0], method="GET")
    assert set(synthetic.evaluate()["endpoints"]) == {"/api/v1/auth/me", "/auth/v1/user"}


def test_the_methods_of_an_endpoint_add_up(synthetic):
    synthetic.add("/api/v1/auth/api-keys", [20.0] * 3, method="GET")
    synthetic.add("/api/v1/auth/api-keys", [20.0] * 4, method="POST")
    assert synthetic.stats("/api/v1/auth/api-keys")["requests"] == 7


# --- thresholds from settings ------------------------------------------------------------------------


def test_thresholds_come_from_settings(synthetic, settings):
    synthetic.add(LOGIN, [200.0] * 100)  # p95 in (100 ms, 250 ms]
    assert synthetic.stats(LOGIN)["level"] == "ok"
    settings.SLO_P95_WARNING_MS = 100
    assert synthetic.stats(LOGIN)["level"] == "warning"
    settings.SLO_P95_CRITICAL_MS = 200
    assert synthetic.stats(LOGIN)["level"] == "critical"


def test_success_rate_minimum_comes_from_settings(synthetic, settings):
    synthetic.add(LOGIN, [20.0] * 100, errors=5)
    assert synthetic.stats(LOGIN)["level"] == "warning"
    settings.SLO_SUCCESS_RATE_MIN = 0.9
    assert synthetic.stats(LOGIN)["level"] == "ok"


def test_thresholds_are_reported_with_the_result(synthetic, settings):
    settings.SLO_P95_WARNING_MS = 123.0
    settings.SLO_P95_CRITICAL_MS = 456.0
    settings.SLO_SUCCESS_RATE_MIN = 0.5
    result = synthetic.add(LOGIN, [20.0]).evaluate()
    assert result["thresholds"] == {"p95_warning_ms": 123.0, "p95_critical_ms": 456.0, "success_rate_min": 0.5}


# --- the real metrics ------------------------------------------------------------------------------------


def test_real_auth_requests_are_read_from_the_process_registry(api, user):
    before = slo.evaluate()["endpoints"].get(LOGIN, {}).get("requests", 0)
    response = api.post(LOGIN, {"email": user.email, "password": "nope nope"}, format="json")
    assert response.status_code == 401
    api.get("/api/v1/auth/ping")
    api.get("/health")
    endpoints = slo.evaluate()["endpoints"]
    assert endpoints[LOGIN]["requests"] == before + 1
    assert endpoints[LOGIN]["p95_ms"] > 0
    assert "/api/v1/auth/ping" not in endpoints
    assert "/health" not in endpoints


@pytest.mark.django_db(transaction=True)
def test_every_gunicorn_workers_requests_are_read_through_the_multiprocess_collector(start_gunicorn):
    server = start_gunicorn(workers=2)
    sent = 30
    with ThreadPoolExecutor(max_workers=6) as pool:
        statuses = list(pool.map(lambda _: http_get(server.port, "/api/v1/auth/me")[0], range(sent)))
    assert statuses == [401] * sent
    assert len(list(server.metrics_dir.glob("*.db"))) >= 2, server.log_tail(2000)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(server.metrics_dir))
    stats = slo.evaluate(registry)["endpoints"]["/api/v1/auth/me"]
    assert stats["requests"] == sent
    assert stats["success_rate"] == 1.0
    assert stats["level"] in {"ok", "warning", "critical"}  # latency on a loaded CI box is not asserted
    status, _ = http_get(server.port, SLO_URL)
    assert status == 302  # staff only, over HTTP too


def test_metrics_no_longer_carry_slo_gauges(client):
    client.get(LOGIN)
    body = client.get("/metrics").content
    assert b"velro_http_request_duration_seconds_bucket" in body
    assert b"velro_slo_" not in body


def test_the_pool_report_has_its_own_ticker(settings, caplog):
    """The DB pool line each minute, which rode on the former SLO flusher."""
    caplog.set_level(logging.INFO, logger="velro.pool")
    assert metrics.pool_reporter.interval() == 0  # off in tests (conftest)
    settings.POOL_REPORT_SECONDS = 60
    assert metrics.pool_reporter.interval() == 60
    metrics.pool_reporter.flush()
    assert [r.getMessage().startswith("db pool") for r in caplog.records if r.name == "velro.pool"] == [True]


def test_no_slo_task_is_scheduled(settings):
    from velro.celery import app

    assert "monitoring.evaluate_slos" not in app.tasks
    assert all(entry["task"] != "monitoring.evaluate_slos" for entry in settings.CELERY_BEAT_SCHEDULE.values())


# --- the admin endpoint ------------------------------------------------------------------------------


@pytest.fixture
def staff_client(client, db):
    staff = get_user_model().objects.create_superuser("slo-ops@example.com", "plum-harbour-velvet-42")
    client.force_login(staff)
    return client


def test_slo_endpoint_as_staff_is_json_with_the_endpoints(staff_client, api):
    api.get("/api/v1/auth/me")  # a 401, counted
    response = staff_client.get(SLO_URL)
    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"status", "window", "thresholds", "endpoints"}
    assert body["status"] in {"ok", "warning", "critical"}
    stats = body["endpoints"]["/api/v1/auth/me"]
    assert stats["requests"] >= 1
    assert set(stats) == {"requests", "p50_ms", "p95_ms", "p99_ms", "success_rate", "level"}


def test_slo_endpoint_anonymous_is_redirected_to_the_admin_login(client):
    response = client.get(SLO_URL)
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")
    assert b"endpoints" not in response.content


def test_slo_endpoint_for_a_non_staff_user_is_not_shown(client, user):
    client.force_login(user)
    response = client.get(SLO_URL)
    assert response.status_code == 302
    assert b"endpoints" not in response.content


def test_slo_endpoint_with_an_api_token_is_not_shown(auth_api):
    response = auth_api.get(SLO_URL)
    assert response.status_code != 200
    assert b"endpoints" not in response.content
