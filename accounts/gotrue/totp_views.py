"""GoTrue's /factors routes (TOTP second factors): accounts.totp in GoTrue's shapes.

POST /factors (enroll), POST /factors/{id}/challenge, POST /factors/{id}/verify
(answers a session, at aal2), DELETE /factors/{id}. Phone and WebAuthn factors
are answered as a GoTrue with those factor types disabled (passkeys are
Velro's own /passkeys routes).
"""

from __future__ import annotations

import uuid
from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from accounts import totp
from accounts.gotrue.errors import GoTrueError, validation_failed
from accounts.gotrue.serializers import GoTrueSessionOutput, session_body
from accounts.gotrue.views import SURFACE, GoTrueView, _errors, _valid
from accounts.serializers import StrictCharField

DISABLED_TYPES = {
    "phone": ("mfa_phone_enroll_not_enabled", "MFA enroll is disabled for Phone"),
    "webauthn": ("mfa_webauthn_enroll_not_enabled", "MFA enroll is disabled for WebAuthn"),
}


def _optional(max_length: int) -> StrictCharField:
    return StrictCharField(required=False, allow_blank=True, allow_null=True, max_length=max_length)


class GoTrueFactorEnrollInput(serializers.Serializer):
    factor_type = _optional(32)
    friendly_name = _optional(64)
    issuer = _optional(256)
    phone = _optional(64)


class GoTrueFactorChallengeInput(serializers.Serializer):
    channel = _optional(32)


class GoTrueFactorVerifyInput(serializers.Serializer):
    challenge_id = _optional(64)
    code = _optional(32)


class GoTrueTotpOutput(serializers.Serializer):
    qr_code = serializers.CharField(help_text="An SVG image (prefix data:image/svg+xml;utf-8, to display it)")
    secret = serializers.CharField()
    uri = serializers.CharField()


class GoTrueFactorEnrollOutput(serializers.Serializer):
    id = serializers.UUIDField()
    type = serializers.CharField()
    friendly_name = serializers.CharField(allow_blank=True)
    totp = GoTrueTotpOutput()


class GoTrueFactorChallengeOutput(serializers.Serializer):
    id = serializers.UUIDField()
    type = serializers.CharField()
    expires_at = serializers.IntegerField()


class GoTrueFactorVerifyOutput(GoTrueSessionOutput):
    recovery_codes = serializers.ListField(
        child=serializers.CharField(),
        required=False,
        help_text="Beyond GoTrue: the recovery codes, on the verify that adds the user's first second factor only",
    )


class GoTrueFactorUnenrollOutput(serializers.Serializer):
    id = serializers.UUIDField()


def _factor_id(raw: str) -> uuid.UUID:
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise GoTrueError(404, "validation_failed", "factor_id must be an UUID") from None


class FactorsGoTrueView(GoTrueView):
    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        super().initial(request, *args, **kwargs)
        if request.user.is_authenticated and request.user.is_anonymous_user:
            raise GoTrueError(403, "no_authorization", "Anonymous user not allowed to perform these actions")


class FactorsView(FactorsGoTrueView):
    @extend_schema(
        request=GoTrueFactorEnrollInput,
        responses={200: GoTrueFactorEnrollOutput, **_errors(400, 401, 403, 415, 422, 503)},
        summary="GoTrue: enroll a TOTP factor (unverified until a code is verified)",
    )
    def post(self, request: Request) -> Response:
        data = _valid(GoTrueFactorEnrollInput, request)
        factor_type = data.get("factor_type") or ""
        if factor_type in DISABLED_TYPES:
            raise GoTrueError(422, *DISABLED_TYPES[factor_type])
        if factor_type != "totp":
            raise validation_failed("factor_type needs to be totp, phone, or webauthn")
        enrollment = totp.enroll(
            request=request,
            user=request.user,
            session_id=request.auth.session_id,
            friendly_name=data.get("friendly_name") or "",
            issuer=data.get("issuer") or "",
            surface=SURFACE,
        )
        factor = enrollment.factor
        return Response(
            {
                "id": str(factor.pk),
                "type": factor.factor_type,
                "friendly_name": factor.friendly_name,
                # GoTrue's qr_code is the SVG itself: the clients prefix the data: URI.
                "totp": {"qr_code": enrollment.qr_svg, "secret": enrollment.secret, "uri": enrollment.uri},
            }
        )


class FactorView(FactorsGoTrueView):
    @extend_schema(
        request=None,
        responses={200: GoTrueFactorUnenrollOutput, **_errors(401, 403, 404, 422, 503)},
        summary="GoTrue: unenroll a factor (a verified one needs an aal2 session)",
    )
    def delete(self, request: Request, factor_id: str) -> Response:
        factor = totp.unenroll(
            request=request,
            user=request.user,
            session_id=request.auth.session_id,
            factor_id=_factor_id(factor_id),
            surface=SURFACE,
        )
        return Response({"id": str(factor.pk)})


class FactorChallengeView(FactorsGoTrueView):
    @extend_schema(
        request=GoTrueFactorChallengeInput,
        responses={200: GoTrueFactorChallengeOutput, **_errors(400, 401, 403, 404, 415, 503)},
        summary="GoTrue: challenge a factor",
    )
    def post(self, request: Request, factor_id: str) -> Response:
        if request.data:  # supabase-js sends {factorId}, supabase-py {channel: null}: both ignored
            _valid(GoTrueFactorChallengeInput, request)
        challenge = totp.challenge(request=request, user=request.user, factor_id=_factor_id(factor_id))
        return Response(
            {
                "id": str(challenge.pk),
                "type": challenge.factor.factor_type,
                "expires_at": int(challenge.expires_at.timestamp()),
            }
        )


class FactorVerifyView(FactorsGoTrueView):
    @extend_schema(
        request=GoTrueFactorVerifyInput,
        responses={200: GoTrueFactorVerifyOutput, **_errors(400, 401, 403, 404, 415, 422, 429, 503)},
        summary="GoTrue: verify a challenge with a TOTP code: the session at aal2 (new access and refresh token)",
    )
    def post(self, request: Request, factor_id: str) -> Response:
        data = _valid(GoTrueFactorVerifyInput, request)
        code = (data.get("code") or "").strip()
        if not code:
            raise validation_failed("Code needs to be non-empty")
        verification = totp.verify(
            request=request,
            user=request.user,
            session_id=request.auth.session_id,
            factor_id=_factor_id(factor_id),
            challenge_id=data.get("challenge_id") or "",
            code=code,
            surface=SURFACE,
        )
        body = session_body(verification.tokens)
        if verification.recovery_codes:
            body["recovery_codes"] = verification.recovery_codes  # shown once
        return Response(body)
