"""Thin views: input serializer -> service/selector -> output serializer."""

from __future__ import annotations

import uuid

from django.conf import settings
from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.exceptions import ValidationError
from rest_framework.permissions import AllowAny, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts import flows, mfa, onetime, selectors, services, throttles
from accounts.authentication import HasSession
from accounts.models import OneTimeTokenPurpose as Purpose
from accounts.serializers import (
    AcceptedOutput,
    ApiKeyCreateInput,
    ApiKeyListOutput,
    ApiKeyOutput,
    CodeOrTokenInput,
    CodeRequestInput,
    EmailChangeConfirmOutput,
    EmailChangeInput,
    EmailRequestInput,
    LoginInput,
    LogoutInput,
    PasswordChangeInput,
    PasswordResetInput,
    PendingSignupOutput,
    ProfileInput,
    RefreshInput,
    SignupInput,
    SignupOutput,
    TokenOutput,
    UserOutput,
    referral_code_clean,
    token_body,
)
from monitoring import audit
from monitoring.models import AuditEvent
from velro.errors import Conflict
from velro.net import client_ip, user_agent
from velro.openapi import errors
from velro.rendering import render


class PublicView(APIView):
    authentication_classes: list = []
    permission_classes = [AllowAny]


class SignupView(PublicView):
    @extend_schema(
        request=SignupInput,
        responses={201: SignupOutput, 202: PendingSignupOutput, **errors(400, 409, 415, 429, 503)},
        summary="Create an account; returns tokens and the primary API key (202 and no tokens when "
        "GOTRUE_MAILER_AUTOCONFIRM=false: a confirmation email is sent)",
    )
    def post(self, request: Request) -> Response:
        throttles.signup_guard(ip=client_ip(request))
        data = SignupInput(data=request.data)
        data.is_valid(raise_exception=True)
        if not settings.GOTRUE_MAILER_AUTOCONFIRM:
            return self._pending(request, data.validated_data)
        tokens = services.user_signup(
            request=request,
            email=data.validated_data["email"],
            password=data.validated_data["password"],
            username=data.validated_data.get("username") or None,
            referral_code=referral_code_clean(data.validated_data.get("referral_code")),
            ip=client_ip(request),
            user_agent=user_agent(request),
        )
        audit.record(AuditEvent.Kind.SIGNUP, request, user_id=tokens.user.pk)
        body = token_body(tokens)
        body["api_key"] = ApiKeyOutput(tokens.api_key).data  # shown once
        return Response(body, status=status.HTTP_201_CREATED)

    def _pending(self, request: Request, data: dict) -> Response:
        """Confirmation-required mode: the account, no tokens; a confirmation email is on its way."""
        user = services.user_signup_pending(
            request=request,
            email=data["email"],
            password=data["password"],
            username=data.get("username") or None,
            referral_code=referral_code_clean(data.get("referral_code")),
        )
        audit.record(AuditEvent.Kind.SIGNUP, request, user_id=user.pk, confirmed=False)
        body = {"detail": "Confirm the email address to sign in: a code and a link are on their way.", "user": user}
        return Response(render(PendingSignupOutput, body), status=status.HTTP_202_ACCEPTED)


class LoginView(PublicView):
    @extend_schema(
        request=LoginInput,
        # 403 user_banned: the right password for an account banned through the admin API.
        responses={200: TokenOutput, **errors(400, 401, 403, 415, 429, 503)},
        summary="Log in with email or username and password",
    )
    def post(self, request: Request) -> Response:
        data = LoginInput(data=request.data)
        data.is_valid(raise_exception=True)
        tokens = flows.password_login(
            request=request,
            email=data.validated_data.get("email"),
            username=data.validated_data.get("username"),
            password=data.validated_data["password"],
        )
        return Response(token_body(tokens))


class RefreshView(PublicView):
    @extend_schema(
        request=RefreshInput,
        responses={200: TokenOutput, **errors(400, 401, 415, 429, 503)},
        summary="Rotate a refresh token",
    )
    def post(self, request: Request) -> Response:
        throttles.refresh_guard(ip=client_ip(request))
        data = RefreshInput(data=request.data)
        data.is_valid(raise_exception=True)
        tokens = flows.token_refresh(request=request, refresh_token=data.validated_data["refresh_token"])
        return Response(token_body(tokens))


class LogoutView(APIView):
    permission_classes = [IsAuthenticated, HasSession]

    @extend_schema(
        request=LogoutInput,
        responses={204: None, **errors(400, 401, 403, 415, 503)},
        summary="End this session, all sessions, or all others",
    )
    def post(self, request: Request) -> Response:
        data = LogoutInput(data=request.data)
        data.is_valid(raise_exception=True)
        scope = data.validated_data["scope"]
        services.session_logout(user_id=request.user.pk, session_id=request.auth.session_id, scope=scope)
        audit.record(AuditEvent.Kind.LOGOUT, request, user_id=request.user.pk, scope=scope)
        return Response(status=status.HTTP_204_NO_CONTENT)


