"""GoTrue's sign in with a provider: /authorize, /callback, /user/identities...

supabase-js's signInWithOAuth sends the browser to GET /authorize?provider=&redirect_to=
(with code_challenge when flowType is pkce); the provider sends it back to GET
/callback, which redirects to redirect_to with the session in the fragment
(implicit) or ?code= for /token?grant_type=pkce. Errors at /callback are
redirects too (GoTrue's redirectErrors: error, error_code, error_description in
the query and the fragment). The flow itself is accounts.identities.
"""

from __future__ import annotations

import uuid
from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from accounts import identities
from accounts.gotrue.errors import GoTrueError, gotrue_error
from accounts.gotrue.onetime_views import OAUTH_ERRORS, _with_fragment, _with_query
from accounts.gotrue.serializers import session_body
from accounts.gotrue.views import GoTrueView, PublicGoTrueView, _errors
from accounts.redirects import redirect_target
from velro.errors import ApiError

SURFACE = "gotrue"

_AUTHORIZE_PARAMS = [
    OpenApiParameter("provider", str, required=True),
    OpenApiParameter("redirect_to", str),
    OpenApiParameter("scopes", str),
    OpenApiParameter("code_challenge", str),
    OpenApiParameter("code_challenge_method", str, enum=["s256", "plain"]),
]


def _found(url: str) -> Response:
    return Response(status=status.HTTP_302_FOUND, headers={"Location": url})


def _flow_start(request: Request, link_user: Any = None) -> str:
    params = request.query_params
    requested = params.get("redirect_to") or request.META.get("HTTP_REDIRECT_TO", "")
    return identities.flow_start(
        provider_name=params.get("provider", ""),
        redirect_to=redirect_target(requested),
        code_challenge=params.get("code_challenge", ""),
        code_challenge_method=params.get("code_challenge_method", ""),
        scopes=params.get("scopes", ""),
        link_user=link_user,
        surface=SURFACE,
    )


class AuthorizeView(PublicGoTrueView):
    """GET /authorize?provider=...: to the provider's sign-in page (a browser
    navigation: no apikey, as GoTrue behind Supabase's gateway)."""

    check_apikey = False

    @extend_schema(
        parameters=_AUTHORIZE_PARAMS,
        responses={302: OpenApiResponse(description="To the provider"), **_errors(400, 503)},
        summary="GoTrue: sign in with a provider (redirect)",
    )
    def get(self, request: Request) -> Response:
        return _found(_flow_start(request))


def _error_redirect(target: str, error: GoTrueError) -> str:
    """GoTrue's redirectErrors: in the query and (with `sb`) in the fragment."""
    params = {
        "error": OAUTH_ERRORS.get(error.status_code, "server_error"),
        "error_code": error.error_code,
        "error_description": error.message,
    }
    if error.error_code in ("user_banned", "provider_email_needs_verification", "signup_disabled"):
        params["error"] = "access_denied"
    return _with_fragment(_with_query(target, params), {**params, "sb": ""})


class CallbackView(PublicGoTrueView):
    """GET /callback?code=&state= (the provider's redirect): to redirect_to with the
    session (fragment) or ?code= (PKCE), or with the error."""

    check_apikey = False

    @extend_schema(
        parameters=[OpenApiParameter(name, str) for name in ("code", "state", "error", "error_description")],
        responses={302: OpenApiResponse(description="To redirect_to with the session, ?code= or the error")},
        summary="GoTrue: the provider's redirect back",
    )
    def get(self, request: Request) -> Response:
        params = request.query_params
        flow = identities.flow_find(state=params.get("state", ""))
        target = redirect_target(flow.redirect_to if flow else "")
        if params.get("error"):
            # The provider refused (the user cancelled, a bad request...): its words, as GoTrue passes them on.
            if flow is not None:
                identities.flow_cancel(flow=flow)
            query = {"error": params["error"], "error_description": params.get("error_description", "")}
            return _found(_with_fragment(_with_query(target, query), {**query, "sb": ""}))
        try:
            result = identities.callback_complete(request=request, flow=flow, code=params.get("code", ""))
        except ApiError as exc:
            return _found(_error_redirect(target, gotrue_error(exc)))
        if result.auth_code:
            return _found(_with_query(target, {"code": result.auth_code}))
        tokens = result.tokens
        fragment = {
            "access_token": session_body(tokens)["access_token"],
            "expires_at": tokens.expires_at,
            "expires_in": tokens.expires_in,
            "provider_token": result.provider_user.access_token,
            **(
                {"provider_refresh_token": result.provider_user.refresh_token}
                if result.provider_user.refresh_token
                else {}
            ),
            "refresh_token": tokens.refresh_token,
            "token_type": "bearer",
            "sb": "",
        }
        return _found(_with_fragment(target, fragment))


class IdentityAuthorizeView(GoTrueView):
    """GET /user/identities/authorize?provider=... (linkIdentity; signed in): the
    provider URL as {url} with skip_http_redirect=true (what supabase-js sends), else a redirect."""

    @extend_schema(
        parameters=[*_AUTHORIZE_PARAMS, OpenApiParameter("skip_http_redirect", bool)],
        responses={200: OpenApiTypes.OBJECT, 302: OpenApiResponse(description="To the provider"), **_errors(400, 401)},
        summary="GoTrue: link a provider identity to the signed-in user",
    )
    def get(self, request: Request) -> Response:
        url = _flow_start(request, link_user=request.user)
        if request.query_params.get("skip_http_redirect") == "true":
            return Response({"url": url})
        return _found(url)


class IdentityView(GoTrueView):
    """DELETE /user/identities/{identity_id}: unlinkIdentity."""

    @extend_schema(
        request=None,
        responses={200: OpenApiTypes.OBJECT, **_errors(401, 403, 404, 422)},
        summary="GoTrue: unlink an identity (never the last one)",
    )
    def delete(self, request: Request, identity_id: str) -> Response:
        try:
            parsed = uuid.UUID(identity_id)
        except ValueError:
            raise GoTrueError(404, "validation_failed", "identity_id must be an UUID") from None
        identities.identity_unlink(
            request=request, user=request.user, identity_id=parsed, session_id=request.auth.session_id
        )
        return Response({})


class IdTokenGrantInput(serializers.Serializer):
    provider = serializers.CharField(required=False, allow_blank=True, max_length=64)
    id_token = serializers.CharField(required=False, allow_blank=True, max_length=16384)
    nonce = serializers.CharField(required=False, allow_blank=True, allow_null=True, max_length=512)
    access_token = serializers.CharField(required=False, allow_blank=True, allow_null=True, max_length=16384)
    link_identity = serializers.BooleanField(required=False, default=False)


def id_token_grant(request: Request, data: dict) -> Response:
    """POST /token?grant_type=id_token (signInWithIdToken), called by TokenView."""
    if not data.get("id_token"):
        raise GoTrueError(400, "validation_failed", "id_token required")
    if not data.get("provider"):
        raise GoTrueError(400, "validation_failed", "provider or client_id and issuer required")
    link_user = None
    if data.get("link_identity"):
        user, _ = GoTrueView.authentication_classes[0]().authenticate(request) or (None, None)
        if user is None:
            raise GoTrueError(400, "validation_failed", "Linking requires a valid user access token in Authorization")
        link_user = user
    tokens = identities.id_token_sign_in(
        request=request,
        provider_name=data["provider"],
        id_token=data["id_token"],
        nonce=data.get("nonce") or "",
        access_token=data.get("access_token") or "",
        link_user=link_user,
        surface=SURFACE,
    )
    return Response(session_body(tokens))
