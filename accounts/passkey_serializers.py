"""Passkey shapes, shared by the native API (accounts.passkey_views) and the
GoTrue surface (accounts.gotrue.passkey_views): GoTrue's field names on both."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

from accounts.models import Passkey
from accounts.passkeys import FRIENDLY_NAME_MAX, Ceremony
from accounts.serializers import StrictCharField, StrictInput
from velro.rendering import render


class PasskeyCeremonyOutput(serializers.Serializer):
    """An options answer: pass `options` to navigator.credentials.create()/get()
    (WebAuthn's JSON form: binary fields base64url), then verify with `challenge_id`."""

    challenge_id = serializers.UUIDField()
    options = serializers.JSONField(help_text="PublicKeyCredentialCreationOptions / RequestOptions, JSON form")
    expires_at = serializers.IntegerField(help_text="Unix seconds: the challenge ends then")


class PasskeyVerifyInput(StrictInput):
    challenge_id = serializers.UUIDField()
    credential = serializers.JSONField(help_text="The credential, serialized as PublicKeyCredential.toJSON() does")


class PasskeyOutput(serializers.Serializer):
    id = serializers.UUIDField()
    friendly_name = serializers.CharField()
    created_at = serializers.DateTimeField()
    last_used_at = serializers.DateTimeField(allow_null=True)


class PasskeyRegisteredOutput(PasskeyOutput):
    recovery_codes = serializers.ListField(
        child=serializers.CharField(),
        required=False,
        help_text="Only with the user's first second factor: their recovery codes, shown this once",
    )


class PasskeyUpdateInput(StrictInput):
    friendly_name = StrictCharField(max_length=FRIENDLY_NAME_MAX)


class PasskeyListOutput(serializers.Serializer):
    results = PasskeyOutput(many=True)


class PasskeyEmptyInput(serializers.Serializer):
    """Nothing is read (GoTrue's clients send `{}`, or gotrue_meta_security for a captcha)."""


def ceremony_body(ceremony: Ceremony) -> dict[str, Any]:
    return render(PasskeyCeremonyOutput, ceremony)


def passkey_body(passkey: Passkey, *, gotrue: bool = False) -> dict[str, Any]:
    """GoTrue leaves out an empty friendly_name and a null last_used_at (omitempty)."""
    body = render(PasskeyOutput, passkey)
    if gotrue:
        body = {name: value for name, value in body.items() if value not in ("", None)}
    return body
