"""One error shape everywhere: {"error": "<code>", "detail": "<message>"} (+ "fields").

Services raise ApiError subclasses; DRF's exceptions and database outages are
translated here, so no input and no dependency failure becomes a 500 with a
traceback. Client mistakes Django itself detects while reading a request (a
body over the upload limit, too many parameters, a malformed multipart body, a
Host header not in ALLOWED_HOSTS) are 4xx answers logged once at WARNING,
without a traceback: see `client_error`; a surface with its own error shape
(accounts' GoTrue surface under /auth/v1/) registers its renderer for them
at ready() (`register_client_error_renderer`). A database failure goes to the
breaker through one path, `database_unavailable`, whatever the surface.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.core.exceptions import (
    BadRequest,
    DisallowedHost,
    RequestDataTooBig,
    SuspiciousOperation,
    TooManyFieldsSent,
    TooManyFilesSent,
)
from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse, JsonResponse, UnreadablePostError
from django.http.multipartparser import MultiPartParserError
from rest_framework import exceptions as drf
from rest_framework.parsers import JSONParser
from rest_framework.response import Response

from velro.db import breaker

logger = logging.getLogger("velro.errors")

RETRY_AFTER_SECONDS = "2"


class SafeJSONParser(JSONParser):
    """DRF's JSONParser, plus: a body nested deeper than Python's recursion
    limit ("[[[[..." x 100000) is invalid JSON (400), not a RecursionError (500)."""

    def parse(self, stream: Any, media_type: str | None = None, parser_context: dict | None = None) -> Any:
        try:
            return super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise drf.ParseError("JSON nested too deeply") from None


class ApiError(Exception):
    status = 400
    code = "bad_request"
    detail = "Bad request"

    def __init__(self, detail: str | None = None, *, code: str | None = None, headers: dict | None = None):
        super().__init__(detail or self.detail)
        self.detail = detail or self.detail
        self.code = code or self.code
        self.headers = headers or {}


class InvalidCredentials(ApiError):
    status = 401
    code = "invalid_credentials"
    detail = "Invalid login credentials"


class InvalidRefreshToken(ApiError):
    status = 401
    code = "invalid_refresh_token"
    detail = "Invalid refresh token"


class RefreshTokenReused(InvalidRefreshToken):
    """A rotated token replayed after the grace window: its family was revoked."""

    def __init__(self, *, user_id: object) -> None:
        super().__init__()
        self.user_id = user_id


class Conflict(ApiError):
    status = 409
    code = "conflict"


class RateLimited(ApiError):
    status = 429
    code = "rate_limited"
    detail = "Too many requests; try again later"


class PayloadTooLarge(ApiError):
    status = 413
    code = "payload_too_large"
    detail = "Request body too large"


class Unavailable(ApiError):
    status = 503
    code = "unavailable"
    detail = "Service temporarily unavailable; try again shortly"


class Overloaded(ApiError):
    """Shed by admission control (velro.admission) before any costly work: every
    slot was busy, or the client had gone, or the request had waited too long.
    `reason` says which (logged and counted, not shown to the client)."""

    status = 503
    code = "overloaded"
    detail = "Server busy; try again shortly"

    def __init__(self, detail: str | None = None, *, reason: str = "queue_full") -> None:
        super().__init__(detail, headers={"Retry-After": RETRY_AFTER_SECONDS})
        self.reason = reason


def error_body(code: str, detail: str, fields: dict | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"error": code, "detail": detail}
    if fields is not None:
        body["fields"] = fields
    return body


def _flatten(detail: Any) -> Any:
    """DRF's ErrorDetail tree -> plain lists/dicts of strings."""
    if isinstance(detail, dict):
        return {str(key): _flatten(value) for key, value in detail.items()}
    if isinstance(detail, list):
        return [_flatten(item) for item in detail]
    return str(detail)


