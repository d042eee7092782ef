"""GoTrue's request and response shapes.

Inputs ignore fields they do not know (GoTrue does, and its clients send
extras such as `gotrue_meta_security` and `code_challenge`); outputs follow
GoTrue's user and session objects.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.conf import settings
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field, extend_schema_serializer
from rest_framework import serializers

from accounts import identities
from accounts.gotrue.tokens import ROLE, app_metadata, gotrue_access_token_encode, user_email
from accounts.models import Identity, User
from accounts.selectors import user_factors
from accounts.serializers import StrictCharField
from accounts.services import IssuedTokens
from velro.rendering import render

EMAIL_PROVIDER = "email"
METADATA_MAX_KEYS = 100


class MetadataField(serializers.JSONField):
    """`data`: a JSON object (GoTrue's user_metadata), or null for none."""

    def to_internal_value(self, data: Any) -> dict | None:
        value = super().to_internal_value(data)
        if value is None:
            return None
        if not isinstance(value, dict):
            raise serializers.ValidationError("must be a JSON object")
        if len(value) > METADATA_MAX_KEYS:
            raise serializers.ValidationError(f"at most {METADATA_MAX_KEYS} keys")
        if _has_nul(value):
            # PostgreSQL's jsonb cannot store U+0000: refuse it here, not with a 500.
            raise serializers.ValidationError("must not contain NUL characters")
        return value


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(key) or _has_nul(item) for key, item in value.items())
    if isinstance(value, list):
        return any(_has_nul(item) for item in value)
    return False


def _password() -> StrictCharField:
    # Taken as typed; the length and strength rules are the services' (weak_password).
    return StrictCharField(trim_whitespace=False, allow_blank=True, required=False, max_length=1024)


@extend_schema_serializer(component_name="GoTrueSignupInput")
class SignupInput(serializers.Serializer):
    email = StrictCharField(required=False, allow_blank=True, max_length=254)  # the column's size
    phone = StrictCharField(required=False, allow_blank=True, allow_null=True)
    password = _password()
    data = MetadataField(required=False, allow_null=True)


@extend_schema_serializer(component_name="GoTruePasswordGrantInput")
class PasswordGrantInput(serializers.Serializer):
    email = StrictCharField(required=False, allow_blank=True, max_length=1024)
    phone = StrictCharField(required=False, allow_blank=True, allow_null=True)
    password = _password()


@extend_schema_serializer(component_name="GoTrueRefreshGrantInput")
class RefreshGrantInput(serializers.Serializer):
    refresh_token = StrictCharField(required=False, allow_blank=True, max_length=512)


@extend_schema_serializer(component_name="GoTrueUserUpdateInput")
class UserUpdateInput(serializers.Serializer):
    email = StrictCharField(required=False, allow_blank=True, allow_null=True, max_length=1024)
    phone = StrictCharField(required=False, allow_blank=True, allow_null=True)
    password = StrictCharField(required=False, allow_null=True, allow_blank=True, trim_whitespace=False)
    # Blank is absent, as GoTrue reads it (an empty form field: current_password_required).
    current_password = StrictCharField(
        required=False, allow_null=True, allow_blank=True, trim_whitespace=False, max_length=1024
    )
    nonce = StrictCharField(required=False, allow_blank=True, allow_null=True)
    data = MetadataField(required=False, allow_null=True)
    app_metadata = serializers.JSONField(required=False, allow_null=True)
    code_challenge = StrictCharField(required=False, allow_blank=True, allow_null=True, max_length=256)
    code_challenge_method = StrictCharField(required=False, allow_blank=True, allow_null=True, max_length=256)


def _challenge() -> StrictCharField:
    return StrictCharField(required=False, allow_blank=True, allow_null=True, max_length=256)


@extend_schema_serializer(component_name="GoTrueRecoverInput")
class RecoverInput(serializers.Serializer):
    email = StrictCharField(required=False, allow_blank=True, allow_null=True, max_length=1024)
    code_challenge = _challenge()
    code_challenge_method = _challenge()


@extend_schema_serializer(component_name="GoTrueOtpInput")
class OtpInput(RecoverInput):
    phone = StrictCharField(required=False, allow_blank=True, allow_null=True, max_length=64)
    create_user = serializers.BooleanField(required=False, allow_null=True, default=True)
    data = MetadataField(required=False, allow_null=True)
    channel = StrictCharField(required=False, allow_blank=True, allow_null=True, max_length=32)


@extend_schema_serializer(component_name="GoTrueVerifyInput")
class VerifyInput(serializers.Serializer):
    type = StrictCharField(required=False, allow_blank=True, allow_null=True, max_length=32)
    token = StrictCharField(required=False, allow_blank=True, allow_null=True, max_length=256)
    token_hash = StrictCharField(required=False, allow_blank=True, allow_null=True, max_length=256)
    email = StrictCharField(required=False, allow_blank=True, allow_null=True, max_length=1024)
    phone = StrictCharField(required=False, allow_blank=True, allow_null=True, max_length=64)
    redirect_to = StrictCharField(required=False, allow_blank=True, allow_null=True, max_length=2048)


