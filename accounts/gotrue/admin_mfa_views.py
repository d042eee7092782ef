"""The admin API's second-factor calls (service role only): supabase-js
`auth.admin.mfa.listFactors / deleteFactor` and `auth.admin.passkey.list /
delete` (GoTrue's /admin/users/{id}/factors and /admin/users/{id}/passkeys).

Removing a factor or passkey here needs no session level (the service role is
the operator); the sessions a removed factor raised go back to aal1, and the
user's last second factor gone, so are the recovery codes (accounts.totp,
accounts.passkeys). Audited with the actor service_role. Not in openapi.yaml
(the native API's contract).
"""

from __future__ import annotations

import uuid

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from accounts import passkeys, selectors, totp
from accounts.flows import SERVICE_ROLE
from accounts.gotrue.admin_views import _user_id
from accounts.gotrue.errors import GoTrueError
from accounts.gotrue.serializers import GoTrueFactorOutput
from accounts.gotrue.views import AdminGoTrueView, _valid
from accounts.passkey_serializers import passkey_body
from accounts.serializers import StrictCharField
from monitoring import audit
from monitoring.models import AuditEvent
from velro.rendering import render


def _user(raw: str) -> uuid.UUID:
    user = selectors.user_admin_get(user_id=_user_id(raw))
    if user is None:
        raise GoTrueError(404, "user_not_found", "User not found")
    return user.pk


class AdminUserFactorsView(AdminGoTrueView):
    """GET /admin/users/{user_id}/factors: the user's factors (GoTrue's factor objects)."""

    @extend_schema(exclude=True)
    def get(self, request: Request, user_id: str) -> Response:
        factors = totp.factors_list(user_id=_user(user_id))
        return Response([render(GoTrueFactorOutput, factor) for factor in factors])


class AdminFactorUpdateInput(serializers.Serializer):
    friendly_name = StrictCharField(required=False, allow_blank=True, allow_null=True, max_length=64)
    phone = StrictCharField(required=False, allow_blank=True, allow_null=True, max_length=64)


class AdminUserFactorView(AdminGoTrueView):
    """PUT /admin/users/{user_id}/factors/{factor_id} {friendly_name}: the factor renamed
    (`phone` applies to phone factors only, which are not enabled: ignored, as GoTrue
    ignores it for a TOTP factor). DELETE: the factor, as it was."""

    @extend_schema(exclude=True)
    def put(self, request: Request, user_id: str, factor_id: str) -> Response:
        target = _user(user_id)
        data = _valid(AdminFactorUpdateInput, request)
        factor = totp.factor_admin_rename(
            user_id=target, factor_id=factor_id, friendly_name=data.get("friendly_name") or ""
        )  # 404 mfa_factor_not_found, 422 mfa_factor_name_conflict
        audit.record(
            AuditEvent.Kind.ADMIN_USER_UPDATED,
            request,
            user_id=target,
            factor=str(factor.pk),
            fields="factor.friendly_name",
            actor=SERVICE_ROLE,
            surface="gotrue",
        )
        return Response(render(GoTrueFactorOutput, factor))

    @extend_schema(exclude=True)
    def delete(self, request: Request, user_id: str, factor_id: str) -> Response:
        target = _user(user_id)
        factor = totp.factor_admin_delete(user_id=target, factor_id=factor_id)  # 404 mfa_factor_not_found
        audit.record(
            AuditEvent.Kind.MFA_FACTOR_UNENROLLED,
            request,
            user_id=target,
            factor=str(factor.pk),
            factor_status=factor.status,
            actor=SERVICE_ROLE,
            surface="gotrue",
        )
        return Response(render(GoTrueFactorOutput, factor))


class AdminUserPasskeysView(AdminGoTrueView):
    """GET /admin/users/{user_id}/passkeys: the user's passkeys (no key material)."""

    @extend_schema(exclude=True)
    def get(self, request: Request, user_id: str) -> Response:
        items = passkeys.passkey_list(user_id=_user(user_id))
        return Response([passkey_body(item, gotrue=True) for item in items])


class AdminUserPasskeyView(AdminGoTrueView):
    """DELETE /admin/users/{user_id}/passkeys/{passkey_id}: 204, as GoTrue."""

    @extend_schema(exclude=True)
    def delete(self, request: Request, user_id: str, passkey_id: str) -> Response:
        passkeys.passkey_admin_delete(request=request, user_id=_user(user_id), passkey_id=passkey_id)
        return Response(status=204)
