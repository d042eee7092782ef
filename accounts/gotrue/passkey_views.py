"""GoTrue's passkey API (/auth/v1/passkeys...), as @supabase/auth-js calls it
(GoTrueClient "Passkey Methods"), over accounts.passkeys.

Beyond GoTrue: /passkeys/mfa/options and /passkeys/mfa/verify, a passkey as a
signed-in user's second factor (their session raised to aal2); GoTrue has no
such route (its MFA WebAuthn factors are separate credentials).
"""

from __future__ import annotations

import uuid
from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response

from accounts import passkeys, throttles
from accounts.gotrue.errors import GoTrueError, validation_failed
from accounts.gotrue.serializers import GoTrueSessionOutput, session_body
from accounts.gotrue.views import SURFACE, GoTrueView, PublicGoTrueView, _errors
from accounts.passkey_serializers import (
    PasskeyCeremonyOutput,
    PasskeyEmptyInput,
    PasskeyOutput,
    PasskeyRegisteredOutput,
    PasskeyUpdateInput,
    PasskeyVerifyInput,
    ceremony_body,
    passkey_body,
)
from velro.net import client_ip

# GoTrue's PasskeyUpdate bound is 120; the column here holds 64.
NAME_MAX = passkeys.FRIENDLY_NAME_MAX


def _body(request: Request) -> dict[str, Any]:
    if not isinstance(request.data, dict):
        raise GoTrueError(400, "bad_json", "Could not parse request body as JSON")
    return request.data


def _ceremony_input(request: Request) -> tuple[uuid.UUID, Any]:
    """challenge_id and credential, with GoTrue's messages (the credential's
    shape is checked by the ceremony, after the challenge is spent, as GoTrue)."""
    data = _body(request)
    raw_id, credential = data.get("challenge_id"), data.get("credential")
    if not raw_id:
        raise validation_failed("challenge_id is required")
    if credential is None:
        raise validation_failed("credential is required")
    try:
        return uuid.UUID(str(raw_id)), credential
    except ValueError:
        raise validation_failed("challenge_id must be a valid UUID") from None


class PasskeyRegistrationOptionsView(GoTrueView):
    @extend_schema(
        request=PasskeyEmptyInput,
        responses={200: PasskeyCeremonyOutput, **_errors(401, 403, 422, 503)},
        summary="GoTrue: passkey registration options (signed-in user; aal2 if they have a second factor)",
    )
    def post(self, request: Request) -> Response:
        ceremony = passkeys.passkey_registration_options(user=request.user, session_id=request.auth.session_id)
        return Response(ceremony_body(ceremony))


class PasskeyRegistrationVerifyView(GoTrueView):
    @extend_schema(
        request=PasskeyVerifyInput,
        responses={200: PasskeyRegisteredOutput, **_errors(400, 401, 403, 422, 503)},
        summary="GoTrue: store a passkey (recovery_codes with the user's first second factor, shown once)",
    )
    def post(self, request: Request) -> Response:
        challenge_id, credential = _ceremony_input(request)
        registered = passkeys.passkey_register(
            request=request,
            user=request.user,
            session_id=request.auth.session_id,
            challenge_id=challenge_id,
            credential=credential,
            surface=SURFACE,
        )
        body = passkey_body(registered.passkey, gotrue=True)
        body.pop("last_used_at", None)  # GoTrue's PasskeyMetadataResponse: id, friendly_name, created_at
        if registered.recovery_codes:
            body["recovery_codes"] = registered.recovery_codes
        return Response(body)


class PasskeyAuthenticationOptionsView(PublicGoTrueView):
    @extend_schema(
        request=PasskeyEmptyInput,
        responses={200: PasskeyCeremonyOutput, **_errors(400, 401, 429, 503)},
        summary="GoTrue: passkey sign-in options (discoverable: no allowCredentials)",
    )
    def post(self, request: Request) -> Response:
        throttles.login_ip_guard(ip=client_ip(request))  # each ceremony stores a challenge
        _body(request)  # gotrue_meta_security (a captcha token) is not checked: no captcha here
        return Response(ceremony_body(passkeys.passkey_authentication_options()))


class PasskeyAuthenticationVerifyView(PublicGoTrueView):
    @extend_schema(
        request=PasskeyVerifyInput,
        responses={200: GoTrueSessionOutput, **_errors(400, 401, 403, 503)},
        summary="GoTrue: sign in with a passkey (a session at aal2, amr passkey)",
    )
    def post(self, request: Request) -> Response:
        challenge_id, credential = _ceremony_input(request)
        tokens = passkeys.passkey_sign_in(
            request=request, challenge_id=challenge_id, credential=credential, surface=SURFACE
        )
        return Response(session_body(tokens))


class PasskeyMfaOptionsView(GoTrueView):
    @extend_schema(
        request=PasskeyEmptyInput,
        responses={200: PasskeyCeremonyOutput, **_errors(401, 403, 422, 503)},
        summary="Velro: passkey as second factor, options (bound to the caller's session)",
    )
    def post(self, request: Request) -> Response:
        ceremony = passkeys.passkey_authentication_options(user=request.user, session_id=request.auth.session_id)
        return Response(ceremony_body(ceremony))


class PasskeyMfaVerifyView(GoTrueView):
    @extend_schema(
        request=PasskeyVerifyInput,
        responses={200: GoTrueSessionOutput, **_errors(400, 401, 403, 503)},
        summary="Velro: passkey as second factor, verify (the same session at aal2, new tokens)",
    )
    def post(self, request: Request) -> Response:
        challenge_id, credential = _ceremony_input(request)
        tokens = passkeys.passkey_second_factor(
            request=request,
            user=request.user,
            session_id=request.auth.session_id,
            challenge_id=challenge_id,
            credential=credential,
            surface=SURFACE,
        )
        return Response(session_body(tokens))


class PasskeyListView(GoTrueView):
    @extend_schema(
        responses={200: PasskeyOutput(many=True), **_errors(401, 403, 503)}, summary="GoTrue: the caller's passkeys"
    )
    def get(self, request: Request) -> Response:
        return Response([passkey_body(item, gotrue=True) for item in passkeys.passkey_list(user_id=request.user.pk)])


class PasskeyDetailView(GoTrueView):
    @extend_schema(
        request=PasskeyUpdateInput,
        responses={200: PasskeyOutput, **_errors(400, 401, 403, 404, 503)},
        summary="GoTrue: rename a passkey",
    )
    def patch(self, request: Request, passkey_id: str) -> Response:
        name = _body(request).get("friendly_name")
        if not name or not isinstance(name, str):
            raise validation_failed("friendly_name is required")
        if len(name) > NAME_MAX:
            raise validation_failed(f"friendly_name must be {NAME_MAX} characters or less")
        passkey = passkeys.passkey_rename(
            request=request, user_id=request.user.pk, passkey_id=passkey_id, friendly_name=name, surface=SURFACE
        )
        return Response(passkey_body(passkey, gotrue=True))

    @extend_schema(
        request=None, responses={204: None, **_errors(401, 403, 404, 503)}, summary="GoTrue: delete a passkey (aal2)"
    )
    def delete(self, request: Request, passkey_id: str) -> Response:
        passkeys.passkey_delete(
            request=request,
            user_id=request.user.pk,
            session_id=request.auth.session_id,
            passkey_id=passkey_id,
            surface=SURFACE,
        )
        return Response(status=status.HTTP_204_NO_CONTENT)