_DRF_CODES: list[tuple[type[drf.APIException], str]] = [
    (drf.ParseError, "invalid_json"),
    (drf.NotAuthenticated, "not_authenticated"),
    (drf.AuthenticationFailed, "invalid_token"),
    (drf.PermissionDenied, "forbidden"),
    (drf.NotFound, "not_found"),
    (drf.MethodNotAllowed, "method_not_allowed"),
    (drf.NotAcceptable, "not_acceptable"),
    (drf.UnsupportedMediaType, "unsupported_media_type"),
    (drf.Throttled, "rate_limited"),
]


def unavailable_response() -> JsonResponse:
    response = JsonResponse(error_body(Unavailable.code, Unavailable.detail), status=503)
    response["Retry-After"] = RETRY_AFTER_SECONDS
    return response


def overloaded_response() -> JsonResponse:
    response = JsonResponse(error_body(Overloaded.code, Overloaded.detail), status=503)
    response["Retry-After"] = RETRY_AFTER_SECONDS
    return response


# --- client mistakes detected by Django while it reads the request ------------------------

# Django's fallback when DATA_UPLOAD_MAX_MEMORY_SIZE is None (no limit): the
# edge check and the keep-alive drain (velro/wsgi.py) still need a bound.
DEFAULT_BODY_LIMIT = 2_621_440


def body_limit() -> int:
    """The largest request body accepted, in bytes (DATA_UPLOAD_MAX_MEMORY_SIZE)."""
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    return DEFAULT_BODY_LIMIT if limit is None else int(limit)


def payload_too_large() -> PayloadTooLarge:
    return PayloadTooLarge(f"Request body exceeds the limit of {body_limit()} bytes")


def client_error(exc: BaseException) -> ApiError | None:
    """The 4xx answer for an exception Django raises on a client's mistake while it
    reads the request, or None when `exc` is not one (a bug, an outage).

    Django answers these itself with a 400, but logs most of them at ERROR with a
    traceback (django.security.*), and RequestDataTooBig is a 413, not a 400.
    """
    if isinstance(exc, RequestDataTooBig):
        return payload_too_large()
    if isinstance(exc, DisallowedHost):
        return ApiError("Invalid Host header")
    if isinstance(exc, (TooManyFieldsSent, TooManyFilesSent)):
        return ApiError("Too many parameters")
    if isinstance(exc, MultiPartParserError):
        return ApiError("Malformed multipart body")
    if isinstance(exc, UnreadablePostError):
        return ApiError("Request body could not be read")
    if isinstance(exc, (SuspiciousOperation, BadRequest)):
        return ApiError()
    return None


def _escaped(value: object) -> str:
    # As Django's log_response does: a path or Host header cannot forge log lines.
    return str(value).encode("unicode_escape").decode("ascii")


def log_client_error(request: HttpRequest, exc: BaseException, error: ApiError, response: HttpResponse) -> None:
    """One WARNING line, no traceback: a client's mistake is not the server's error.

    SuspiciousOperations keep Django's logger name (django.security.<Class>), so
    alerting on those loggers still sees them. The response is marked as logged,
    so Django's own request logging does not add a second line for it.
    """
    if isinstance(exc, SuspiciousOperation):
        log = logging.getLogger(f"django.security.{exc.__class__.__name__}")
    else:
        log = logger
    log.warning(
        "%s %s: %s (%s)",
        error.status,
        _escaped(request.path),
        error.detail,
        _escaped(exc),
        extra={"status_code": error.status},
    )
    response._has_been_logged = True  # read by django.utils.log.log_response


def native_client_error_response(request: HttpRequest, exc: BaseException) -> JsonResponse | None:
    """`client_error` as a logged JSON response in this module's shape (None: not a client error)."""
    error = client_error(exc)
    if error is None:
        return None
    response = JsonResponse(error_body(error.code, error.detail), status=error.status)
    log_client_error(request, exc, error, response)
    return response


