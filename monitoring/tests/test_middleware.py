"""The fast lane, Server-Timing, request ids and their way into the logs."""

from __future__ import annotations

import importlib
import io
import json
import logging
import re

import pytest
from django.conf import settings as django_settings
from django.contrib.auth import get_user_model
from django.test import Client
from rest_framework.test import APIClient

from accounts.tests.factories import DEFAULT_PASSWORD, UserFactory

pytestmark = pytest.mark.django_db(transaction=False)

LOGIN = "/api/v1/auth/login"
ME = "/api/v1/auth/me"
STATUS = "/api/v1/auth/middleware-status"
ADMIN_LOGIN = "/admin/login/"
ADMIN_PASSWORD = "plum-harbour-velvet-42"
FAST_LANE = {
    "FastLaneSessionMiddleware",
    "FastLaneCsrfViewMiddleware",
    "FastLaneAuthenticationMiddleware",
    "FastLaneMessageMiddleware",
}
NUMBER = r"\d+(?:\.\d+)?"
ENTRY = rf'[a-z][a-z0-9_-]*;dur={NUMBER}(?:;desc="[^"]*")?'
SERVER_TIMING_RE = re.compile(rf"^(?:{ENTRY}, )*total;dur={NUMBER}$")
HEX32 = re.compile(r"^[0-9a-f]{32}$")


def timings(header: str) -> dict[str, dict[str, str]]:
    """`db;dur=0.41;desc="2x", total;dur=3.2` -> {"db": {"dur": "0.41", "desc": "2x"}, ...}"""
    out: dict[str, dict[str, str]] = {}
    for entry in header.split(", "):
        name, *params = entry.split(";")
        out[name] = {key: value.strip('"') for key, value in (param.split("=", 1) for param in params)}
    return out


def login_response(client: APIClient, user, password: str = DEFAULT_PASSWORD, **extra):
    return client.post(LOGIN, {"email": user.email, "password": password}, format="json", **extra)


@pytest.fixture
def staff(db):
    return get_user_model().objects.create_superuser("ops@example.com", ADMIN_PASSWORD)


# --- fast lane ---------------------------------------------------------------------------------


def test_middleware_status_proves_the_fast_lane(api):
    response = api.get(STATUS)
    assert response.status_code == 200
    body = response.json()
    assert body["path"] == STATUS
    assert body["fast_lane"] is True
    assert set(body["skipped"]) == FAST_LANE
    assert not FAST_LANE & set(body["ran"])


def test_middleware_status_lists_what_did_run(api):
    body = api.get(STATUS).json()
    configured = [path.rsplit(".", 1)[1] for path in django_settings.MIDDLEWARE]
    assert body["ran"] == [name for name in configured if name not in FAST_LANE]
    assert "RequestContextMiddleware" in body["ran"]
    assert "SecurityMiddleware" in body["ran"]


def test_fast_lane_api_response_sets_no_session_or_csrf_cookie(api, user):
    response = login_response(api, user)
    assert response.status_code == 200
    assert "csrftoken" not in response.cookies
    assert "sessionid" not in response.cookies


def test_admin_login_page_still_gets_csrf(client):
    response = client.get(ADMIN_LOGIN)
    assert response.status_code == 200
    assert "csrftoken" in response.cookies
    assert response.cookies["csrftoken"].value


def test_admin_login_post_without_a_csrf_token_is_rejected(staff):
    strict = Client(enforce_csrf_checks=True)
    response = strict.post(ADMIN_LOGIN, {"username": staff.email, "password": ADMIN_PASSWORD})
    assert response.status_code == 403
    assert "sessionid" not in response.cookies


def test_admin_login_post_with_the_csrf_token_logs_in_with_a_session(staff):
    strict = Client(enforce_csrf_checks=True)
    token = strict.get(ADMIN_LOGIN).cookies["csrftoken"].value
    response = strict.post(
        ADMIN_LOGIN, {"username": staff.email, "password": ADMIN_PASSWORD, "csrfmiddlewaretoken": token}
    )
    assert response.status_code == 302, response.content[:500]
    assert "sessionid" in response.cookies
    assert strict.get("/admin/").status_code == 200  # the session middleware ran for the admin


