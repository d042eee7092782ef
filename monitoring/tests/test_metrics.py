"""GET /metrics: Prometheus exposition, restricted, correct under several gunicorn workers.

In-process tests read the deltas of the real registry through the endpoint
itself; the multi-process test starts a real gunicorn with two workers.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest
from django.db import connection
from prometheus_client.parser import text_string_to_metric_families

from accounts.tests.factories import DEFAULT_PASSWORD
from monitoring import pool
from referrals.tasks import sweep
from velro import tasks as velro_tasks
from velro.admission import password_admission
from velro.celery import app as celery_app
from velro.tests.support import http_get

METRICS = "/metrics"
LOGIN = "/api/v1/auth/login"
ME = "/api/v1/auth/me"
CLOSED_REDIS = "redis://127.0.0.1:1/0"


# --- helpers -----------------------------------------------------------------------------------


def parse(text: str) -> list[tuple[str, dict[str, str], float]]:
    return [
        (sample.name, dict(sample.labels), sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]


def value(text: str, name: str, **labels: str) -> float:
    """Sum of the samples called `name` whose labels include `labels` (0 if none)."""
    return sum(v for n, sample_labels, v in parse(text) if n == name and labels.items() <= sample_labels.items())


def delta(before: str, after: str, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def scrape(client, **extra) -> str:
    response = client.get(METRICS, **extra)
    assert response.status_code == 200, response.content[:300]
    return response.content.decode()


def login(api, email: str, password: str = DEFAULT_PASSWORD):
    return api.post(LOGIN, {"email": email, "password": password}, format="json")


@contextmanager
def broker_at(url: str) -> Iterator[None]:
    """This process's Celery app publishes to `url`, with fresh connection pools;
    Celery reads CELERY_BROKER_URL from the environment before its config, so
    both are switched, and everything is put back afterwards."""
    saved_env = os.environ.get("CELERY_BROKER_URL")
    saved_conf = celery_app.conf.broker_url

    def drop_pools(close: bool) -> None:
        for owner, attr in ((celery_app.amqp, "_producer_pool"), (celery_app, "_pool")):
            existing = getattr(owner, attr)
            if existing is not None and close:
                existing.force_close_all()
            setattr(owner, attr, None)

    drop_pools(close=False)
    os.environ["CELERY_BROKER_URL"] = url
    celery_app.conf.broker_url = url
    try:
        yield
    finally:
        drop_pools(close=True)
        if saved_env is None:
            os.environ.pop("CELERY_BROKER_URL", None)
        else:
            os.environ["CELERY_BROKER_URL"] = saved_env
        celery_app.conf.broker_url = saved_conf
        velro_tasks.enqueue_reset()


# --- exposition --------------------------------------------------------------------------------


@pytest.mark.django_db
def test_metrics_from_localhost_is_prometheus_text(client):
    client.get("/health")
    response = client.get(METRICS)
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    assert "version=0.0.4" in response["Content-Type"]
    text = response.content.decode()
    assert "# TYPE velro_http_requests_total counter" in text
    assert "# TYPE velro_http_request_duration_seconds histogram" in text
    assert value(text, "velro_http_requests_total", route="/health", method="GET", status="200") >= 1
    assert value(text, "velro_http_request_duration_seconds_bucket", route="/health", method="GET", le="+Inf") >= 1


@pytest.mark.django_db
def test_request_counter_and_histogram_count_each_request_by_route_and_status(client):
    before = scrape(client)
    for _ in range(3):
        client.get("/health")
    client.get("/nope-not-a-route")
    after = scrape(client)
    health = {"route": "/health", "method": "GET"}
    assert delta(before, after, "velro_http_requests_total", status="200", **health) == 3
    assert delta(before, after, "velro_http_request_duration_seconds_count", **health) == 3
    assert delta(before, after, "velro_http_requests_total", route="unmatched", status="404") == 1


@pytest.mark.django_db
def test_the_histogram_buckets_are_cumulative(client):
    client.get("/health")
    text = scrape(client)
    buckets = [
        (float(labels["le"]), v)
        for name, labels, v in parse(text)
        if name == "velro_http_request_duration_seconds_bucket" and labels["route"] == "/health"
    ]
    assert len(buckets) >= 10
    counts = [v for _, v in sorted(buckets)]
    assert counts == sorted(counts)


@pytest.mark.django_db
def test_login_outcomes_are_counted(api, client, user):
    before = scrape(client)
    assert login(api, user.email).status_code == 200
    assert login(api, user.email, "not the password").status_code == 401
    assert login(api, "ghost@example.com").status_code == 401
    after = scrape(client)
    counted = {
        outcome: delta(before, after, "velro_login_outcomes_total", outcome=outcome)
        for outcome in ("success", "invalid", "rate_limited", "unavailable")
    }
    assert counted == {"success": 1, "invalid": 2, "rate_limited": 0, "unavailable": 0}
    assert 'velro_login_outcomes_total{outcome="success"}' in after
    assert 'velro_login_outcomes_total{outcome="invalid"}' in after


@pytest.mark.django_db
def test_rate_limited_logins_are_counted(api, client, user, settings):
    settings.RATELIMIT_LOGIN_IP = (1, 60)
    before = scrape(client)
    assert login(api, user.email).status_code == 200
    assert login(api, user.email).status_code == 429
    after = scrape(client)
    assert 'velro_login_outcomes_total{outcome="rate_limited"}' in after
    assert delta(before, after, "velro_login_outcomes_total", outcome="rate_limited") == 1
    assert delta(before, after, "velro_login_outcomes_total", outcome="success") == 1


@pytest.mark.django_db
def test_logins_shed_by_admission_control_are_counted_by_reason(api, client, user, settings):
    settings.HASH_QUEUE_TIMEOUT_MS = 0
    pool = password_admission()
    before = scrape(client)
    for _ in range(pool.limit):
        pool.acquire(0)
    try:
        assert login(api, user.email).status_code == 503
    finally:
        for _ in range(pool.limit):
            pool.release()
    after = scrape(client)
    assert delta(before, after, "velro_admission_shed_total", pool="password_hash", reason="queue_full") == 1
    assert delta(before, after, "velro_login_outcomes_total", outcome="unavailable") == 1


@pytest.mark.django_db
def test_cache_hits_are_counted(auth_api, client):
    auth_api.get(ME)  # fills the cache
    before = scrape(client)
    assert auth_api.get(ME).status_code == 200
    after = scrape(client)
    assert 'velro_cache_operations_total{result="hit"}' in after
    assert delta(before, after, "velro_cache_operations_total", result="hit") >= 1


@pytest.mark.django_db
def test_enqueue_failures_are_counted(client):
    before = value(scrape(client), "velro_celery_enqueue_failures_total")
    with broker_at(CLOSED_REDIS):
        assert velro_tasks.enqueue(sweep) is False
        assert velro_tasks.enqueue(sweep) is False  # skipped by the breaker: counted too
    after_text = scrape(client)
    assert "velro_celery_enqueue_failures_total" in after_text
    assert value(after_text, "velro_celery_enqueue_failures_total") - before == 2


@pytest.mark.django_db
def test_pool_gauges_after_a_pool_report(client):
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    stats = pool.pool_report()
    assert stats["enabled"] is True
    text = scrape(client)
    assert "velro_db_connections" in text
    for state in ("size", "in_use", "idle", "waiting"):
        assert value(text, "velro_db_connections", state=state) == stats[state], state


# --- access control ----------------------------------------------------------------------------


@pytest.mark.django_db
def test_metrics_from_another_address_is_a_403_json(client):
    response = client.get(METRICS, REMOTE_ADDR="10.1.2.3")
    assert response.status_code == 403
    assert response.json()["error"] == "forbidden"
    assert b"velro_http_requests_total" not in response.content


@pytest.mark.django_db
def test_metrics_with_a_token_lets_another_address_in(client, settings):
    settings.METRICS_TOKEN = "t0k3n"
    response = client.get(METRICS, REMOTE_ADDR="10.1.2.3", HTTP_AUTHORIZATION="Bearer t0k3n")
    assert response.status_code == 200
    assert b"velro_http_requests_total" in response.content


@pytest.mark.django_db
@pytest.mark.parametrize("header", ["Bearer wrong", "Bearer t0k3n ", "Bearer t0k3", "t0k3n", "Basic dDBrM246", ""])
def test_metrics_with_a_wrong_token_stays_closed(client, settings, header):
    settings.METRICS_TOKEN = "t0k3n"
    response = client.get(METRICS, REMOTE_ADDR="10.1.2.3", HTTP_AUTHORIZATION=header)
    assert response.status_code == 403


@pytest.mark.django_db
def test_metrics_without_a_configured_token_ignores_bearer_headers(client, settings):
    settings.METRICS_TOKEN = ""
    response = client.get(METRICS, REMOTE_ADDR="10.1.2.3", HTTP_AUTHORIZATION="Bearer ")
    assert response.status_code == 403


@pytest.mark.django_db
def test_metrics_allowed_networks_come_from_settings(client, settings):
    import ipaddress

    settings.METRICS_ALLOWED_NETWORKS = [ipaddress.ip_network("10.1.0.0/16")]
    assert client.get(METRICS, REMOTE_ADDR="10.1.2.3").status_code == 200
    assert client.get(METRICS, REMOTE_ADDR="127.0.0.1").status_code == 403


# --- several gunicorn workers ------------------------------------------------------------------


@pytest.fixture
def gunicorn_server(start_gunicorn):
    """A real gunicorn, two workers, multiprocess metrics in a fresh directory."""
    return start_gunicorn(workers=2)


def worker_pids(metrics_dir: Path) -> set[int]:
    pids = set()
    for path in metrics_dir.glob("*.db"):
        match = re.search(r"_(\d+)\.db$", path.name)
        if match:
            pids.add(int(match.group(1)))
    return pids


@pytest.mark.django_db(transaction=True)
def test_metrics_sum_every_gunicorn_worker(gunicorn_server):
    port, metrics_dir = gunicorn_server.port, gunicorn_server.metrics_dir
    sent = 40
    with ThreadPoolExecutor(max_workers=8) as pool_:
        statuses = list(pool_.map(lambda _: http_get(port, "/health")[0], range(sent)))
    assert statuses == [200] * sent

    pids = worker_pids(metrics_dir)
    assert len(pids) >= 2, (sorted(p.name for p in metrics_dir.iterdir()), gunicorn_server.log_tail(2000))
    assert gunicorn_server.proc.pid not in pids  # the master serves nothing

    for _ in range(6):
        status, body = http_get(port, METRICS)
        assert status == 200, body[:300]
        text = body.decode()
        counted = value(text, "velro_http_requests_total", route="/health", method="GET", status="200")
        assert counted == sent, text[:2000]
        assert value(text, "velro_http_request_duration_seconds_count", route="/health", method="GET") == sent


@pytest.mark.django_db(transaction=True)
def test_gunicorn_metrics_stay_restricted_and_health_works_over_http(gunicorn_server):
    port = gunicorn_server.port
    status, body = http_get(port, "/health")
    assert status == 200
    assert json.loads(body) == {"status": "ok"}
    status, body = http_get(port, "/api/v1/auth/ping")
    assert status == 200, body
    assert json.loads(body)["database"]["status"] == "ok"
