"""What anonymous callers see: only what a load balancer needs. Operational
detail (timings, versions, error names, pool stats, middleware, metrics) is
for trusted callers: an allowed network without proxy headers, the operator
token, or a staff user."""

from __future__ import annotations

import pytest
from django.test import Client

from accounts.tests.factories import UserFactory

STRANGER = {"REMOTE_ADDR": "203.0.113.9"}
THROUGH_A_LOCAL_PROXY = {"REMOTE_ADDR": "127.0.0.1", "HTTP_X_FORWARDED_FOR": "203.0.113.9"}
LOCAL = {"REMOTE_ADDR": "127.0.0.1"}


@pytest.mark.django_db
def test_a_failed_login_shows_strangers_no_server_timing():
    user = UserFactory()
    response = Client().post(
        "/api/v1/auth/login",
        {"email": user.email, "password": "not the password"},
        content_type="application/json",
        **STRANGER,
    )
    assert response.status_code == 401
    assert "Server-Timing" not in response
    assert "Server-Timing" in Client().get("/health", **LOCAL)


@pytest.mark.parametrize("caller", [STRANGER, THROUGH_A_LOCAL_PROXY])
def test_the_version_probe_shows_anonymous_callers_the_version_and_commit_only(caller):
    body = Client().get("/__version", **caller).json()
    assert set(body) == {"version", "commit"}
    assert {"python", "django", "process_started"} <= set(Client().get("/__version", **LOCAL).json())


@pytest.mark.django_db
@pytest.mark.parametrize("caller", [STRANGER, THROUGH_A_LOCAL_PROXY])
def test_the_readiness_probe_shows_anonymous_callers_statuses_only(caller):
    body = Client().get("/api/v1/auth/ping", **caller).json()
    assert set(body) <= {"status", "checked_at", "database", "cache", "broker"}
    assert all(set(body[name]) == {"status"} for name in ("database", "cache", "broker"))
    assert "pool" in Client().get("/api/v1/auth/ping", **LOCAL).json()


@pytest.mark.parametrize("caller", [STRANGER, THROUGH_A_LOCAL_PROXY])
def test_the_middleware_list_is_not_shown_to_anonymous_callers(caller):
    assert Client().get("/api/v1/auth/middleware-status", **caller).status_code == 404
    assert Client().get("/api/v1/auth/middleware-status", **LOCAL).status_code == 200


def test_metrics_cannot_be_opened_through_a_proxy_hop_on_loopback(settings):
    settings.METRICS_TOKEN = "operator-token-" + "x" * 20
    assert Client().get("/metrics", **THROUGH_A_LOCAL_PROXY).status_code == 403
    assert Client().get("/metrics", **STRANGER).status_code == 403
    token = {"HTTP_AUTHORIZATION": f"Bearer {settings.METRICS_TOKEN}"}
    assert Client().get("/metrics", **THROUGH_A_LOCAL_PROXY, **token).status_code == 200
    assert Client().get("/metrics", **LOCAL).status_code == 200


@pytest.mark.django_db
def test_a_staff_user_signed_in_to_the_admin_is_trusted_from_anywhere(admin_user):
    browser = Client(**STRANGER)
    browser.force_login(admin_user)
    assert "Server-Timing" in browser.get("/admin/")
    assert "Server-Timing" not in Client(**STRANGER).get("/admin/login/")