@extend_schema_serializer(component_name="GoTrueResendInput")
class ResendInput(RecoverInput):
    type = StrictCharField(required=False, allow_blank=True, allow_null=True, max_length=32)
    phone = StrictCharField(required=False, allow_blank=True, allow_null=True, max_length=64)


@extend_schema_serializer(component_name="GoTruePkceGrantInput")
class PkceGrantInput(serializers.Serializer):
    auth_code = StrictCharField(required=False, allow_blank=True, allow_null=True, max_length=256)
    code_verifier = StrictCharField(required=False, allow_blank=True, allow_null=True, max_length=256)


@extend_schema_serializer(component_name="GoTrueInviteInput")
class InviteInput(serializers.Serializer):
    email = StrictCharField(required=False, allow_blank=True, allow_null=True, max_length=1024)
    data = MetadataField(required=False, allow_null=True)


@extend_schema_serializer(component_name="GoTrueGenerateLinkInput")
class GenerateLinkInput(InviteInput):
    type = StrictCharField(required=False, allow_blank=True, allow_null=True, max_length=32)
    password = StrictCharField(
        required=False, allow_blank=True, allow_null=True, trim_whitespace=False, max_length=1024
    )
    new_email = StrictCharField(required=False, allow_blank=True, allow_null=True, max_length=1024)
    redirect_to = StrictCharField(required=False, allow_blank=True, allow_null=True, max_length=2048)


def display_name_from(metadata: dict | None) -> str:
    """A display name from Supabase's usual metadata keys (full_name, name)."""
    for key in ("full_name", "name", "display_name"):
        value = (metadata or {}).get(key)
        if isinstance(value, str) and value.strip():
            cleaned = "".join(char for char in value.strip() if char.isprintable())
            return cleaned[:100]
    return ""


# --- outputs ---------------------------------------------------------------------------


def _iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value is not None else None


def _identities(user: User) -> list[dict[str, Any]]:
    """GoTrue's identities: the stored ones (providers, imports; accounts.identities)
    and, for a password or email-code user, the email identity derived from the user."""
    stored = identities.stored_identities(user)
    email = user_email(user)
    derived = [_email_identity(user, email)] if email and identities.has_email_identity(user, stored) else []
    return derived + [_stored_identity(identity) for identity in stored]


def _email_identity(user: User, email: str) -> dict[str, Any]:
    user_id = str(user.pk)
    return {
        # GoTrue's email identity: provider id = user id; our identity id is
        # derived (stable) since it is not stored.
        "identity_id": str(identities.email_identity_id(user)),
        "id": user_id,
        "user_id": user_id,
        "identity_data": {
            "email": email,
            "email_verified": user.email_confirmed_at is not None,
            "phone_verified": False,
            "sub": user_id,
        },
        "provider": EMAIL_PROVIDER,
        "last_sign_in_at": _iso(user.last_login),
        "created_at": _iso(user.date_joined),
        "updated_at": _iso(user.updated_at or user.date_joined),
        "email": email,
    }


def _stored_identity(identity: Identity) -> dict[str, Any]:
    return {
        "identity_id": str(identity.pk),
        "id": identity.provider_id,
        "user_id": str(identity.user_id),
        "identity_data": identity.identity_data,
        "provider": identity.provider,
        "last_sign_in_at": _iso(identity.last_sign_in_at),
        "created_at": _iso(identity.created_at),
        "updated_at": _iso(identity.updated_at),
        "email": identity.email,
    }


class IsoDateTimeField(serializers.DateTimeField):
    """A timestamp as GoTrue writes it (ISO 8601, `Z` for UTC); null stays null."""

    def to_representation(self, value: datetime | None) -> str | None:
        return _iso(value)


class GoTrueFactorOutput(serializers.Serializer):
    """GoTrue's factor object (in the user object's `factors`); friendly_name omitted when empty, as GoTrue."""

    id = serializers.UUIDField()
    friendly_name = serializers.CharField(required=False)
    factor_type = serializers.CharField()
    status = serializers.CharField(help_text="unverified or verified")
    created_at = IsoDateTimeField()
    updated_at = IsoDateTimeField()
    last_challenged_at = IsoDateTimeField(allow_null=True)

    def to_representation(self, factor: Any) -> dict[str, Any]:
        body = super().to_representation(factor)
        if not body.get("friendly_name"):
            body.pop("friendly_name", None)
        return body


