"""GoTrue's error bodies for the /auth/v1/ surface, in both API versions.

- no `X-Supabase-Api-Version` request header (or a date before 2024-01-01):
  `{"code": <http status>, "error_code": "<code>", "msg": "<message>"}`;
- `X-Supabase-Api-Version: 2024-01-01` or later:
  `{"code": "<code>", "message": "<message>"}`, and the response carries
  `X-Supabase-Api-Version: 2024-01-01` (the official clients read it to pick
  the parser).

The services raise the same exceptions for both surfaces; `gotrue_error`
translates them here. The GoTrue views install `gotrue_exception_handler` on
their own class, so the native API keeps its own error shape.
"""

from __future__ import annotations

import logging
from datetime import date, datetime
from typing import Any

from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, JsonResponse
from rest_framework import exceptions as drf
from rest_framework.response import Response

from accounts.identities import IDENTITY_ERRORS
from accounts.mfa import InsufficientAal
from accounts.mfa import SessionNotFound as MfaSessionNotFound
from accounts.onetime import (
    BadCodeVerifier,
    EmailExists,
    EmailNotConfirmed,
    EmailSendTooSoon,
    FlowStateExpired,
    FlowStateNotFound,
    OneTimeTokenInvalid,
    ReauthenticationNotValid,
    UserNotFoundByEmail,
)
from accounts.passkeys import PasskeyError
from accounts.recovery_flows import RecoveryCodeInvalid, SecondFactorRequired
from accounts.services import RefreshTokenRejected, SamePassword, UserBanned
from accounts.totp import MfaError, UnenrollNeedsAal2
from velro.errors import (
    RETRY_AFTER_SECONDS,
    ApiError,
    Conflict,
    InvalidCredentials,
    InvalidRefreshToken,
    Overloaded,
    RateLimited,
    RefreshTokenReused,
    Unavailable,
    client_error,
    database_unavailable,
    log_client_error,
    register_client_error_renderer,
)

logger = logging.getLogger("velro.gotrue")

API_VERSION_HEADER = "X-Supabase-Api-Version"
API_VERSION_2024_01_01 = "2024-01-01"
_FIRST_VERSIONED = date(2024, 1, 1)
OVERLOADED_MESSAGE = "Server overloaded, please retry after a moment"


class GoTrueError(drf.APIException):
    """An error with GoTrue's status, code and message (an APIException, so DRF
    treats one raised during authentication like its own)."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        reasons: list[str] | None = None,
    ) -> None:
        super().__init__(message, code)
        self.status_code = status
        self.error_code = code
        self.message = message
        self.headers = headers or {}
        self.reasons = reasons  # weak_password only


def api_version(request: HttpRequest) -> str | None:
    """The API version the client asked for, as GoTrue resolves it: any date on
    or after 2024-01-01 means 2024-01-01; none, an earlier or a malformed one
    means the initial version (None)."""
    raw = request.META.get("HTTP_X_SUPABASE_API_VERSION", "").strip()
    if not raw:
        return None
    try:
        asked = datetime.strptime(raw, "%Y-%m-%d").date()
    except ValueError:
        return None
    return API_VERSION_2024_01_01 if asked >= _FIRST_VERSIONED else None


def error_body(request: HttpRequest, error: GoTrueError) -> tuple[dict[str, Any], dict[str, str]]:
    version = api_version(request)
    body: dict[str, Any]
    if version is None:
        body = {"code": error.status_code, "error_code": error.error_code, "msg": error.message}
    else:
        body = {"code": error.error_code, "message": error.message}
    if error.reasons is not None:
        body["weak_password"] = {"reasons": error.reasons}
    headers = dict(error.headers)
    if version is not None:
        headers[API_VERSION_HEADER] = version
    return body, headers


# --- the common codes ----------------------------------------------------------------


def validation_failed(message: str) -> GoTrueError:
    return GoTrueError(400, "validation_failed", message)


def no_authorization(message: str = "This endpoint requires a valid Bearer token") -> GoTrueError:
    return GoTrueError(401, "no_authorization", message)


def bad_jwt(detail: str) -> GoTrueError:
    return GoTrueError(403, "bad_jwt", f"invalid JWT: unable to parse or verify signature, {detail}")


def session_not_found() -> GoTrueError:
    return GoTrueError(403, "session_not_found", "Session from session_id claim in JWT does not exist")


# Django's password validators -> GoTrue's weak_password reasons.
WEAK_PASSWORD_REASONS = {
    "password_too_short": "length",
    "password_too_long": "length",
    "password_too_common": "pwned",
    "password_entirely_numeric": "characters",
    "password_too_similar": "characters",
}


def weak_password(messages: list[str], codes: list[str]) -> GoTrueError:
    reasons = list(dict.fromkeys(WEAK_PASSWORD_REASONS.get(code, "characters") for code in codes))
    return GoTrueError(422, "weak_password", " ".join(messages), reasons=reasons)


def weak_password_from(exc: drf.ValidationError) -> GoTrueError:
    """A service's password_validate error -> weak_password (422)."""
    details = exc.detail if isinstance(exc.detail, dict) else {"password": exc.detail}
    messages = [str(item) for items in details.values() for item in items]
    codes = [getattr(item, "code", "invalid") for items in details.values() for item in items]
    return weak_password(messages, codes)


