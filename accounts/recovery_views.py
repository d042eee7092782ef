"""Recovery codes on the native API (/api/v1/auth/mfa/recovery-codes...): thin views
over accounts.recovery_flows (the GoTrue surface's: accounts.gotrue.recovery_views)."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts import recovery_flows
from accounts.authentication import HasSession
from accounts.serializers import StrictCharField, TokenOutput, token_body
from velro.openapi import errors
from velro.rendering import render


class RecoveryCodeInput(serializers.Serializer):
    # Generous: a malformed code is refused as a wrong one (422), not as bad input.
    code = StrictCharField(max_length=64)


class RecoveryCodesOutput(serializers.Serializer):
    remaining = serializers.IntegerField(help_text="Unused codes of the current set")
    created_at = serializers.DateTimeField(allow_null=True, help_text="When the set was made (null: none)")


class RecoveryCodesNewOutput(RecoveryCodesOutput):
    codes = serializers.ListField(child=serializers.CharField(), help_text="The new codes: shown this once")


class RecoveryCodesView(APIView):
    permission_classes = [IsAuthenticated, HasSession]

    @extend_schema(responses={200: RecoveryCodesOutput, **errors(401, 403, 503)}, summary="Recovery codes left")
    def get(self, request: Request) -> Response:
        return Response(render(RecoveryCodesOutput, recovery_flows.recovery_codes_status(user_id=request.user.pk)))

    @extend_schema(
        request=None,
        responses={201: RecoveryCodesNewOutput, **errors(401, 403, 422, 503)},
        summary="Make a new set of recovery codes (shown once; the old set stops working). Needs aal2",
    )
    def post(self, request: Request) -> Response:
        codes, summary = recovery_flows.recovery_codes_regenerate(
            request=request, user=request.user, session_id=request.auth.session_id
        )
        body = {"codes": codes, "remaining": summary.remaining, "created_at": summary.created_at}
        return Response(render(RecoveryCodesNewOutput, body), status=status.HTTP_201_CREATED)


class RecoveryCodeVerifyView(APIView):
    permission_classes = [IsAuthenticated, HasSession]

    @extend_schema(
        request=RecoveryCodeInput,
        responses={200: TokenOutput, **errors(400, 401, 403, 415, 422, 429, 503)},
        summary="Spend a recovery code: this session reaches aal2 (new tokens of the same session)",
    )
    def post(self, request: Request) -> Response:
        data = RecoveryCodeInput(data=request.data)
        data.is_valid(raise_exception=True)
        tokens = recovery_flows.recovery_code_verify(
            request=request, user=request.user, session_id=request.auth.session_id, code=data.validated_data["code"]
        )
        return Response(token_body(tokens))
