"""GoTrue-compatible views: input -> the native services -> GoTrue's shapes.

The same services, rate limits, sessions, caches, database budgets and audit
events as accounts.views; only the shapes and error bodies are GoTrue's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError as DjangoValidationError
from django.core.validators import validate_email
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.exceptions import ValidationError
from rest_framework.permissions import AllowAny, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts import flows, mfa, onetime, selectors, services, throttles
from accounts.gotrue.authentication import (
    ADMIN_ROLES,
    GoTrueTokenAuthentication,
    IsServiceRole,
    apikey_check,
    apikey_role,
)
from accounts.gotrue.errors import (
    API_VERSION_HEADER,
    GoTrueError,
    api_version,
    gotrue_exception_handler,
    validation_failed,
    weak_password,
    weak_password_from,
)
from accounts.gotrue.serializers import (
    GoTrueErrorOutput,
    GoTrueHealthOutput,
    GoTrueSessionOutput,
    GoTrueSettingsOutput,
    GoTrueTokenInput,
    GoTrueUserOutput,
    PasswordGrantInput,
    PkceGrantInput,
    RefreshGrantInput,
    SignupInput,
    UserUpdateInput,
    display_name_from,
    session_body,
    user_body,
)
from accounts.redirects import redirect_target
from accounts.serializers import referral_code_clean
from monitoring import audit
from monitoring.models import AuditEvent
from velro.net import client_ip, user_agent
from velro.openapi import with_body_limit

LOGOUT_SCOPES = ("global", "local", "others")
SURFACE = "gotrue"


class GoTrueView(APIView):
    """Base: GoTrue's error bodies (for this class only), the apikey check, the
    version header echoed, GoTrue bearer tokens."""

    authentication_classes = [GoTrueTokenAuthentication]
    permission_classes = [IsAuthenticated]
    check_apikey = True

    def get_exception_handler(self) -> Callable[[Exception, dict], Response | None]:
        return gotrue_exception_handler

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        if self.check_apikey and request.method != "OPTIONS":
            apikey_check(request)
        super().initial(request, *args, **kwargs)

    def check_permissions(self, request: Request) -> None:
        # An OPTIONS carries no credentials (CORS preflights are answered before
        # the view, by django-cors-headers: settings.CORS_*).
        if request.method != "OPTIONS":
            super().check_permissions(request)

    def options(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return Response(status=status.HTTP_204_NO_CONTENT)

    def finalize_response(self, request: Request, response: Response, *args: Any, **kwargs: Any) -> Response:
        version = api_version(request)
        if version is not None:
            response[API_VERSION_HEADER] = version
        return super().finalize_response(request, response, *args, **kwargs)


class PublicGoTrueView(GoTrueView):
    authentication_classes: list = []
    permission_classes = [AllowAny]


class AdminGoTrueView(GoTrueView):
    """Base of the admin API (/auth/v1/admin/...): the service-role key only."""

    authentication_classes: list = []
    permission_classes = [IsServiceRole]


def _valid(serializer_class: type, request: Request) -> dict[str, Any]:
    if not isinstance(request.data, dict):
        raise validation_failed("Request body must be a JSON object")
    data = serializer_class(data=request.data)
    data.is_valid(raise_exception=True)
    return data.validated_data


def _email(raw: str) -> str:
    email = raw.strip()
    try:
        validate_email(email)
    except DjangoValidationError:
        raise validation_failed("Unable to validate email address: invalid format") from None
    return email


def _new_password_length(password: str) -> None:
    if len(password) > settings.PASSWORD_MAX_LENGTH:
        raise weak_password(
            [f"Password cannot be longer than {settings.PASSWORD_MAX_LENGTH} characters."], ["password_too_long"]
        )


def _errors(*statuses: int) -> dict[int, OpenApiResponse]:
    return {
        code: OpenApiResponse(GoTrueErrorOutput, description="GoTrue error body") for code in with_body_limit(statuses)
    }


class SignupView(PublicGoTrueView):
    """POST /signup {email, password, data?}: with autoconfirm (GOTRUE_MAILER_AUTOCONFIRM,
    the default), a session; without, the user and a confirmation email."""

    @extend_schema(
        request=SignupInput,
        responses={200: GoTrueSessionOutput, **_errors(400, 401, 415, 422, 429, 503)},
        summary="GoTrue: sign up (autoconfirm: returns a session)",
    )
    def post(self, request: Request) -> Response:
        ip = client_ip(request)
        throttles.signup_guard(ip=ip)
        data = _valid(SignupInput, request)
        if not data.get("email"):
            if data.get("phone"):
                raise GoTrueError(400, "phone_provider_disabled", "Phone signups are disabled")
            if not data.get("password"):
                raise GoTrueError(422, "anonymous_provider_disabled", "Anonymous sign-ins are disabled")
            raise validation_failed("To signup, please provide your email")
        email = _email(data["email"])
        password = data.get("password") or ""
        if not password:
            raise validation_failed("Signup requires a valid password")
        _new_password_length(password)
        metadata = data.get("data") or {}
        if not settings.GOTRUE_MAILER_AUTOCONFIRM:
            return self._pending(request, email, password, metadata)
        try:
            tokens = services.user_signup(
                request=request,
                email=email,
                password=password,
                display_name=display_name_from(metadata),
                user_metadata=metadata,
                referral_code=referral_code_clean(metadata.get("referral_code")),
                ip=ip,
                user_agent=user_agent(request),
            )
        except ValidationError as exc:
            raise weak_password_from(exc) from None
        audit.record(AuditEvent.Kind.SIGNUP, request, user_id=tokens.user.pk, surface=SURFACE)
        return Response(session_body(tokens))

    def _pending(self, request: Request, email: str, password: str, metadata: dict) -> Response:
        """Confirmation-required mode: the user object alone (no session), a confirmation email sent."""
        requested = request.query_params.get("redirect_to") or request.META.get("HTTP_REDIRECT_TO", "")
        try:
            user = services.user_signup_pending(
                request=request,
                email=email,
                password=password,
                display_name=display_name_from(metadata),
                user_metadata=metadata,
                referral_code=referral_code_clean(metadata.get("referral_code")),
                redirect_to=redirect_target(requested),
            )
        except ValidationError as exc:
            raise weak_password_from(exc) from None
        audit.record(AuditEvent.Kind.SIGNUP, request, user_id=user.pk, surface=SURFACE, confirmed=False)
        return Response(user_body(user))


class TokenView(PublicGoTrueView):
    """POST /token?grant_type=password|refresh_token|pkce|id_token."""

    @extend_schema(
        parameters=[
            OpenApiParameter("grant_type", str, enum=["password", "refresh_token", "pkce", "id_token"], required=True)
        ],
        request=GoTrueTokenInput,
        responses={200: GoTrueSessionOutput, **_errors(400, 401, 403, 415, 422, 429, 503)},
        summary="GoTrue: password login, refresh-token rotation or PKCE code exchange",
    )
    def post(self, request: Request) -> Response:
        grant_type = request.query_params.get("grant_type", "")
        if grant_type == "password":
            return self._password(request)
        if grant_type == "refresh_token":
            return self._refresh(request)
        if grant_type == "pkce":
            return self._pkce(request)
        if grant_type == "id_token":
            # Imported here: external_views builds on this module's base views.
            from accounts.gotrue.external_views import IdTokenGrantInput, id_token_grant

            return id_token_grant(request, _valid(IdTokenGrantInput, request))
        raise validation_failed(f"unsupported_grant_type: {grant_type or 'missing'}")

    def _password(self, request: Request) -> Response:
        data = _valid(PasswordGrantInput, request)
        email = (data.get("email") or "").strip()
        if not email:
            if data.get("phone"):
                raise GoTrueError(400, "phone_provider_disabled", "Phone logins are disabled")
            raise validation_failed("missing email or phone")
        tokens = flows.password_login(
            request=request, email=email, password=data.get("password") or "", surface=SURFACE
        )
        return Response(session_body(tokens))

    def _pkce(self, request: Request) -> Response:
        data = _valid(PkceGrantInput, request)
        if not data.get("auth_code") or not data.get("code_verifier"):
            raise validation_failed("invalid request: both auth code and code verifier should be non-empty")
        tokens = flows.pkce_sign_in(
            request=request, auth_code=data["auth_code"], code_verifier=data["code_verifier"], surface=SURFACE
        )
        return Response(session_body(tokens))

    def _refresh(self, request: Request) -> Response:
        throttles.refresh_guard(ip=client_ip(request))
        data = _valid(RefreshGrantInput, request)
        if not data.get("refresh_token"):
            raise validation_failed("refresh_token required")
        tokens = flows.token_refresh(request=request, refresh_token=data["refresh_token"], surface=SURFACE)
        return Response(session_body(tokens))


class UserView(GoTrueView):
    """GET /user; PUT /user {data?, password?, current_password?}."""

    @extend_schema(responses={200: GoTrueUserOutput, **_errors(401, 403, 503)}, summary="GoTrue: the caller")
    def get(self, request: Request) -> Response:
        return Response(user_body(request.user))

    @extend_schema(
        request=UserUpdateInput,
        responses={200: GoTrueUserOutput, **_errors(400, 401, 403, 415, 422, 429, 503)},
        summary="GoTrue: update user_metadata and/or the password",
    )
    def put(self, request: Request) -> Response:
        data = _valid(UserUpdateInput, request)
        user = request.user
        if data.get("app_metadata") is not None:
            raise GoTrueError(403, "not_admin", "Updating app_metadata requires admin privileges")
        email = (data.get("email") or "").strip()
        if email and email.lower() != user.email.lower():
            mfa.aal_require(user_id=user.pk, session_id=request.auth.session_id)
            # Secure email change: a code and link to both addresses; the address
            # changes once both are used (POST/GET /verify type=email_change).
            challenge = onetime.pkce_challenge_valid(
                code_challenge=data.get("code_challenge") or "",
                code_challenge_method=data.get("code_challenge_method") or "",
            )
            if challenge:
                raise validation_failed(challenge)
            requested = request.query_params.get("redirect_to") or request.META.get("HTTP_REDIRECT_TO", "")
            flows.email_change_request(
                request=request,
                user=user,
                new_email=_email(email),
                redirect_to=redirect_target(requested),
                code_challenge=data.get("code_challenge") or "",
                code_challenge_method=data.get("code_challenge_method") or "",
            )
        phone = (data.get("phone") or "").strip()
        if phone and phone != (user.phone or ""):
            raise GoTrueError(400, "phone_provider_disabled", "Phone changes are disabled")
        password = data.get("password")
        if password:
            self._password_change(request, password, data.get("current_password") or None, data.get("nonce"))
        if data.get("data") is not None:
            user = services.user_update_profile(user_id=user.pk, user_metadata=data["data"])
        elif password:
            user = selectors.user_get(user_id=user.pk) or user  # re-read: updated_at moved
        return Response(user_body(user))

    def _password_change(
        self, request: Request, password: str, current_password: str | None, nonce: str | None
    ) -> None:
        mfa.aal_require(user_id=request.user.pk, session_id=request.auth.session_id)
        throttles.password_change_guard(user_id=request.user.pk)
        if current_password is None and settings.GOTRUE_PASSWORD_CHANGE_REQUIRES_CURRENT_PASSWORD:
            # As GoTrue: a session started by a recovery or email-code verify needs
            # no current password (session.IsRecovery()), nor does one that spends
            # a /reauthenticate nonce.
            if nonce:
                flows.reauthentication_verify(request=request, user=request.user, nonce=nonce)
            elif not onetime.session_may_set_password(session_id=request.auth.session_id):
                raise GoTrueError(
                    400, "current_password_required", "Current password required when setting new password."
                )
        _new_password_length(password)
        if current_password is not None and current_password == password:
            raise GoTrueError(422, "same_password", services.SamePassword.detail)
        try:
            services.user_change_password(
                request=request,
                user_id=request.user.pk,
                session_id=request.auth.session_id,
                current_password=current_password,
                new_password=password,
            )
        except ValidationError as exc:
            if isinstance(exc.detail, dict) and "current_password" in exc.detail:
                raise GoTrueError(
                    400, "current_password_invalid", "Current password required when setting new password."
                ) from None
            raise weak_password_from(exc) from None
        audit.record(AuditEvent.Kind.PASSWORD_CHANGE, request, user_id=request.user.pk, surface=SURFACE)


class LogoutView(GoTrueView):
    """POST /logout?scope=global|local|others (default global, as GoTrue): 204."""

    @extend_schema(
        parameters=[OpenApiParameter("scope", str, enum=sorted(LOGOUT_SCOPES))],
        request=None,
        responses={204: None, **_errors(400, 401, 403, 503)},
        summary="GoTrue: log out (default scope global)",
    )
    def post(self, request: Request) -> Response:
        scope = request.query_params.get("scope", "global")
        if scope not in LOGOUT_SCOPES:
            raise validation_failed(f"Unsupported logout scope {scope!r}")
        services.session_logout(user_id=request.user.pk, session_id=request.auth.session_id, scope=scope)
        # Server code's auth.admin.signOut(jwt): the user's token, the service-role key as apikey.
        actor = {"actor": flows.SERVICE_ROLE} if apikey_role(request) in ADMIN_ROLES else {}
        audit.record(AuditEvent.Kind.LOGOUT, request, user_id=request.user.pk, scope=scope, surface=SURFACE, **actor)
        return Response(status=status.HTTP_204_NO_CONTENT)


EXTERNAL_PROVIDERS = (
    "anonymous_users",
    "apple",
    "azure",
    "bitbucket",
    "discord",
    "facebook",
    "figma",
    "fly",
    "github",
    "gitlab",
    "google",
    "keycloak",
    "kakao",
    "linkedin",
    "linkedin_oidc",
    "notion",
    "spotify",
    "slack",
    "slack_oidc",
    "workos",
    "twitch",
    "twitter",
    "zoom",
    "phone",
)


class SettingsView(PublicGoTrueView):
    @extend_schema(responses={200: GoTrueSettingsOutput, **_errors(401)}, summary="GoTrue: settings")
    def get(self, request: Request) -> Response:
        external = dict.fromkeys(EXTERNAL_PROVIDERS, False)
        external["email"] = True
        # The providers configured (GOTRUE_EXTERNAL_*, OIDC_PROVIDERS), by name.
        external.update(dict.fromkeys(settings.EXTERNAL_PROVIDERS, True))
        return Response(
            {
                "external": external,
                "disable_signup": False,
                "mailer_autoconfirm": settings.GOTRUE_MAILER_AUTOCONFIRM,
                "phone_autoconfirm": False,
                "sms_provider": "",
                "saml_enabled": False,
            }
        )


class HealthView(PublicGoTrueView):
    """Liveness, GoTrue's shape: touches no database or cache, needs no apikey."""

    check_apikey = False

    @extend_schema(responses={200: GoTrueHealthOutput}, summary="GoTrue: liveness")
    def get(self, request: Request) -> Response:
        return Response(
            {
                "version": settings.VELRO_VERSION,
                "name": "GoTrue",
                "description": "GoTrue is a user registration and authentication API",
            }
        )
