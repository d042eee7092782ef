"""GoTrue's email code and link endpoints: /recover, /otp, /magiclink, /verify, /resend, /reauthenticate.

Shapes and codes from supabase/auth internal/api (recover.go, otp.go,
magic_link.go, verify.go, resend.go, reauthenticate.go); the work is
accounts.flows' (the same as the native API's). Asking answers `{}` whether
or not the address has an account.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response

from accounts import flows, onetime
from accounts.gotrue.errors import GoTrueError, validation_failed, weak_password_from
from accounts.gotrue.serializers import (
    GenerateLinkInput,
    GenerateLinkOutput,
    GoTrueSessionOutput,
    GoTrueUserOutput,
    InviteInput,
    OtpInput,
    RecoverInput,
    ResendInput,
    VerifyInput,
    session_body,
    user_body,
)
from accounts.gotrue.views import SURFACE, AdminGoTrueView, GoTrueView, PublicGoTrueView, _email, _errors, _valid
from accounts.models import OneTimeTokenPurpose as Purpose
from accounts.redirects import redirect_allowed, redirect_target

# verify `type` -> the purposes its token may have. GoTrue keeps one
# confirmation slot (signup, invite) and one recovery slot (recovery, magic
# link); `email` is either (verify.go: EmailOTPVerification).
VERIFY_TYPES: dict[str, list[str]] = {
    "signup": [Purpose.SIGNUP, Purpose.INVITE],
    "invite": [Purpose.INVITE, Purpose.SIGNUP],
    "magiclink": [Purpose.MAGICLINK, Purpose.RECOVERY],
    "recovery": [Purpose.RECOVERY, Purpose.MAGICLINK],
    "email": [Purpose.MAGICLINK, Purpose.SIGNUP, Purpose.INVITE, Purpose.RECOVERY],
}
PHONE_TYPES = ("sms", "phone_change")
LINK_INVALID = "Email link is invalid or has expired"
SINGLE_CONFIRMATION = "Confirmation link accepted. Please proceed to confirm link sent to the other email"
# GoTrue's oauthErrorMap: the OAuth `error` beside error_code in an error redirect.
OAUTH_ERRORS = {400: "invalid_request", 401: "unauthorized_client", 403: "access_denied", 500: "server_error"}

_EMPTY = {200: OpenApiResponse(OpenApiTypes.OBJECT, description="{} (whether or not the address has an account)")}


def _pkce(data: dict[str, Any]) -> tuple[str, str]:
    challenge, method = data.get("code_challenge") or "", data.get("code_challenge_method") or ""
    problem = onetime.pkce_challenge_valid(code_challenge=challenge, code_challenge_method=method)
    if problem:
        raise validation_failed(problem)
    return challenge, method


def _redirect_to(request: Request) -> str:
    # supabase-js and supabase-py send it as ?redirect_to=; GoTrue also takes a header.
    requested = request.query_params.get("redirect_to") or request.META.get("HTTP_REDIRECT_TO", "")
    return redirect_target(requested)


def _ask(request: Request, data: dict[str, Any], purpose: str, email: str) -> flows.OneTimeRequest:
    challenge, method = _pkce(data)
    return flows.OneTimeRequest(
        purpose=purpose,
        email=email,
        redirect_to=_redirect_to(request),
        code_challenge=challenge,
        code_challenge_method=method,
    )


class RecoverView(PublicGoTrueView):
    """POST /recover {email, code_challenge?}: a recovery code and link, if the address has an account."""

    @extend_schema(
        request=RecoverInput,
        parameters=[OpenApiParameter("redirect_to", str)],
        responses={**_EMPTY, **_errors(400, 401, 415, 429, 503)},
        summary="GoTrue: send a password recovery email",
    )
    def post(self, request: Request) -> Response:
        data = _valid(RecoverInput, request)
        if not (data.get("email") or "").strip():
            raise validation_failed("Password recovery requires an email")
        email = _email(data["email"])
        flows.ott_request(request=request, ask=_ask(request, data, Purpose.RECOVERY, email))
        return Response({})


class OtpView(PublicGoTrueView):
    """POST /otp {email, create_user?, data?}: an email code and magic link (phone: disabled)."""

    magic_link_only = False

    @extend_schema(
        request=OtpInput,
        parameters=[OpenApiParameter("redirect_to", str)],
        responses={**_EMPTY, **_errors(400, 401, 415, 422, 429, 503)},
        summary="GoTrue: send a sign-in code and magic link",
    )
    def post(self, request: Request) -> Response:
        data = _valid(OtpInput, request)
        email, phone = (data.get("email") or "").strip(), (data.get("phone") or "").strip()
        if email and phone:
            raise validation_failed("Only an email address or phone number should be provided")
        if email and data.get("channel"):
            raise validation_failed("Channel should only be specified with Phone OTP")
        if phone and not self.magic_link_only:
            raise GoTrueError(400, "phone_provider_disabled", "Unsupported phone provider")
        if not email:
            if self.magic_link_only:
                raise GoTrueError(422, "validation_failed", "Password recovery requires an email")
            raise validation_failed("One of email or phone must be set")
        email = _email(email)
        create_user = True if self.magic_link_only else data.get("create_user") is not False
        flows.ott_request(
            request=request,
            ask=_ask(request, data, Purpose.MAGICLINK, email),
            create_user=create_user,
            user_metadata=data.get("data") or {},
        )
        return Response({})


class MagicLinkView(OtpView):
    """POST /magiclink {email}: GoTrue's older name for /otp with an email (always create_user)."""

    magic_link_only = True