_REFRESH_REJECTED = {
    "not_found": (400, "refresh_token_not_found", "Invalid Refresh Token: Refresh Token Not Found"),
    # GoTrue deletes a session's tokens at logout: an ended session's token is "not found".
    "session_ended": (400, "refresh_token_not_found", "Invalid Refresh Token: Refresh Token Not Found"),
    "reused": (400, "refresh_token_already_used", "Invalid Refresh Token: Already Used"),
    "session_expired": (400, "session_expired", "Invalid Refresh Token: Session Expired"),
    "user_inactive": (400, "user_banned", "Invalid Refresh Token: User Banned"),
}

_ONE_TIME_ERRORS = (
    OneTimeTokenInvalid,
    EmailSendTooSoon,
    EmailNotConfirmed,
    EmailExists,
    ReauthenticationNotValid,
    UserNotFoundByEmail,
    FlowStateNotFound,
    FlowStateExpired,
    BadCodeVerifier,
    *IDENTITY_ERRORS,  # sign in with a provider: GoTrue's codes (accounts.identities)
    # Recovery codes (beyond GoTrue): mfa_verification_failed as GoTrue's factor verify,
    # second_factor_required (accounts.recovery_flows).
    RecoveryCodeInvalid,
    SecondFactorRequired,
)

# Fallback code by status, for exceptions without a GoTrue equivalent.
_BY_STATUS = {
    400: "validation_failed",
    401: "no_authorization",
    403: "bad_jwt",
    404: "not_found",
    413: "payload_too_large",
    422: "validation_failed",
    429: "over_request_rate_limit",
}


def _validation_message(detail: Any) -> str:
    """The first message of a DRF error tree, prefixed with its field."""
    if isinstance(detail, dict):
        for name, value in detail.items():
            inner = _validation_message(value)
            return inner if name == "non_field_errors" else f"{name}: {inner}"
        return "Invalid input"
    if isinstance(detail, list):
        return _validation_message(detail[0]) if detail else "Invalid input"
    return str(detail)


