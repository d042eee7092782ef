"""The native API's sign in with a provider (/api/v1/auth/oauth/..., /identities/...).

The same flow as the GoTrue surface (accounts.identities); only the shapes differ, and
the native flow always ends in a code (PKCE required): no tokens travel in a URL.
"""

from __future__ import annotations

import uuid

from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts import external, flows, identities
from accounts.authentication import HasSession
from accounts.gotrue.serializers import _identities
from accounts.redirects import redirect_target
from accounts.serializers import StrictCharField, TokenOutput, token_body
from accounts.views import PublicView
from velro.openapi import errors

SURFACE = "native"


class ProvidersOutput(serializers.Serializer):
    providers = serializers.ListField(child=serializers.CharField())


class AuthorizeInput(serializers.Serializer):
    provider = StrictCharField(max_length=64)
    redirect_to = StrictCharField(max_length=2048, required=False, allow_blank=True)
    code_challenge = StrictCharField(min_length=43, max_length=128)
    code_challenge_method = serializers.ChoiceField(choices=["S256", "s256", "plain"], default="S256")
    scopes = StrictCharField(max_length=512, required=False, allow_blank=True)


class UrlOutput(serializers.Serializer):
    url = serializers.CharField()


class CodeInput(serializers.Serializer):
    code = StrictCharField(max_length=256)
    code_verifier = StrictCharField(max_length=256)


class IdTokenInput(serializers.Serializer):
    provider = StrictCharField(max_length=64)
    id_token = StrictCharField(max_length=16384)
    nonce = StrictCharField(max_length=512, required=False, allow_blank=True)
    access_token = StrictCharField(max_length=16384, required=False, allow_blank=True)


class IdentityOutput(serializers.Serializer):
    identity_id = serializers.CharField()
    id = serializers.CharField(help_text="The provider's subject")
    provider = serializers.CharField()
    email = serializers.CharField(allow_blank=True)
    identity_data = serializers.DictField()
    created_at = serializers.CharField(allow_null=True)
    last_sign_in_at = serializers.CharField(allow_null=True)


class IdentitiesOutput(serializers.Serializer):
    identities = IdentityOutput(many=True)


def _valid(serializer_class: type, request: Request) -> dict:
    data = serializer_class(data=request.data)
    data.is_valid(raise_exception=True)
    return data.validated_data


def _start(request: Request, data: dict, link_user: object = None) -> str:
    return identities.flow_start(
        provider_name=data["provider"],
        redirect_to=redirect_target(data.get("redirect_to") or ""),
        code_challenge=data["code_challenge"],
        code_challenge_method=data["code_challenge_method"],
        scopes=data.get("scopes") or "",
        link_user=link_user,
        surface=SURFACE,
    )


class ProvidersView(PublicView):
    @extend_schema(responses={200: ProvidersOutput}, summary="The providers one may sign in with")
    def get(self, request: Request) -> Response:
        return Response({"providers": external.providers_enabled()})


class OAuthAuthorizeView(PublicView):
    @extend_schema(
        request=AuthorizeInput,
        responses={200: UrlOutput, **errors(400, 415, 502, 503)},
        summary="Start a provider sign-in: the URL to send the browser to (ends at redirect_to?code=)",
    )
    def post(self, request: Request) -> Response:
        return Response({"url": _start(request, _valid(AuthorizeInput, request))})


class OAuthTokenView(PublicView):
    @extend_schema(
        request=CodeInput,
        responses={200: TokenOutput, **errors(400, 404, 415, 422, 429, 503)},
        summary="Exchange a provider sign-in's code (with its PKCE verifier) for tokens",
    )
    def post(self, request: Request) -> Response:
        data = _valid(CodeInput, request)
        tokens = flows.pkce_sign_in(
            request=request, auth_code=data["code"], code_verifier=data["code_verifier"], surface=SURFACE
        )
        return Response(token_body(tokens))


class OAuthIdTokenView(PublicView):
    @extend_schema(
        request=IdTokenInput,
        responses={200: TokenOutput, **errors(400, 403, 415, 422, 502, 503)},
        summary="Sign in with an ID token the provider issued to this service's client id",
    )
    def post(self, request: Request) -> Response:
        data = _valid(IdTokenInput, request)
        tokens = identities.id_token_sign_in(
            request=request,
            provider_name=data["provider"],
            id_token=data["id_token"],
            nonce=data.get("nonce") or "",
            access_token=data.get("access_token") or "",
            surface=SURFACE,
        )
        return Response(token_body(tokens))


class IdentityListView(APIView):
    permission_classes = [IsAuthenticated]

    @extend_schema(responses={200: IdentitiesOutput, **errors(401, 503)}, summary="The caller's identities")
    def get(self, request: Request) -> Response:
        return Response({"identities": _identities(request.user)})


class IdentityLinkView(APIView):
    # A session, not an API key: linking or unlinking changes how the account signs in.
    permission_classes = [IsAuthenticated, HasSession]

    @extend_schema(
        request=AuthorizeInput,
        responses={200: UrlOutput, **errors(400, 401, 403, 415, 502, 503)},
        summary="Link a provider to the caller: the URL to send the browser to",
    )
    def post(self, request: Request) -> Response:
        return Response({"url": _start(request, _valid(AuthorizeInput, request), link_user=request.user)})


class IdentityDetailView(APIView):
    permission_classes = [IsAuthenticated, HasSession]

    @extend_schema(request=None, responses={204: None, **errors(401, 403, 404, 422, 503)}, summary="Unlink an identity")
    def delete(self, request: Request, identity_id: uuid.UUID) -> Response:
        identities.identity_unlink(
            request=request, user=request.user, identity_id=identity_id, session_id=request.auth.session_id
        )
        return Response(status=status.HTTP_204_NO_CONTENT)