class VerifyView(PublicGoTrueView):
    """POST /verify {type, token + email | token_hash}: a session (type=email_change: the
    first of the two confirmations answers {"msg", "code": "200"}, the second a session).
    GET /verify?token=&type=&redirect_to=: a 303 to the allowed redirect_to with the
    session in the fragment, `?code=` for a PKCE link, or the error in the fragment."""

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        if request.method == "GET":
            # A browser following an email link sends no apikey (Supabase's gateway lets it through).
            self.check_apikey = False
        super().initial(request, *args, **kwargs)

    @extend_schema(
        request=VerifyInput,
        responses={200: GoTrueSessionOutput, **_errors(400, 401, 403, 415, 429, 503)},
        summary="GoTrue: verify an email code or link token (returns a session)",
    )
    def post(self, request: Request) -> Response:
        data = _valid(VerifyInput, request)
        kind = data.get("type") or ""
        token, token_hash = data.get("token") or "", data.get("token_hash") or ""
        email, phone = (data.get("email") or "").strip(), (data.get("phone") or "").strip()
        if not kind:
            raise validation_failed("Verify requires a verification type")
        if bool(token) == bool(token_hash):
            raise validation_failed("Verify requires either a token or a token hash")
        if kind in PHONE_TYPES:
            raise GoTrueError(400, "phone_provider_disabled", "Unsupported phone provider")
        if token and not email:
            raise validation_failed("Only an email address or phone number should be provided on verify")
        if token_hash and (email or phone or data.get("redirect_to")):
            raise validation_failed("Only the token_hash and type should be provided")
        if kind == "email_change":
            return self._email_change(
                request, email=_email(email) if token else None, token=token, token_hash=token_hash
            )
        purposes = VERIFY_TYPES.get(kind)
        if purposes is None:
            raise validation_failed("Unsupported verification type")
        try:
            _, tokens = flows.ott_sign_in(
                request=request,
                purposes=purposes,
                email=_email(email) if token else None,
                code=token or None,
                token_hash=token_hash or None,
                surface=SURFACE,
            )
        except onetime.OneTimeTokenInvalid:
            message = LINK_INVALID if token_hash else onetime.OneTimeTokenInvalid.detail
            raise GoTrueError(403, "otp_expired", message) from None
        return Response(session_body(tokens))

    def _email_change(self, request: Request, *, email: str | None, token: str, token_hash: str) -> Response:
        try:
            _, tokens, changed = flows.email_change_verify(
                request=request, email=email, code=token or None, token_hash=token_hash or None, surface=SURFACE
            )
        except onetime.OneTimeTokenInvalid:
            message = LINK_INVALID if token_hash else onetime.OneTimeTokenInvalid.detail
            raise GoTrueError(403, "otp_expired", message) from None
        if not changed:
            # GoTrue's answer to the first of the two confirmations (supabase-py reads code "200").
            return Response({"msg": SINGLE_CONFIRMATION, "code": "200"})
        return Response(session_body(tokens))

    @extend_schema(
        parameters=[
            OpenApiParameter("token", str, required=True),
            OpenApiParameter("type", str, required=True),
            OpenApiParameter("redirect_to", str),
        ],
        responses={
            303: OpenApiResponse(description="to redirect_to (or the site URL): the session, ?code= or the error"),
            **_errors(400, 429, 503),
        },
        summary="GoTrue: follow an email link",
    )
    def get(self, request: Request) -> Response:
        token, kind = request.query_params.get("token", ""), request.query_params.get("type", "")
        if not kind:
            raise validation_failed("Verify requires a verification type")
        if not token:
            raise validation_failed("Verify requires a token or a token hash")
        target = _redirect_to(request)
        pkce = token.startswith(onetime.PKCE_PREFIX)
        try:
            if kind == "email_change":
                row, tokens, changed = flows.email_change_verify(
                    request=request, token_hash=token, surface=SURFACE, session=not pkce
                )
                if not changed:
                    message = {"message": SINGLE_CONFIRMATION}
                    target = _with_query(target, message) if pkce else target
                    return _see_other(_with_fragment(target, {**message, "sb": ""}))
            else:
                purposes = VERIFY_TYPES.get(kind)
                if purposes is None:
                    raise validation_failed("Unsupported verification type")
                row, tokens = flows.ott_sign_in(
                    request=request, purposes=purposes, token_hash=token, surface=SURFACE, session=not pkce
                )
            if pkce:
                if not row.code_challenge:
                    raise GoTrueError(400, "flow_state_not_found", "No associated flow state found.")
                return _see_other(_with_query(target, {"code": onetime.pkce_auth_code_issue(token=row)}))
        except (onetime.OneTimeTokenInvalid, GoTrueError) as exc:
            error = exc if isinstance(exc, GoTrueError) else GoTrueError(403, "otp_expired", LINK_INVALID)
            return _see_other(_error_url(target, error, pkce=pkce))
        fragment = {
            "access_token": session_body(tokens)["access_token"],
            "expires_at": tokens.expires_at,
            "expires_in": tokens.expires_in,
            "refresh_token": tokens.refresh_token,
            "token_type": "bearer",
            "type": kind,
        }
        return _see_other(_with_fragment(target, fragment))