def test_api_login_needs_no_csrf_token(user):
    strict = Client(enforce_csrf_checks=True)
    response = strict.post(
        LOGIN, json.dumps({"email": user.email, "password": DEFAULT_PASSWORD}), content_type="application/json"
    )
    assert response.status_code == 200, response.content


# --- Server-Timing -----------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/health", "/__version", STATUS, "/api/v1/auth/ping", ME, "/nope", ADMIN_LOGIN])
def test_every_response_has_a_well_formed_server_timing(client, path):
    response = client.get(path)
    header = response["Server-Timing"]
    assert SERVER_TIMING_RE.match(header), header
    assert header.split(", ")[-1].startswith("total;dur=")
    assert float(timings(header)["total"]["dur"]) >= 0


def test_server_timing_on_a_login_has_the_hash_and_db_phases(api, user):
    response = login_response(api, user)
    assert response.status_code == 200
    header = response["Server-Timing"]
    assert SERVER_TIMING_RE.match(header), header
    phases = timings(header)
    # The argon2id verify: a sanity bound that proves the phase is the real hash, not a latency assertion.
    assert float(phases["hash"]["dur"]) >= 5
    assert phases["hash"]["desc"] == "1x"
    assert int(phases["db"]["desc"].rstrip("x")) >= 1
    assert float(phases["total"]["dur"]) >= float(phases["hash"]["dur"])


def test_server_timing_db_counts_the_queries(api, user):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as captured:
        response = login_response(api, user)
    count = int(timings(response["Server-Timing"])["db"]["desc"].rstrip("x"))
    assert count == len(captured.captured_queries)


def test_server_timing_on_me_has_the_cache_phase(auth_api):
    response = auth_api.get(ME)
    assert response.status_code == 200
    phases = timings(response["Server-Timing"])
    assert "cache" in phases
    assert int(phases["cache"]["desc"].rstrip("x")) >= 1
    assert "hash" not in phases


def test_server_timing_of_a_failed_login_still_has_the_hash(api, user):
    response = login_response(api, user, password="definitely not it")
    assert response.status_code == 401
    assert "hash" in timings(response["Server-Timing"])


# --- X-Request-ID ------------------------------------------------------------------------------


@pytest.mark.parametrize("request_id", ["abcdef12", "req-2024.05.01:node_7", "0123456789abcdef" * 8])
def test_a_well_formed_client_request_id_is_echoed(client, request_id):
    response = client.get("/health", HTTP_X_REQUEST_ID=request_id)
    assert response["X-Request-ID"] == request_id


@pytest.mark.parametrize(
    "request_id",
    ["has some spaces", "x" * 300, "<script>", "<script>alert(1)</script>", "short", "", "id\nInjected: 1"],
    ids=["spaces", "300-chars", "script-tag", "script", "too-short", "empty", "newline"],
)
def test_a_malformed_request_id_is_replaced_by_a_generated_one(client, request_id):
    response = client.get("/health", HTTP_X_REQUEST_ID=request_id)
    assert response["X-Request-ID"] != request_id
    assert HEX32.match(response["X-Request-ID"]), response["X-Request-ID"]


def test_without_a_request_id_each_response_gets_a_fresh_one(client):
    first = client.get("/health")["X-Request-ID"]
    second = client.get("/health")["X-Request-ID"]
    assert HEX32.match(first) and HEX32.match(second)
    assert first != second


def test_the_admin_gets_a_request_id_too(client):
    assert HEX32.match(client.get(ADMIN_LOGIN)["X-Request-ID"])


# --- request ids in the logs -------------------------------------------------------------------


def test_a_log_line_emitted_during_the_request_carries_its_request_id(api, caplog):
    caplog.set_level(logging.WARNING, logger="django.request")
    response = api.get(ME, HTTP_X_REQUEST_ID="trace-me-401-abc")
    assert response.status_code == 401
    records = [r for r in caplog.records if r.name == "django.request" and ME in r.getMessage()]
    assert records, [r.getMessage() for r in caplog.records]
    assert {r.request_id for r in records} == {"trace-me-401-abc"}


