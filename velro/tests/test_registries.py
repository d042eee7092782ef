"""The platform's registries, filled by the apps at ready(): velro calls app code without importing it.

- velro.warmup: the worker warm-up (accounts registers its argon2 step);
- velro.errors: client mistakes answered in the shape of the surface asked
  (accounts registers GoTrue's for /auth/v1/).
"""

from __future__ import annotations

import json
import logging

import pytest
from django.core.exceptions import RequestDataTooBig
from django.http import JsonResponse
from django.test import RequestFactory

from velro import errors, warmup


@pytest.fixture
def restore_registries():
    steps, renderers = dict(warmup._steps), dict(errors._renderers)
    yield
    warmup._steps.clear()
    warmup._steps.update(steps)
    errors._renderers.clear()
    errors._renderers.update(renderers)


@pytest.mark.django_db
def test_warm_up_runs_the_platform_steps_then_the_registered_ones(restore_registries, caplog):
    ran: list[str] = []

    def broken() -> None:
        raise ConnectionError("down")

    warmup.register("mine", lambda: ran.append("mine"))
    warmup.register("broken", broken)
    with caplog.at_level(logging.WARNING, logger="velro.warmup"):
        timings = warmup.warm_up()
    names = list(timings)
    assert names[:2] == ["database", "cache"] and names[-2:] == ["mine", "broken"]
    assert "argon2" in names  # registered by accounts at ready()
    assert ran == ["mine"]
    assert "warm-up: broken failed (ConnectionError)" in [r.getMessage() for r in caplog.records]


def body(response) -> dict:
    return json.loads(response.content)


def test_a_client_mistake_is_answered_in_the_shape_of_the_surface_asked():
    too_big = RequestDataTooBig("Content-Length: 99999999")
    native = errors.client_error_response(RequestFactory().post("/api/v1/auth/login"), too_big)
    assert native.status_code == 413
    assert body(native)["error"] == "payload_too_large"
    gotrue = errors.client_error_response(RequestFactory().post("/auth/v1/token"), too_big)
    assert gotrue.status_code == 413
    assert body(gotrue)["error_code"] == "payload_too_large"  # registered by accounts at ready()
    assert errors.client_error_response(RequestFactory().get("/auth/v1/user"), ValueError("a bug")) is None


def test_the_longest_registered_prefix_wins(restore_registries):
    errors.register_client_error_renderer("/auth/v1/admin/", lambda request, exc: JsonResponse({"admin": 1}))
    request = RequestFactory().post("/auth/v1/admin/users")
    assert body(errors.client_error_response(request, RequestDataTooBig())) == {"admin": 1}