def _see_other(url: str) -> Response:
    return Response(status=status.HTTP_303_SEE_OTHER, headers={"Location": url})


def _with_query(url: str, params: dict[str, str]) -> str:
    parts = urlsplit(url)
    query = "&".join(filter(None, [parts.query, urlencode(params)]))
    return urlunsplit(parts._replace(query=query))


def _with_fragment(url: str, params: dict[str, Any]) -> str:
    return urlunsplit(urlsplit(url)._replace(fragment=urlencode(params)))


def _error_url(url: str, error: GoTrueError, *, pkce: bool) -> str:
    """GoTrue's prepErrorRedirectURL: error, error_code, error_description in the
    fragment (and, for PKCE, in the query too)."""
    params = {"error_code": error.error_code, "error_description": error.message}
    if error.status_code in OAUTH_ERRORS:
        params = {"error": OAUTH_ERRORS[error.status_code], **params}
    target = _with_query(url, params) if pkce else url
    return _with_fragment(target, {**params, "sb": ""})


class ResendView(PublicGoTrueView):
    """POST /resend {type: signup|email_change, email}: the email again (phone types: disabled)."""

    @extend_schema(
        request=ResendInput,
        parameters=[OpenApiParameter("redirect_to", str)],
        responses={**_EMPTY, **_errors(400, 401, 415, 429, 503)},
        summary="GoTrue: resend a confirmation email",
    )
    def post(self, request: Request) -> Response:
        data = _valid(ResendInput, request)
        kind = data.get("type") or ""
        email, phone = (data.get("email") or "").strip(), (data.get("phone") or "").strip()
        if kind not in ("signup", "email_change", *PHONE_TYPES):
            raise validation_failed("Missing one of these types: signup, email_change, sms, phone_change")
        if kind == "signup" and not email:
            raise validation_failed("Type provided requires an email address")
        if email and phone:
            raise validation_failed("Only an email address or phone number should be provided.")
        if kind in PHONE_TYPES or phone:
            raise GoTrueError(400, "phone_provider_disabled", "Phone logins are disabled")
        if not email:
            raise validation_failed("Missing email address or phone number")
        email = _email(email)
        ask = _ask(request, data, Purpose.SIGNUP, email)
        if kind == "signup":
            flows.ott_request(request=request, ask=ask)
        else:
            flows.email_change_resend(request=request, ask=ask)
        return Response({})


