"""Request context, timing, the edge checks and the fast lane.

RequestContextMiddleware (outermost): request id (X-Request-ID in and out),
phase timings (velro.context; db via an execute wrapper; cache and hash
recorded by velro.cache and accounts.hashers), the `Server-Timing` header, request metrics.
Before anything else reads the request, it answers the client mistakes that
Django would otherwise raise deep inside another middleware or a view, and log
at ERROR with a traceback (`check_request`): a body over the upload limit is a
413 before a byte of it is read; a bad Host header or too many parameters, a
400; in the error shape of the surface asked (GoTrue's under /auth/v1/),
logged once at WARNING.

The FastLane* classes are Django's session, CSRF, auth and messages
middleware that step aside for the API and the probes: those routes
authenticate with bearer tokens, never read a session cookie or render a
form, so running the middleware would only cost time (a session lookup per
request, for instance). The admin keeps all of them. Each class is a
subclass of the one it replaces, so Django's admin checks still see it.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from django.conf import settings
from django.contrib.auth.middleware import AuthenticationMiddleware
from django.contrib.messages.middleware import MessageMiddleware
from django.contrib.sessions.middleware import SessionMiddleware
from django.core.exceptions import BadRequest, RequestDataTooBig
from django.db import connection
from django.http import HttpRequest, HttpResponse
from django.middleware.csrf import CsrfViewMiddleware

from monitoring import metrics
from monitoring.accesslog import access_log
from velro import context, errors
from velro.db import guard as db_guard
from velro.net import client_ip, is_trusted_caller

logger = logging.getLogger("velro.request")

FAST_LANE_PREFIXES = ("/api/", "/auth/v1/", "/health", "/metrics", "/__version")


def is_fast_lane(path: str) -> bool:
    return path.startswith(FAST_LANE_PREFIXES)


def check_request(request: HttpRequest) -> None:
    """Raise the client mistake `request` carries, if any, before a middleware or a view meets it.

    Django detects these lazily, wherever the Host header, the query string or the
    body is first read (CommonMiddleware, CsrfViewMiddleware, a view...), and answers
    with a 400 logged at ERROR with a traceback. A body over the limit is refused on
    its Content-Length, unread (velro/wsgi.py then closes the connection rather than
    drain it).
    """
    request.get_host()  # DisallowedHost
    request.GET  # noqa: B018 - parsed now: TooManyFieldsSent (DATA_UPLOAD_MAX_NUMBER_FIELDS)
    raw_length = request.META.get("CONTENT_LENGTH") or "0"
    try:
        length = int(raw_length)
    except ValueError:
        raise BadRequest("Invalid Content-Length header") from None
    if length > errors.body_limit():
        raise RequestDataTooBig(f"Content-Length: {length}")
    if request.method == "POST" and not is_fast_lane(request.path_info):
        # The admin's forms: TooManyFieldsSent, a malformed multipart body... here,
        # not in CsrfViewMiddleware.process_view, where no middleware can catch them.
        request.POST  # noqa: B018


def reject_client_error(request: HttpRequest) -> HttpResponse | None:
    """`check_request`'s error as a response in the surface's shape, logged once at WARNING; None if none."""
    try:
        check_request(request)
    except Exception as exc:
        # In the shape of the surface asked (velro.errors' registry: GoTrue's under /auth/v1/).
        response = errors.client_error_response(request, exc)
        if response is None:
            raise
        # Answered before CommonMiddleware, which would set it on the way out.
        response["Content-Length"] = str(len(response.content))
        return response
    return None


def _route(request: HttpRequest) -> str:
    match = getattr(request, "resolver_match", None)
    if match is not None and match.route:
        return "/" + match.route
    return "unmatched"


class RequestContextMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        # The record stays current after the response (until the next request
        # on this thread begins), so Django's own request logging, which runs
        # after the middleware chain, still carries the request id.
        record = context.begin(context.request_id_from(request.META.get("HTTP_X_REQUEST_ID")))
        request.request_id = record.request_id
        with connection.execute_wrapper(_time_query), connection.execute_wrapper(db_guard):
            response = reject_client_error(request) or self.get_response(request)
        total = record.total_ms()
        if record.shed:
            # Logged (once per second, with a count) by admission control;
            # Django would log each shed 503 at ERROR after this returns.
            response._has_been_logged = True
        response["X-Request-ID"] = record.request_id
        if is_trusted_caller(request):
            # Phase timings tell hash kinds apart (bcrypt vs argon2id users): operators only.
            response["Server-Timing"] = server_timing(record, total)
        route = _route(request)
        status = response.status_code
        metrics.observe_request(route=route, method=request.method or "", status=status, ms=total)
        if settings.ACCESS_LOG:
            access_log.write(access_line(request, response, route=route, request_id=record.request_id, ms=total))
        if request.method == "POST" and _is_login(route, request):
            metrics.login_outcome(_login_outcome(status))
        if settings.AUTH_TIMING_ENABLED and route.startswith("/api/v1/auth/"):
            logger.info(
                "timing %s %s %s",
                request.method,
                route,
                status,
                extra={"route": route, "status": status, "phases": _phases(record, total)},
            )
        return response


def access_line(request: HttpRequest, response: HttpResponse, *, route: str, request_id: str, ms: float) -> str:
    """The request's access log line: JSON (or one plain line with LOG_FORMAT=plain).

    The path without its query string: a query may carry a one-time token."""
    size = None if response.streaming else len(response.content)
    if settings.LOG_FORMAT == "plain":
        status = response.status_code
        return f'{client_ip(request)} "{request.method} {request.path}" {status} {size} {ms:.1f}ms [{request_id}]'
    return json.dumps(
        {
            "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "level": "INFO",
            "logger": "velro.access",
            "request_id": request_id,
            "remote_addr": client_ip(request),
            "method": request.method,
            "path": request.path,
            "route": route,
            "status": response.status_code,
            "bytes": size,
            "duration_ms": round(ms, 2),
            "user_agent": request.META.get("HTTP_USER_AGENT", ""),
        },
        ensure_ascii=False,
    )


def _is_login(route: str, request: HttpRequest) -> bool:
    """A password login: the native route, or GoTrue's token grant_type=password."""
    if route == "/api/v1/auth/login":
        return True
    return route == "/auth/v1/token" and request.GET.get("grant_type") == "password"