def test_a_generated_request_id_is_the_one_in_the_logs(api, caplog):
    caplog.set_level(logging.WARNING, logger="django.request")
    response = api.get(ME)
    assert response.status_code == 401
    records = [r for r in caplog.records if r.name == "django.request"]
    assert records
    assert records[-1].request_id == response["X-Request-ID"]


def build_configured_formatter(name: str = "json") -> logging.Formatter:
    config = dict(django_settings.LOGGING["formatters"][name])
    factory = config.pop("()")
    module, _, attr = factory.rpartition(".")
    return getattr(importlib.import_module(module), attr)(**config)


def test_the_json_formatter_renders_the_request_id(api, caplog):
    caplog.set_level(logging.WARNING, logger="django.request")
    response = api.get(ME, HTTP_X_REQUEST_ID="json-line-id-123")
    record = next(r for r in caplog.records if r.name == "django.request")
    line = json.loads(build_configured_formatter().format(record))
    assert line["request_id"] == response["X-Request-ID"] == "json-line-id-123"
    assert line["level"] == "WARNING"
    assert line["logger"] == "django.request"
    assert ME in line["message"]
    assert "time" in line


@pytest.fixture
def console_output():
    """What the configured console handler writes (the real log lines), captured."""
    handler = next(h for h in logging.getLogger().handlers if h.get_name() == "console")
    buffer = io.StringIO()
    previous = handler.setStream(buffer)
    try:
        yield buffer
    finally:
        handler.setStream(previous)


@pytest.mark.skipif(django_settings.LOG_FORMAT != "json", reason="LOG_FORMAT is not json in this environment")
def test_the_real_console_log_line_is_json_with_the_request_id(api, console_output):
    response = api.get(ME, HTTP_X_REQUEST_ID="console-line-42")
    assert response.status_code == 401
    lines = [json.loads(line) for line in console_output.getvalue().splitlines() if line.strip()]
    mine = [line for line in lines if line.get("logger") == "django.request"]
    assert mine, console_output.getvalue()
    assert {line["request_id"] for line in mine} == {"console-line-42"}


def test_a_log_line_outside_any_request_has_a_placeholder_request_id():
    from monitoring.logging import RequestIdFilter
    from velro.context import _current

    token = _current.set(None)
    try:
        record = logging.LogRecord("velro.test", logging.INFO, __file__, 1, "outside", None, None)
        assert RequestIdFilter().filter(record) is True
        assert record.request_id == "-"
        assert json.loads(build_configured_formatter().format(record))["request_id"] == "-"
    finally:
        _current.reset(token)


# --- AUTH_TIMING_ENABLED -----------------------------------------------------------------------


def timing_records(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "velro.request" and r.getMessage().startswith("timing ")]


def test_auth_timing_logs_one_phase_breakdown_per_login(api, user, settings, caplog):
    settings.AUTH_TIMING_ENABLED = True
    caplog.set_level(logging.INFO, logger="velro.request")
    response = login_response(api, user)
    assert response.status_code == 200
    records = timing_records(caplog)
    assert len(records) == 1, [r.getMessage() for r in records]
    record = records[0]
    assert record.route == LOGIN
    assert record.status == 200
    assert {"hash", "db", "total"} <= set(record.phases)
    assert record.phases["total"] >= record.phases["hash"] > 0
    assert record.request_id == response["X-Request-ID"]


def test_auth_timing_is_off_by_default(api, user, settings, caplog):
    settings.AUTH_TIMING_ENABLED = False
    caplog.set_level(logging.INFO, logger="velro.request")
    assert login_response(api, user).status_code == 200
    assert timing_records(caplog) == []


def test_auth_timing_leaves_non_auth_routes_alone(client, settings, caplog):
    settings.AUTH_TIMING_ENABLED = True
    caplog.set_level(logging.INFO, logger="velro.request")
    client.get("/health")
    assert timing_records(caplog) == []


def test_auth_timing_of_a_second_user_is_its_own_line(api, settings, caplog):
    settings.AUTH_TIMING_ENABLED = True
    caplog.set_level(logging.INFO, logger="velro.request")
    for user in (UserFactory(), UserFactory()):
        assert login_response(api, user).status_code == 200
    records = timing_records(caplog)
    assert len(records) == 2
    assert records[0].request_id != records[1].request_id
