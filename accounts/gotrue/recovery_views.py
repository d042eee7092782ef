"""Recovery codes on the GoTrue surface (/auth/v1/mfa/recovery-codes...): an
extension (GoTrue has none), in GoTrue's shapes and error bodies, over the same
flows as the native API (accounts.recovery_flows); errors through the surface's one
mapper (accounts.gotrue.errors).

- GET  /mfa/recovery-codes          -> {remaining, created_at}
- POST /mfa/recovery-codes          -> {codes, remaining, created_at} (aal2; shown once)
- POST /mfa/recovery-codes/verify   {code} -> the session at aal2 (GoTrue's session body,
  as its /factors/{id}/verify answers)
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response

from accounts import recovery_flows
from accounts.gotrue.serializers import GoTrueSessionOutput, session_body
from accounts.gotrue.views import SURFACE, GoTrueView, _errors, _valid
from accounts.recovery_views import RecoveryCodeInput, RecoveryCodesNewOutput, RecoveryCodesOutput
from velro.rendering import render


class RecoveryCodesView(GoTrueView):
    @extend_schema(responses={200: RecoveryCodesOutput, **_errors(401, 403, 503)}, summary="Velro: recovery codes left")
    def get(self, request: Request) -> Response:
        return Response(render(RecoveryCodesOutput, recovery_flows.recovery_codes_status(user_id=request.user.pk)))

    @extend_schema(
        request=None,
        responses={200: RecoveryCodesNewOutput, **_errors(401, 403, 422, 503)},
        summary="Velro: a new set of recovery codes (aal2; shown once, the old set stops working)",
    )
    def post(self, request: Request) -> Response:
        codes, summary = recovery_flows.recovery_codes_regenerate(
            request=request, user=request.user, session_id=request.auth.session_id, surface=SURFACE
        )
        body = {"codes": codes, "remaining": summary.remaining, "created_at": summary.created_at}
        return Response(render(RecoveryCodesNewOutput, body))


class RecoveryCodeVerifyView(GoTrueView):
    @extend_schema(
        request=RecoveryCodeInput,
        responses={200: GoTrueSessionOutput, **_errors(400, 401, 403, 415, 422, 429, 503)},
        summary="Velro: spend a recovery code; the session reaches aal2",
    )
    def post(self, request: Request) -> Response:
        data: dict[str, Any] = _valid(RecoveryCodeInput, request)
        tokens = recovery_flows.recovery_code_verify(
            request=request, user=request.user, session_id=request.auth.session_id, code=data["code"], surface=SURFACE
        )
        return Response(session_body(tokens))