def gotrue_error(exc: Exception) -> GoTrueError | None:
    """The GoTrue error for an exception raised under /auth/v1/, or None (a bug)."""
    if isinstance(exc, GoTrueError):
        return exc
    if isinstance(exc, UserBanned):
        return GoTrueError(400, "user_banned", "User is banned")
    if isinstance(exc, InvalidCredentials):
        return GoTrueError(400, "invalid_credentials", "Invalid login credentials")
    if isinstance(exc, RefreshTokenReused):
        return GoTrueError(400, *_REFRESH_REJECTED["reused"][1:])
    if isinstance(exc, RefreshTokenRejected):
        status, code, message = _REFRESH_REJECTED.get(exc.reason, _REFRESH_REJECTED["not_found"])
        return GoTrueError(status, code, message)
    if isinstance(exc, InvalidRefreshToken):
        return GoTrueError(*_REFRESH_REJECTED["not_found"])
    if isinstance(exc, RateLimited):
        return GoTrueError(429, "over_request_rate_limit", "Request rate limit reached", headers=exc.headers)
    if isinstance(exc, Overloaded):
        # GoTrue has no overload code; its vocabulary's 5xx one, with a 503 that
        # supabase-js and supabase-py treat as retryable (AuthRetryableFetchError),
        # unlike a 429, which they report as the caller's own rate limit.
        return GoTrueError(503, "unexpected_failure", OVERLOADED_MESSAGE, headers=dict(exc.headers))
    if isinstance(exc, (Unavailable, OperationalError, InterfaceError)):
        if not isinstance(exc, ApiError):
            database_unavailable(exc)  # the native surface's path: the breaker trips here too
        return GoTrueError(503, "unexpected_failure", Unavailable.detail, headers={"Retry-After": RETRY_AFTER_SECONDS})
    if isinstance(exc, Conflict) and exc.code == "email_taken":
        return GoTrueError(422, "user_already_exists", "User already registered")
    if isinstance(exc, SamePassword):
        return GoTrueError(422, "same_password", exc.detail)
    if isinstance(exc, PasskeyError):
        # GoTrue's own codes (webauthn_*, too_many_passkeys), but for its 404 passkey answer.
        return GoTrueError(exc.status, exc.gotrue_code or exc.code, exc.detail)
    if isinstance(exc, UnenrollNeedsAal2):
        return GoTrueError(422, exc.code, exc.detail)  # GoTrue's status for this one
    if isinstance(exc, (InsufficientAal, MfaError)):
        # GoTrue's own codes (insufficient_aal, mfa_verification_failed, mfa_challenge_expired...).
        return GoTrueError(exc.status, exc.code, exc.detail, headers=exc.headers)
    if isinstance(exc, MfaSessionNotFound):
        return session_not_found()
    if isinstance(exc, _ONE_TIME_ERRORS):
        # Their codes are GoTrue's own (otp_expired, over_email_send_rate_limit, flow_state_*...).
        return GoTrueError(exc.status, exc.code, exc.detail, headers=exc.headers)
    if isinstance(exc, ApiError):
        return GoTrueError(exc.status, _BY_STATUS.get(exc.status, exc.code), exc.detail, headers=exc.headers)
    if isinstance(exc, drf.ValidationError):
        return validation_failed(_validation_message(exc.detail))
    if isinstance(exc, drf.ParseError):
        return GoTrueError(400, "bad_json", "Could not parse request body as JSON")
    if isinstance(exc, drf.UnsupportedMediaType):
        return GoTrueError(415, "validation_failed", "Request body must be JSON (Content-Type: application/json)")
    if isinstance(exc, drf.NotAuthenticated):
        return no_authorization()
    if isinstance(exc, drf.MethodNotAllowed):
        return GoTrueError(405, "method_not_allowed", str(exc.detail))
    if isinstance(exc, drf.APIException):
        headers = {"Retry-After": str(int(exc.wait))} if getattr(exc, "wait", None) else {}
        code = _BY_STATUS.get(exc.status_code, "unexpected_failure")
        return GoTrueError(exc.status_code, code, _validation_message(exc.detail), headers=headers)
    return None


def _from_client_error(client: ApiError) -> GoTrueError:
    return GoTrueError(client.status, _BY_STATUS.get(client.status, client.code), client.detail)


def gotrue_exception_handler(exc: Exception, context: dict) -> Response | None:
    error = gotrue_error(exc)
    client = client_error(exc) if error is None else None
    if client is not None:
        # A body over the limit, too many parameters...: a client's mistake, one
        # WARNING line without a traceback, answered in GoTrue's shape.
        body, headers = error_body(context["request"], _from_client_error(client))
        response = Response(body, status=client.status, headers=headers)
        log_client_error(context["request"], exc, client, response)
        return response
    if error is None:
        # A bug: logged with its traceback, answered like GoTrue does.
        logger.exception("unhandled error on the GoTrue surface", exc_info=exc)
        error = GoTrueError(
            500, "unexpected_failure", "Unexpected failure, please check server logs for more information"
        )
    body, headers = error_body(context["request"], error)
    return Response(body, status=error.status_code, headers=headers)


def json_response(request: HttpRequest, error: GoTrueError) -> JsonResponse:
    """A GoTrue error as a plain Django response (outside DRF's views)."""
    body, headers = error_body(request, error)
    response = JsonResponse(body, status=error.status_code)
    for name, value in headers.items():
        response[name] = value
    return response


def gotrue_not_found(request: HttpRequest, path: str = "") -> JsonResponse:
    """Any /auth/v1/ route this server does not implement (OTP, OAuth, MFA, admin...)."""
    return json_response(request, GoTrueError(404, "not_found", f"/auth/v1/{path} is not supported by this server"))


def client_error_response(request: HttpRequest, exc: BaseException) -> JsonResponse | None:
    """velro.errors.client_error in GoTrue's shape, logged (None: not a client error)."""
    client = client_error(exc)
    if client is None:
        return None
    response = json_response(request, _from_client_error(client))
    log_client_error(request, exc, client, response)
    return response


PREFIX = "/auth/v1/"


def register() -> None:
    """Client mistakes the request middleware catches under /auth/v1/ (a body over the
    limit, a bad Host header...) are answered in GoTrue's shape (AccountsConfig.ready)."""
    register_client_error_renderer(PREFIX, client_error_response)
