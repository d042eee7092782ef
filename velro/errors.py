"""One error shape everywhere: {"error": "<code>", "detail": "<message>"} (+ "fields").

Services raise ApiError subclasses; DRF's exceptions and database outages are
translated here, so no input and no dependency failure becomes a 500 with a
traceback.
"""

from __future__ import annotations

import logging
from typing import Any

from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, JsonResponse
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


class Unavailable(ApiError):
    status = 503
    code = "unavailable"
    detail = "Service temporarily unavailable; try again shortly"


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
        logger.warning("database unavailable: %s", exc.__class__.__name__, exc_info=False)
        breaker.trip(exc)
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
    return None  # anything else is a bug: Django logs it and json_500 answers


class DatabaseUnavailableMiddleware:
    """Turns a database outage outside DRF views (admin, middleware) into 503 JSON."""

    def __init__(self, get_response: Any) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> Any:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> JsonResponse | None:
        if isinstance(exception, (OperationalError, InterfaceError)):
            logger.warning("database unavailable: %s", exception.__class__.__name__)
            breaker.trip(exception)
            return unavailable_response()
        return None


def json_404(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    return JsonResponse(error_body("not_found", "Not found"), status=404)


def json_500(request: HttpRequest) -> JsonResponse:
    return JsonResponse(error_body("server_error", "Internal server error"), status=500)


def json_400(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    return JsonResponse(error_body("bad_request", "Bad request"), status=400)


def json_403(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    return JsonResponse(error_body("forbidden", "Forbidden"), status=403)
