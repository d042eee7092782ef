"""The JWKS of both surfaces: the public keys that verify Velro's access tokens.

`GET /auth/v1/.well-known/jwks.json` (GoTrue's path and shape, no apikey, CORS
like the rest of /auth/v1/) and `GET /api/v1/auth/.well-known/jwks.json` (the
native surface). The same keys: both surfaces sign with the one active key.
Standby keys are listed before they sign, retired ones until their last token
has expired; revoked ones never. Public members only (kty, crv/x/y or n/e,
kid, alg, use, key_ops). Served from the process's key set: no SQL when warm.
"""

from __future__ import annotations

from django.conf import settings
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from accounts import signing
from accounts.gotrue.views import PublicGoTrueView
from accounts.views import PublicView
from velro.openapi import errors


class JwkOutput(serializers.Serializer):
    kty = serializers.ChoiceField(choices=["EC", "RSA"])
    kid = serializers.CharField()
    alg = serializers.ChoiceField(choices=list(signing.ALGORITHMS))
    use = serializers.ChoiceField(choices=["sig"])
    key_ops = serializers.ListField(child=serializers.CharField())
    crv = serializers.CharField(required=False, help_text="EC keys: P-256")
    x = serializers.CharField(required=False)
    y = serializers.CharField(required=False)
    n = serializers.CharField(required=False, help_text="RSA keys: modulus")
    e = serializers.CharField(required=False, help_text="RSA keys: exponent")


class JwksOutput(serializers.Serializer):
    keys = JwkOutput(many=True)


def _jwks_response() -> Response:
    response = Response(signing.keys.jwks())
    response["Cache-Control"] = f"public, max-age={settings.JWKS_MAX_AGE_SECONDS}"
    return response


class JwksView(PublicView):
    @extend_schema(
        responses={200: JwksOutput, **errors(503)},
        summary="Public keys (JWKS) that verify access tokens of both surfaces",
    )
    def get(self, request: Request) -> Response:
        return _jwks_response()


class GoTrueJwksView(PublicGoTrueView):
    """GoTrue's /.well-known/jwks.json: public, no apikey (as GoTrue serves it)."""

    check_apikey = False

    @extend_schema(responses={200: JwksOutput}, summary="GoTrue: public keys (JWKS) that verify access tokens")
    def get(self, request: Request) -> Response:
        return _jwks_response()
