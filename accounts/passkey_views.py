"""The native passkey API (/api/v1/auth/passkeys/...): the same flows as the
GoTrue surface (accounts.gotrue.passkey_views), the native shapes and errors.
Passkey management needs a session access token (an API key cannot add or
remove a sign-in credential)."""

from __future__ import annotations

import uuid

from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts import passkeys, throttles
from accounts.authentication import HasSession
from accounts.passkey_serializers import (
    PasskeyCeremonyOutput,
    PasskeyEmptyInput,
    PasskeyListOutput,
    PasskeyOutput,
    PasskeyRegisteredOutput,
    PasskeyUpdateInput,
    PasskeyVerifyInput,
    ceremony_body,
    passkey_body,
)
from accounts.serializers import TokenOutput, token_body
from accounts.views import PublicView
from velro.net import client_ip
from velro.openapi import errors

SURFACE = "native"


class SessionView(APIView):
    permission_classes = [IsAuthenticated, HasSession]


def _verify_input(request: Request) -> dict:
    data = PasskeyVerifyInput(data=request.data)
    data.is_valid(raise_exception=True)
    return data.validated_data


class PasskeyRegistrationOptionsView(SessionView):
    @extend_schema(
        request=PasskeyEmptyInput,
        responses={200: PasskeyCeremonyOutput, **errors(401, 403, 422, 503)},
        summary="Passkey registration options (403 insufficient_aal: a user with a second factor needs aal2)",
    )
    def post(self, request: Request) -> Response:
        ceremony = passkeys.passkey_registration_options(user=request.user, session_id=request.auth.session_id)
        return Response(ceremony_body(ceremony))


class PasskeyRegistrationVerifyView(SessionView):
    @extend_schema(
        request=PasskeyVerifyInput,
        responses={201: PasskeyRegisteredOutput, **errors(400, 401, 403, 415, 422, 503)},
        summary="Store a passkey (recovery_codes with the user's first second factor, shown once)",
    )
    def post(self, request: Request) -> Response:
        data = _verify_input(request)
        registered = passkeys.passkey_register(
            request=request,
            user=request.user,
            session_id=request.auth.session_id,
            challenge_id=data["challenge_id"],
            credential=data["credential"],
            surface=SURFACE,
        )
        body = passkey_body(registered.passkey)
        if registered.recovery_codes:
            body["recovery_codes"] = registered.recovery_codes
        return Response(body, status=status.HTTP_201_CREATED)


class PasskeyAuthenticationOptionsView(PublicView):
    @extend_schema(
        request=PasskeyEmptyInput,
        responses={200: PasskeyCeremonyOutput, **errors(400, 415, 429, 503)},
        summary="Passkey sign-in options (discoverable credential: no allowCredentials)",
    )
    def post(self, request: Request) -> Response:
        throttles.login_ip_guard(ip=client_ip(request))
        PasskeyEmptyInput(data=request.data).is_valid(raise_exception=True)  # a JSON object, or nothing
        return Response(ceremony_body(passkeys.passkey_authentication_options()))


class PasskeyAuthenticationVerifyView(PublicView):
    @extend_schema(
        request=PasskeyVerifyInput,
        responses={200: TokenOutput, **errors(400, 403, 415, 503)},
        summary="Sign in with a passkey: a session at aal2 (amr passkey)",
    )
    def post(self, request: Request) -> Response:
        data = _verify_input(request)
        tokens = passkeys.passkey_sign_in(
            request=request, challenge_id=data["challenge_id"], credential=data["credential"], surface=SURFACE
        )
        return Response(token_body(tokens))


class PasskeyMfaOptionsView(SessionView):
    @extend_schema(
        request=PasskeyEmptyInput,
        responses={200: PasskeyCeremonyOutput, **errors(401, 403, 422, 503)},
        summary="A passkey as second factor: options bound to the caller's session",
    )
    def post(self, request: Request) -> Response:
        ceremony = passkeys.passkey_authentication_options(user=request.user, session_id=request.auth.session_id)
        return Response(ceremony_body(ceremony))


class PasskeyMfaVerifyView(SessionView):
    @extend_schema(
        request=PasskeyVerifyInput,
        responses={200: TokenOutput, **errors(400, 401, 403, 415, 503)},
        summary="A passkey as second factor: the caller's session raised to aal2 (new tokens of that session)",
    )
    def post(self, request: Request) -> Response:
        data = _verify_input(request)
        tokens = passkeys.passkey_second_factor(
            request=request,
            user=request.user,
            session_id=request.auth.session_id,
            challenge_id=data["challenge_id"],
            credential=data["credential"],
            surface=SURFACE,
        )
        return Response(token_body(tokens))


class PasskeyListView(SessionView):
    @extend_schema(responses={200: PasskeyListOutput, **errors(401, 403, 503)}, summary="The caller's passkeys")
    def get(self, request: Request) -> Response:
        items = passkeys.passkey_list(user_id=request.user.pk)
        return Response({"results": [passkey_body(item) for item in items]})


class PasskeyDetailView(SessionView):
    @extend_schema(
        request=PasskeyUpdateInput,
        responses={200: PasskeyOutput, **errors(400, 401, 403, 404, 415, 503)},
        summary="Rename a passkey",
    )
    def patch(self, request: Request, passkey_id: uuid.UUID) -> Response:
        data = PasskeyUpdateInput(data=request.data)
        data.is_valid(raise_exception=True)
        passkey = passkeys.passkey_rename(
            request=request,
            user_id=request.user.pk,
            passkey_id=passkey_id,
            friendly_name=data.validated_data["friendly_name"],
            surface=SURFACE,
        )
        return Response(passkey_body(passkey))

    @extend_schema(responses={204: None, **errors(401, 403, 404, 503)}, summary="Delete a passkey (aal2)")
    def delete(self, request: Request, passkey_id: uuid.UUID) -> Response:
        passkeys.passkey_delete(
            request=request,
            user_id=request.user.pk,
            session_id=request.auth.session_id,
            passkey_id=passkey_id,
            surface=SURFACE,
        )
        return Response(status=status.HTTP_204_NO_CONTENT)
