"""Input and output serializers for the accounts API."""

from __future__ import annotations

import unicodedata
from typing import Any

from django.conf import settings
from django.core.validators import RegexValidator
from rest_framework import serializers

from accounts.models import User
from accounts.selectors import user_field
from accounts.services import IssuedTokens
from velro.rendering import render

USERNAME_VALIDATOR = RegexValidator(
    r"^[A-Za-z0-9_.-]{3,30}$", "3-30 characters: letters, digits, '_', '.', '-'.", code="invalid_username"
)


class StrictCharField(serializers.CharField):
    """A CharField that refuses numbers and booleans instead of str()-ing them."""

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


def _password_field(max_length: int) -> serializers.CharField:
    # Passwords are taken as typed: no trimming, no other normalisation.
    return StrictCharField(max_length=max_length, trim_whitespace=False, write_only=True)


class StrictInput(serializers.Serializer):
    """Rejects fields it does not know instead of silently ignoring them."""

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if isinstance(self.initial_data, dict):
            unknown = sorted(set(self.initial_data) - set(self.fields))
            if unknown:
                raise serializers.ValidationError({name: ["This field cannot be changed here."] for name in unknown})
        return attrs


class SignupInput(serializers.Serializer):
    email = serializers.EmailField(max_length=254)
    password = _password_field(settings.PASSWORD_MAX_LENGTH)
    username = StrictCharField(
        required=False, allow_null=True, allow_blank=True, max_length=30, validators=[USERNAME_VALIDATOR]
    )
    # Any value is accepted: a malformed referral code must never fail a signup
    # (referral_code_clean keeps it only when it is a plausible code).
    referral_code = serializers.JSONField(required=False, allow_null=True)


def referral_code_clean(value: Any) -> str | None:
    """A plausible code as typed, else None (a bad code never fails a signup)."""
    if isinstance(value, str) and 0 < len(value.strip()) <= 64 and value.isprintable():
        return value.strip()
    return None


class LoginInput(serializers.Serializer):
    email = serializers.EmailField(required=False, max_length=254)
    username = StrictCharField(required=False, max_length=254)
    # Generous limit: a login must fail as invalid_credentials, not reveal rules.
    password = _password_field(1024)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if ("email" in attrs) == ("username" in attrs):
            raise serializers.ValidationError({"email": ["Provide either email or username."]})
        return attrs


class RefreshInput(serializers.Serializer):
    refresh_token = StrictCharField(max_length=512)


class LogoutInput(serializers.Serializer):
    scope = serializers.ChoiceField(choices=["local", "global", "others"], default="local")


def _printable(value: str) -> str:
    # A display name ends up in email subjects and admin pages: no line
    # breaks or other control characters.
    if any(unicodedata.category(char) == "Cc" for char in value):
        raise serializers.ValidationError("Control characters are not allowed.")
    return value


class ProfileInput(StrictInput):
    display_name = StrictCharField(required=False, allow_blank=True, max_length=100, validators=[_printable])
    username = StrictCharField(
        required=False, allow_null=True, allow_blank=True, max_length=30, validators=[USERNAME_VALIDATOR]
    )


class PasswordChangeInput(serializers.Serializer):
    current_password = _password_field(1024)
    new_password = _password_field(settings.PASSWORD_MAX_LENGTH)


class ApiKeyCreateInput(serializers.Serializer):
    name = StrictCharField(max_length=64)


class ApiKeyOutput(serializers.Serializer):
    # Only a just-created key has raw_key: the one time the full key is shown.
    key = serializers.CharField(source="raw_key", required=False, help_text="The full key: creation response only.")
    id = serializers.UUIDField()
    name = serializers.CharField()
    prefix = serializers.CharField()
    is_primary = serializers.BooleanField()
    created_at = serializers.DateTimeField()
    last_used_at = serializers.DateTimeField(allow_null=True)


class UserOutput(serializers.Serializer):
    id = serializers.UUIDField()
    email = serializers.EmailField()
    username = serializers.CharField(allow_null=True)
    role = serializers.SerializerMethodField()
    display_name = serializers.CharField()
    created_at = serializers.DateTimeField(source="date_joined")
    # Part of the contract; filled in by the referrals app (accounts.selectors.user_field_register).
    referral_code = serializers.SerializerMethodField()

    def get_referral_code(self, user: User) -> str | None:
        return user_field(user, "referral_code")

    def get_role(self, user: User) -> str:
        profile = getattr(user, "profile", None)
        return profile.role if profile is not None else "viewer"


class TokenOutput(serializers.Serializer):
    """The token body: access token, refresh token and the user (token_body() renders it)."""

    access_token = serializers.CharField()
    token_type = serializers.ChoiceField(choices=["bearer"])
    expires_in = serializers.IntegerField()
    expires_at = serializers.IntegerField()
    refresh_token = serializers.CharField()
    user = UserOutput()


class SignupOutput(TokenOutput):
    api_key = ApiKeyOutput(help_text="The primary API key; `key` is shown only here.")


class ApiKeyListOutput(serializers.Serializer):
    results = ApiKeyOutput(many=True)


def token_body(tokens: IssuedTokens) -> dict[str, Any]:
    """The token body, shaped by TokenOutput (its one definition)."""
    return render(
        TokenOutput,
        {
            "access_token": tokens.access_token,
            "token_type": "bearer",
            "expires_in": tokens.expires_in,
            "expires_at": tokens.expires_at,
            "refresh_token": tokens.refresh_token,
            "user": tokens.user,
        },
    )


# --- one-time codes and links -------------------------------------------------------------


def _code_field() -> serializers.CharField:
    return StrictCharField(required=False, max_length=16)


def _token_field() -> serializers.CharField:
    return StrictCharField(required=False, max_length=256, help_text="The link token (the link's `token` parameter)")


class EmailRequestInput(StrictInput):
    email = serializers.EmailField(max_length=254)


class CodeRequestInput(EmailRequestInput):
    create_user = serializers.BooleanField(
        required=False, default=False, help_text="Create a passwordless account if the address has none"
    )


class CodeOrTokenInput(StrictInput):
    """Either email + code (from the email) or token (from the email's link)."""

    email = serializers.EmailField(required=False, max_length=254)
    code = _code_field()
    token = _token_field()

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        attrs = super().validate(attrs)
        with_code = "code" in attrs
        if with_code == ("token" in attrs):
            raise serializers.ValidationError({"code": ["Provide either email and code, or token."]})
        if with_code and "email" not in attrs:
            raise serializers.ValidationError({"email": ["The address the code was sent to is required."]})
        return attrs


class PasswordResetInput(CodeOrTokenInput):
    new_password = _password_field(settings.PASSWORD_MAX_LENGTH)


class AcceptedOutput(serializers.Serializer):
    detail = serializers.CharField()


class PendingSignupOutput(serializers.Serializer):
    """A signup in confirmation-required mode: no tokens until the address is confirmed."""

    detail = serializers.CharField()
    user = UserOutput()


class EmailChangeInput(StrictInput):
    new_email = serializers.EmailField(max_length=254)


class EmailChangeConfirmOutput(serializers.Serializer):
    changed = serializers.BooleanField(help_text="false: the other address's code is still needed")
    user = UserOutput()