class MeView(APIView):
    @extend_schema(responses={200: UserOutput, **errors(401, 503)}, summary="The caller")
    def get(self, request: Request) -> Response:
        return Response(render(UserOutput, request.user))

    @extend_schema(
        request=ProfileInput,
        responses={200: UserOutput, **errors(400, 401, 409, 415, 503)},
        summary="Change display name and/or username",
    )
    def patch(self, request: Request) -> Response:
        data = ProfileInput(data=request.data)
        data.is_valid(raise_exception=True)
        user = services.user_update_profile(user_id=request.user.pk, **data.validated_data)
        return Response(render(UserOutput, user))


class PasswordChangeView(APIView):
    permission_classes = [IsAuthenticated, HasSession]

    @extend_schema(
        request=PasswordChangeInput,
        responses={204: None, **errors(400, 401, 403, 415, 429, 503)},
        summary="Change the password; ends every other session",
    )
    def post(self, request: Request) -> Response:
        mfa.aal_require(user_id=request.user.pk, session_id=request.auth.session_id)
        throttles.password_change_guard(user_id=request.user.pk)
        data = PasswordChangeInput(data=request.data)
        data.is_valid(raise_exception=True)
        services.user_change_password(
            request=request,
            user_id=request.user.pk,
            session_id=request.auth.session_id,
            current_password=data.validated_data["current_password"],
            new_password=data.validated_data["new_password"],
        )
        audit.record(AuditEvent.Kind.PASSWORD_CHANGE, request, user_id=request.user.pk)
        return Response(status=status.HTTP_204_NO_CONTENT)


class ApiKeyListView(APIView):
    permission_classes = [IsAuthenticated, HasSession]

    @extend_schema(responses={200: ApiKeyListOutput, **errors(401, 403, 503)}, summary="The caller's API keys")
    def get(self, request: Request) -> Response:
        keys = selectors.user_api_keys(user_id=request.user.pk)
        return Response({"results": ApiKeyOutput(keys, many=True).data})

    @extend_schema(
        request=ApiKeyCreateInput,
        responses={201: ApiKeyOutput, **errors(400, 401, 403, 415, 429, 503)},
        summary="Create an API key (the full key is shown once)",
    )
    def post(self, request: Request) -> Response:
        mfa.aal_require(user_id=request.user.pk, session_id=request.auth.session_id)
        throttles.api_key_create_guard(user_id=request.user.pk)
        data = ApiKeyCreateInput(data=request.data)
        data.is_valid(raise_exception=True)
        key, _ = services.api_key_create(user=request.user, name=data.validated_data["name"])
        audit.record(AuditEvent.Kind.API_KEY_CREATED, request, user_id=request.user.pk, key=key.prefix)
        return Response(ApiKeyOutput(key).data, status=status.HTTP_201_CREATED)


class ApiKeyDetailView(APIView):
    permission_classes = [IsAuthenticated, HasSession]

    @extend_schema(responses={204: None, **errors(401, 403, 404, 503)}, summary="Revoke an API key")
    def delete(self, request: Request, key_id: uuid.UUID) -> Response:
        services.api_key_revoke(user_id=request.user.pk, key_id=key_id)
        audit.record(AuditEvent.Kind.API_KEY_REVOKED, request, user_id=request.user.pk, key=key_id)
        return Response(status=status.HTTP_204_NO_CONTENT)


# --- one-time codes and links: the same flows as GoTrue's /recover, /otp, /verify ------------

ACCEPTED = "If the address has an account, an email with a code and a link is on its way."


def _accepted() -> Response:
    # The same answer whether or not the address has an account.
    return Response({"detail": ACCEPTED}, status=status.HTTP_202_ACCEPTED)


def _code_or_token(data: dict) -> dict:
    return {"email": data.get("email"), "code": data.get("code"), "token_hash": data.get("token")}


class PasswordForgotView(PublicView):
    @extend_schema(
        request=EmailRequestInput,
        responses={202: AcceptedOutput, **errors(400, 415, 429, 503)},
        summary="Forgot password: email a recovery code and link (same answer for any address)",
    )
    def post(self, request: Request) -> Response:
        data = EmailRequestInput(data=request.data)
        data.is_valid(raise_exception=True)
        ask = flows.OneTimeRequest(purpose=Purpose.RECOVERY, email=data.validated_data["email"])
        flows.ott_request(request=request, ask=ask)
        return _accepted()