# A surface with its own error shape under a path prefix (accounts' GoTrue surface
# under /auth/v1/) registers its renderer in its AppConfig.ready(): velro imports no app.
ClientErrorRenderer = Callable[[HttpRequest, BaseException], HttpResponse | None]
_renderers: dict[str, ClientErrorRenderer] = {}


def register_client_error_renderer(prefix: str, render: ClientErrorRenderer) -> None:
    """Answer client mistakes on paths starting with `prefix` with `render(request, exc)`,
    which returns the logged response, or None when `exc` is not a client mistake."""
    _renderers[prefix] = render


def client_error_response(request: HttpRequest, exc: BaseException) -> HttpResponse | None:
    """`client_error` as a logged response in the shape of the surface the path belongs to
    (the longest registered prefix; this module's shape elsewhere). None: not a client error."""
    path = request.path_info
    prefixes = [prefix for prefix in _renderers if path.startswith(prefix)]
    render = _renderers[max(prefixes, key=len)] if prefixes else native_client_error_response
    return render(request, exc)


# --- DRF -----------------------------------------------------------------------------------


def database_unavailable(exc: Exception) -> None:
    """The one path from a database failure to the breaker, for every surface:
    log it (no traceback: it is an outage, not a bug) and fail fast for a moment."""
    logger.warning("database unavailable: %s", exc.__class__.__name__)
    breaker.trip(exc)


def api_exception_handler(exc: Exception, context: dict) -> Response | None:
    if isinstance(exc, ApiError):
        return Response(error_body(exc.code, exc.detail), status=exc.status, headers=exc.headers)
    if isinstance(exc, drf.ValidationError):
        fields = _flatten(exc.detail)
        if not isinstance(fields, dict):
            fields = {"non_field_errors": fields}
        return Response(error_body("validation_error", "Invalid input", fields), status=400)
    if isinstance(exc, (OperationalError, InterfaceError)):
        # Statement/lock timeout, or the database is down: answer fast and
        # tell the client when to retry instead of surfacing a traceback.
        database_unavailable(exc)
        return Response(
            error_body(Unavailable.code, Unavailable.detail),
            status=503,
            headers={"Retry-After": RETRY_AFTER_SECONDS},
        )
    if isinstance(exc, drf.APIException):
        code = next((c for kind, c in _DRF_CODES if isinstance(exc, kind)), exc.default_code)
        headers = {}
        if getattr(exc, "auth_header", None):
            headers["WWW-Authenticate"] = exc.auth_header
        if getattr(exc, "wait", None):
            headers["Retry-After"] = str(int(exc.wait))
        if isinstance(exc, drf.ParseError):
            detail = "Request body is not valid JSON"
        else:
            detail = exc.detail if isinstance(exc.detail, str) else _flatten(exc.detail)
        return Response(error_body(code, str(detail)), status=exc.status_code, headers=headers)
    client = client_error(exc)
    if client is not None:
        response = Response(error_body(client.code, client.detail), status=client.status)
        log_client_error(context["request"], exc, client, response)
        return response
    return None  # anything else is a bug: Django logs it and json_500 answers


class DatabaseUnavailableMiddleware:
    """Turns a database outage outside DRF views (admin, middleware) into 503 JSON,
    a shed sign-in (the admin's login under overload: Overloaded) into 503
    `overloaded`, and a client mistake Django detects in a view (admin) into a
    logged 4xx."""

    def __init__(self, get_response: Any) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> Any:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> JsonResponse | None:
        if isinstance(exception, (OperationalError, InterfaceError)):
            database_unavailable(exception)
            return unavailable_response()
        if isinstance(exception, Overloaded):
            return overloaded_response()
        return client_error_response(request, exception)


def json_404(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    return JsonResponse(error_body("not_found", "Not found"), status=404)


def json_500(request: HttpRequest) -> JsonResponse:
    return JsonResponse(error_body("server_error", "Internal server error"), status=500)


def json_400(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    return JsonResponse(error_body("bad_request", "Bad request"), status=400)


def json_403(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    return JsonResponse(error_body("forbidden", "Forbidden"), status=403)