class ReauthenticateView(GoTrueView):
    """GET /reauthenticate: a code (the nonce) to the caller's address, for PUT /user {password, nonce}."""

    @extend_schema(
        request=None,
        responses={**_EMPTY, **_errors(401, 403, 422, 429, 503)},
        summary="GoTrue: send a reauthentication code",
    )
    def get(self, request: Request) -> Response:
        flows.reauthenticate_request(request=request, user=request.user)
        return Response({})


class InviteView(AdminGoTrueView):
    """POST /invite {email, data?} (service role): the account and an invite email."""

    @extend_schema(
        request=InviteInput,
        parameters=[OpenApiParameter("redirect_to", str)],
        responses={200: GoTrueUserOutput, **_errors(400, 401, 403, 415, 422, 429, 503)},
        summary="GoTrue admin: invite a user by email",
    )
    def post(self, request: Request) -> Response:
        data = _valid(InviteInput, request)
        if not (data.get("email") or "").strip():
            raise validation_failed("Invite requires an email")
        user = flows.user_invite(
            request=request,
            email=_email(data["email"]),
            user_metadata=data.get("data") or {},
            redirect_to=_redirect_to(request),
        )
        return Response(user_body(user))


class GenerateLinkView(AdminGoTrueView):
    """POST /admin/generate_link {type, email, password?, data?, new_email?, redirect_to?}
    (service role): the link and code, not emailed."""

    @extend_schema(
        request=GenerateLinkInput,
        parameters=[OpenApiParameter("redirect_to", str)],
        responses={200: GenerateLinkOutput, **_errors(400, 401, 403, 404, 415, 422, 503)},
        summary="GoTrue admin: generate an email action link (signup, invite, magiclink, recovery, email change)",
    )
    def post(self, request: Request) -> Response:
        data = _valid(GenerateLinkInput, request)
        kind = data.get("type") or ""
        if kind not in flows.GENERATE_LINK_PURPOSES:
            raise validation_failed(f"Invalid email action link type requested: {kind}")
        email = _email(data.get("email") or "")
        email_change = flows.GENERATE_LINK_PURPOSES[kind] in flows.EMAIL_CHANGE_PURPOSES
        new_email = _email(data.get("new_email") or "") if email_change else ""
        requested = data.get("redirect_to") or ""
        redirect = requested if redirect_allowed(requested) else _redirect_to(request)
        try:
            generated = flows.link_generate(
                request=request,
                kind=kind,
                email=email,
                password=data.get("password") or "",
                user_metadata=data.get("data") or {},
                redirect_to=redirect,
                new_email=new_email,
            )
        except ValidationError as exc:
            raise weak_password_from(exc) from None
        body = user_body(generated.user)
        body.update(
            action_link=generated.action_link,
            email_otp=generated.email_otp,
            hashed_token=generated.hashed_token,
            verification_type=generated.verification_type,
            redirect_to=generated.redirect_to,
        )
        return Response(body)
