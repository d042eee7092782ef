"""Shared pieces of the published OpenAPI contract (drf-spectacular)."""

from __future__ import annotations

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.utils import OpenApiResponse
from rest_framework import serializers


class ErrorOutput(serializers.Serializer):
    """Every error: {"error": "<code>", "detail": "<message>"} (+ "fields" on 400)."""

    error = serializers.CharField()
    detail = serializers.CharField()
    fields = serializers.DictField(child=serializers.ListField(child=serializers.CharField()), required=False)


_DESCRIPTIONS = {
    400: "validation_error (with fields) or invalid_json",
    401: "not_authenticated / invalid_token / invalid_credentials / invalid_refresh_token",
    403: "forbidden (e.g. an API key where a session is needed) / otp_expired (a one-time code or link that is wrong,"
    " used, replaced or expired) / insufficient_aal (verify a second factor first)",
    404: "not_found",
    405: "method_not_allowed",
    409: "email_taken / username_taken",
    413: "payload_too_large (body over REQUEST_BODY_MAX_BYTES; the connection is closed)",
    415: "unsupported_media_type (the API takes JSON)",
    422: "mfa_verification_failed (a wrong, used or malformed second-factor code) / mfa_challenge_expired /"
    " mfa_ip_address_mismatch / mfa_factor_not_found (a challenge) / mfa_factor_name_conflict /"
    " too_many_enrolled_mfa_factors / second_factor_required / too_many_passkeys /"
    " webauthn_credential_exists / webauthn_credential_not_found / single_identity_not_deletable /"
    " identity_already_exists / identity_not_found",
    429: "rate_limited / over_email_send_rate_limit (one email per address and purpose a minute), with Retry-After",
    502: "unexpected_failure (the sign-in provider did not answer)",
    503: "unavailable (database timed out or down) or overloaded (password work shed), with Retry-After",
}


def with_body_limit(statuses: tuple[int, ...]) -> list[int]:
    """Wherever a JSON body is read (415 listed), an oversized one is a 413."""
    return sorted({*statuses, 413}) if 415 in statuses else sorted(statuses)


def errors(*statuses: int) -> dict[int, OpenApiResponse]:
    """Error responses for a view; 400, 415, 503 are possible everywhere JSON is read."""
    return {
        status: OpenApiResponse(ErrorOutput, description=_DESCRIPTIONS[status]) for status in with_body_limit(statuses)
    }


class AccessTokenScheme(OpenApiAuthenticationExtension):
    target_class = "accounts.authentication.AccessTokenAuthentication"
    name = "bearerAuth"

    def get_security_definition(self, auto_schema: object) -> dict:
        return {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "JWT access token, or an API key (vk_live_...; also accepted as X-API-Key)",
        }


class GoTrueTokenScheme(OpenApiAuthenticationExtension):
    target_class = "accounts.gotrue.authentication.GoTrueTokenAuthentication"
    name = "gotrueBearer"

    def get_security_definition(self, auto_schema: object) -> dict:
        return {"type": "http", "scheme": "bearer", "bearerFormat": "GoTrue access token (JWT)"}