def _login_outcome(status: int) -> str:
    if status < 300:
        return "success"
    if status == 429:
        return "rate_limited"
    if status >= 500:
        return "unavailable"
    return "invalid"


def _time_query(execute: Callable, sql: str, params: Any, many: bool, ctx: dict) -> Any:
    start = time.perf_counter()
    try:
        return execute(sql, params, many, ctx)
    finally:
        record = context.current()
        if record is not None:
            record.add("db", (time.perf_counter() - start) * 1000)


def _phases(record: context.RequestRecord, total: float) -> dict[str, float]:
    phases = {name: round(ms, 2) for name, ms in record.phases.items()}
    phases["total"] = round(total, 2)
    return phases


def server_timing(record: context.RequestRecord, total: float) -> str:
    """`db;dur=0.41;desc="2 queries", cache;dur=0.12, hash;dur=21.7, total;dur=23.9`"""
    parts = []
    for name in ("db", "cache", "hash"):
        if name in record.phases:
            count = record.counts.get(name, 0)
            parts.append(f'{name};dur={record.phases[name]:.2f};desc="{count}x"')
    parts.append(f"total;dur={total:.2f}")
    return ", ".join(parts)


def _fast_lane(name: str, base: type) -> type:
    """`base`, stepping aside on fast-lane paths (and saying so in the record)."""

    def __call__(self: Any, request: HttpRequest) -> HttpResponse:
        record = context.current()
        if is_fast_lane(request.path_info):
            if record is not None:
                record.middleware_skipped.append(name)
            return self.get_response(request)
        if record is not None:
            record.middleware_ran.append(name)
        return base.__call__(self, request)

    attrs: dict[str, Any] = {"__call__": __call__, "__module__": __name__, "fast_lane_name": name}
    if hasattr(base, "process_view"):
        # The handler calls process_view directly, outside __call__.
        def process_view(self: Any, request: HttpRequest, *args: Any) -> Any:
            if is_fast_lane(request.path_info):
                return None
            return base.process_view(self, request, *args)

        attrs["process_view"] = process_view
    return type(f"FastLane{name}", (base,), attrs)


FastLaneSessionMiddleware = _fast_lane("SessionMiddleware", SessionMiddleware)
FastLaneCsrfViewMiddleware = _fast_lane("CsrfViewMiddleware", CsrfViewMiddleware)
FastLaneAuthenticationMiddleware = _fast_lane("AuthenticationMiddleware", AuthenticationMiddleware)
FastLaneMessageMiddleware = _fast_lane("MessageMiddleware", MessageMiddleware)