@extend_schema_field(GoTrueFactorOutput(many=True))
class FactorsField(serializers.Field):
    """The user's factors. A plain (not read-only) optional field, so the published
    schema does not list it as required: the user object omits it when empty."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(source="*", required=False, **kwargs)

    def to_representation(self, user: User) -> list[dict[str, Any]]:
        return GoTrueFactorOutput(user_factors(user=user), many=True).data


class GoTrueUserOutput(serializers.Serializer):
    """GoTrue's user object: the one definition of its shape (responses and the contract)."""

    id = serializers.UUIDField()
    aud = serializers.SerializerMethodField()
    role = serializers.SerializerMethodField()
    email = serializers.SerializerMethodField()
    email_confirmed_at = IsoDateTimeField(allow_null=True)
    phone = serializers.SerializerMethodField()
    confirmed_at = IsoDateTimeField(source="email_confirmed_at", allow_null=True)
    last_sign_in_at = IsoDateTimeField(source="last_login", allow_null=True)
    app_metadata = serializers.SerializerMethodField()
    user_metadata = serializers.DictField()
    identities = serializers.SerializerMethodField()
    created_at = IsoDateTimeField(source="date_joined")
    updated_at = serializers.SerializerMethodField()
    is_anonymous = serializers.BooleanField(source="is_anonymous_user")
    # Omitted when the user has none, as GoTrue (auth-js's listFactors and
    # getAuthenticatorAssuranceLevel read it): not required in the contract.
    factors = FactorsField()

    def to_representation(self, user: User) -> dict[str, Any]:
        body = super().to_representation(user)
        if not body.get("factors"):
            body.pop("factors", None)
        return body

    def get_aud(self, user: User) -> str:
        return settings.GOTRUE_JWT_AUDIENCE

    def get_role(self, user: User) -> str:
        return ROLE

    def get_email(self, user: User) -> str:
        return user_email(user)

    def get_phone(self, user: User) -> str:
        return user.phone or ""

    def get_app_metadata(self, user: User) -> dict:
        return app_metadata(user)

    def get_identities(self, user: User) -> list[dict]:
        return _identities(user)

    @extend_schema_field(OpenApiTypes.DATETIME)
    def get_updated_at(self, user: User) -> str | None:
        return _iso(user.updated_at or user.date_joined)


class GoTrueSessionOutput(serializers.Serializer):
    """GoTrue's session (token response)."""

    access_token = serializers.CharField()
    token_type = serializers.ChoiceField(choices=["bearer"])
    expires_in = serializers.IntegerField()
    expires_at = serializers.IntegerField()
    refresh_token = serializers.CharField()
    user = GoTrueUserOutput()


def user_body(user: User) -> dict[str, Any]:
    """GoTrue's user object."""
    return render(GoTrueUserOutput, user)


def session_body(tokens: IssuedTokens) -> dict[str, Any]:
    """GoTrue's session (token response): the native session and refresh token,
    with a GoTrue-shaped access token for the same session and expiry."""
    issued_at = tokens.expires_at - tokens.expires_in
    access_token = gotrue_access_token_encode(
        user=tokens.user,
        session_id=tokens.session_id,
        issued_at=issued_at,
        expires_at=tokens.expires_at,
        authenticated_at=tokens.authenticated_at,
        aal=tokens.aal,
        amr=tokens.amr,
    )
    session = {
        "access_token": access_token,
        "token_type": "bearer",
        "expires_in": tokens.expires_in,
        "expires_at": tokens.expires_at,
        "refresh_token": tokens.refresh_token,
        "user": tokens.user,
    }
    return render(GoTrueSessionOutput, session)


class GoTrueTokenInput(serializers.Serializer):
    """grant_type=password: email + password; grant_type=refresh_token: refresh_token."""

    email = serializers.CharField(required=False)
    phone = serializers.CharField(required=False)
    password = serializers.CharField(required=False)
    refresh_token = serializers.CharField(required=False)


class GoTrueErrorOutput(serializers.Serializer):
    """Without X-Supabase-Api-Version: {code: <status>, error_code, msg};
    with 2024-01-01: {code: <error_code>, message}."""

    code = serializers.JSONField(help_text="HTTP status (integer) or, with the API version header, the error code")
    error_code = serializers.CharField(required=False)
    msg = serializers.CharField(required=False)
    message = serializers.CharField(required=False)
    weak_password = serializers.DictField(required=False)


class GoTrueSettingsOutput(serializers.Serializer):
    external = serializers.DictField(child=serializers.BooleanField())
    disable_signup = serializers.BooleanField()
    mailer_autoconfirm = serializers.BooleanField()
    phone_autoconfirm = serializers.BooleanField()
    sms_provider = serializers.CharField(allow_blank=True)
    saml_enabled = serializers.BooleanField()


class GoTrueHealthOutput(serializers.Serializer):
    version = serializers.CharField()
    name = serializers.CharField()
    description = serializers.CharField()


class GenerateLinkOutput(GoTrueUserOutput):
    """GoTrue's generate_link answer: the user object and the link's properties."""

    action_link = serializers.CharField()
    email_otp = serializers.CharField()
    hashed_token = serializers.CharField()
    verification_type = serializers.CharField()
    redirect_to = serializers.CharField()