class PasswordResetView(PublicView):
    @extend_schema(
        request=PasswordResetInput,
        responses={204: None, **errors(400, 403, 415, 429, 503)},
        summary="Reset a forgotten password with the emailed code (and address) or link token; ends every session",
    )
    def post(self, request: Request) -> Response:
        data = PasswordResetInput(data=request.data)
        data.is_valid(raise_exception=True)
        flows.password_reset(
            request=request, new_password=data.validated_data["new_password"], **_code_or_token(data.validated_data)
        )
        return Response(status=status.HTTP_204_NO_CONTENT)


class EmailCodeRequestView(PublicView):
    @extend_schema(
        request=CodeRequestInput,
        responses={202: AcceptedOutput, **errors(400, 415, 429, 503)},
        summary="Passwordless sign-in: email a sign-in code and link (same answer for any address)",
    )
    def post(self, request: Request) -> Response:
        data = CodeRequestInput(data=request.data)
        data.is_valid(raise_exception=True)
        ask = flows.OneTimeRequest(purpose=Purpose.MAGICLINK, email=data.validated_data["email"])
        flows.ott_request(request=request, ask=ask, create_user=data.validated_data["create_user"])
        return _accepted()


class EmailCodeVerifyView(PublicView):
    @extend_schema(
        request=CodeOrTokenInput,
        responses={200: TokenOutput, **errors(400, 403, 415, 429, 503)},
        summary="Passwordless sign-in: the emailed code (and address) or link token; returns tokens",
    )
    def post(self, request: Request) -> Response:
        data = CodeOrTokenInput(data=request.data)
        data.is_valid(raise_exception=True)
        _, tokens = flows.ott_sign_in(
            request=request, purposes=[Purpose.MAGICLINK], **_code_or_token(data.validated_data)
        )
        return Response(token_body(tokens))


class EmailConfirmView(PublicView):
    @extend_schema(
        request=CodeOrTokenInput,
        responses={204: None, **errors(400, 403, 415, 429, 503)},
        summary="Confirm the email address with the emailed code (and address) or link token",
    )
    def post(self, request: Request) -> Response:
        data = CodeOrTokenInput(data=request.data)
        data.is_valid(raise_exception=True)
        flows.ott_sign_in(
            request=request,
            purposes=[Purpose.SIGNUP, Purpose.INVITE],
            session=False,
            **_code_or_token(data.validated_data),
        )
        return Response(status=status.HTTP_204_NO_CONTENT)


class EmailConfirmResendView(PublicView):
    @extend_schema(
        request=EmailRequestInput,
        responses={202: AcceptedOutput, **errors(400, 415, 429, 503)},
        summary="Send the confirmation email again (same answer for any address, confirmed or not)",
    )
    def post(self, request: Request) -> Response:
        data = EmailRequestInput(data=request.data)
        data.is_valid(raise_exception=True)
        ask = flows.OneTimeRequest(purpose=Purpose.SIGNUP, email=data.validated_data["email"])
        flows.ott_request(request=request, ask=ask)
        return _accepted()


class EmailChangeView(APIView):
    permission_classes = [IsAuthenticated, HasSession]

    @extend_schema(
        request=EmailChangeInput,
        responses={202: AcceptedOutput, **errors(400, 401, 403, 409, 415, 429, 503)},
        summary="Change the email address: a code and link to the new and to the current address",
    )
    def post(self, request: Request) -> Response:
        data = EmailChangeInput(data=request.data)
        data.is_valid(raise_exception=True)
        new_email = data.validated_data["new_email"]
        if new_email.lower() == request.user.email.lower():
            raise ValidationError({"new_email": ["This is already the account's address."]})
        mfa.aal_require(user_id=request.user.pk, session_id=request.auth.session_id)
        try:
            flows.email_change_request(request=request, user=request.user, new_email=new_email)
        except onetime.EmailExists:
            raise Conflict("An account with this email already exists", code="email_taken") from None
        return Response(
            {"detail": "Confirm with the codes sent to both addresses: the change applies once both are used."},
            status=status.HTTP_202_ACCEPTED,
        )


class EmailChangeConfirmView(PublicView):
    @extend_schema(
        request=CodeOrTokenInput,
        responses={200: EmailChangeConfirmOutput, **errors(400, 403, 409, 415, 429, 503)},
        summary="Confirm an email change with one address's code (and address) or link token",
    )
    def post(self, request: Request) -> Response:
        data = CodeOrTokenInput(data=request.data)
        data.is_valid(raise_exception=True)
        token, _, changed = flows.email_change_verify(
            request=request, session=False, **_code_or_token(data.validated_data)
        )
        user = selectors.user_get(user_id=token.user_id) or token.user
        return Response(render(EmailChangeConfirmOutput, {"changed": changed, "user": user}))
