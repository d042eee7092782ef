"""Second factors (TOTP) on the native API: /api/v1/auth/mfa/factors... (accounts.totp)."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts import selectors, totp
from accounts.authentication import HasSession
from accounts.serializers import StrictCharField, StrictInput, TokenOutput, token_body
from velro.openapi import errors
from velro.rendering import render

SURFACE = "native"


class FactorOutput(serializers.Serializer):
    id = serializers.UUIDField()
    friendly_name = serializers.CharField(allow_blank=True)
    factor_type = serializers.CharField()
    status = serializers.CharField(help_text="unverified or verified")
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()
    last_challenged_at = serializers.DateTimeField(allow_null=True)


class FactorListOutput(serializers.Serializer):
    results = FactorOutput(many=True)


class EnrollInput(StrictInput):
    friendly_name = StrictCharField(required=False, allow_blank=True, max_length=64)
    issuer = StrictCharField(required=False, allow_blank=True, max_length=256)


class TotpOutput(serializers.Serializer):
    secret = serializers.CharField(help_text="Base32; shown once")
    uri = serializers.CharField(help_text="otpauth:// URI")
    qr_code = serializers.CharField(help_text="The URI as a QR code: a data:image/svg+xml URI")


class EnrollOutput(serializers.Serializer):
    factor = FactorOutput()
    totp = TotpOutput()


class ChallengeOutput(serializers.Serializer):
    id = serializers.UUIDField()
    factor_id = serializers.UUIDField()
    expires_at = serializers.IntegerField(help_text="Unix time")


class VerifyInput(StrictInput):
    challenge_id = serializers.UUIDField()
    code = StrictCharField(max_length=16)


class VerifyOutput(TokenOutput):
    aal = serializers.CharField()
    recovery_codes = serializers.ListField(
        child=serializers.CharField(),
        required=False,
        help_text="The recovery codes, on the verify that adds the user's first second factor only (shown once)",
    )


class SessionView(APIView):
    permission_classes = [IsAuthenticated, HasSession]


class FactorsView(SessionView):
    @extend_schema(responses={200: FactorListOutput, **errors(401, 403, 503)}, summary="The caller's second factors")
    def get(self, request: Request) -> Response:
        factors = selectors.user_factors(user=request.user)
        return Response(render(FactorListOutput, {"results": factors}))

    @extend_schema(
        request=EnrollInput,
        responses={201: EnrollOutput, **errors(400, 401, 403, 415, 422, 503)},
        summary="Enroll a TOTP factor (unverified until a code is verified; aal2 needed if the user has a second "
        "factor already)",
    )
    def post(self, request: Request) -> Response:
        data = EnrollInput(data=request.data)
        data.is_valid(raise_exception=True)
        enrollment = totp.enroll(
            request=request,
            user=request.user,
            session_id=request.auth.session_id,
            friendly_name=data.validated_data.get("friendly_name", ""),
            issuer=data.validated_data.get("issuer", ""),
            surface=SURFACE,
        )
        body = {
            "factor": enrollment.factor,
            "totp": {
                "secret": enrollment.secret,
                "uri": enrollment.uri,
                "qr_code": totp.qr_data_uri(enrollment.qr_svg),
            },
        }
        return Response(render(EnrollOutput, body), status=status.HTTP_201_CREATED)


class FactorView(SessionView):
    @extend_schema(
        request=None,
        responses={204: None, **errors(401, 403, 404, 503)},
        summary="Remove a factor (a verified one needs an aal2 session); sessions it raised go back to aal1",
    )
    def delete(self, request: Request, factor_id: str) -> Response:
        totp.unenroll(
            request=request, user=request.user, session_id=request.auth.session_id, factor_id=factor_id, surface=SURFACE
        )
        return Response(status=status.HTTP_204_NO_CONTENT)


class FactorChallengeView(SessionView):
    @extend_schema(
        request=None,
        responses={201: ChallengeOutput, **errors(401, 403, 404, 503)},
        summary="Challenge a factor (verify it from the same address within MFA_CHALLENGE_EXPIRY_DURATION)",
    )
    def post(self, request: Request, factor_id: str) -> Response:
        challenge = totp.challenge(request=request, user=request.user, factor_id=factor_id)
        body = {
            "id": challenge.pk,
            "factor_id": challenge.factor_id,
            "expires_at": int(challenge.expires_at.timestamp()),
        }
        return Response(render(ChallengeOutput, body), status=status.HTTP_201_CREATED)


class FactorVerifyView(SessionView):
    @extend_schema(
        request=VerifyInput,
        responses={200: VerifyOutput, **errors(400, 401, 403, 404, 415, 422, 429, 503)},
        summary="Verify a challenge with a TOTP code: this session at aal2, new access and refresh tokens",
    )
    def post(self, request: Request, factor_id: str) -> Response:
        data = VerifyInput(data=request.data)
        data.is_valid(raise_exception=True)
        verification = totp.verify(
            request=request,
            user=request.user,
            session_id=request.auth.session_id,
            factor_id=factor_id,
            challenge_id=data.validated_data["challenge_id"],
            code=data.validated_data["code"],
            surface=SURFACE,
        )
        body = token_body(verification.tokens)
        body["aal"] = verification.tokens.aal
        if verification.recovery_codes:
            body["recovery_codes"] = verification.recovery_codes
        return Response(body)
