"""Passkeys: WebAuthn discoverable credentials (py_webauthn), GoTrue's /passkeys API.

A passkey is registered by a signed-in user (registration options -> the
browser's navigator.credentials.create() -> registration verify) and then
serves two ways:

- a first factor: an authentication ceremony without a user (discoverable:
  no allowCredentials; the authenticator names the user in userHandle) starts
  a session at aal2 (possession of the key plus the authenticator's user
  verification), amr `passkey`;
- a second factor: the same ceremony by a signed-in user (its challenge bound
  to the user and the session) raises that session to aal2 (accounts.mfa).

Each ceremony's challenge is random (py_webauthn: 64 bytes), lives
WEBAUTHN_CHALLENGE_EXPIRY seconds and is spent by a conditional UPDATE, so of
two uses of one challenge exactly one gets past it. Resident key and user
verification are required (GoTrue asks user verification as "preferred").
The authenticator's signature counter must grow whenever it is not zero on
either side: a counter that does not is refused and audited
(PASSKEY_SIGN_COUNT_REGRESSION, a cloned authenticator?), and it is advanced
by a conditional UPDATE, so two assertions with one counter value cannot both
pass. Registration does not change the session's level: a key the session's
holder just created proves nothing the session had not proved.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.http import HttpRequest
from django.utils import timezone
from webauthn import (
    generate_authentication_options,
    generate_registration_options,
    options_to_json,
    verify_authentication_response,
    verify_registration_response,
)
from webauthn.helpers import base64url_to_bytes
from webauthn.helpers.structs import (
    AuthenticatorSelectionCriteria,
    PublicKeyCredentialDescriptor,
    ResidentKeyRequirement,
    UserVerificationRequirement,
)

from accounts import mfa, recovery, services
from accounts.models import Passkey, User, WebAuthnChallenge
from accounts.services import IssuedTokens
from monitoring import audit
from monitoring.models import AuditEvent
from velro.errors import ApiError
from velro.net import client_ip, user_agent

Kind = WebAuthnChallenge.Kind
FRIENDLY_NAME_MAX = 64  # the column's size (GoTrue allows 120)
TRANSPORTS = {"ble", "cable", "hybrid", "internal", "nfc", "smart-card", "usb"}


# --- errors: GoTrue's codes (apierrors/errorcode.go), the same on both surfaces ----------------


class PasskeyError(ApiError):
    """A refused passkey operation; `gotrue_code` when GoTrue names it otherwise."""

    gotrue_code: str | None = None


class ChallengeNotFound(PasskeyError):
    code = "webauthn_challenge_not_found"
    detail = "Challenge not found or already used"


class ChallengeExpired(PasskeyError):
    code = "webauthn_challenge_expired"
    detail = "Challenge has expired"


class VerificationFailed(PasskeyError):
    code = "webauthn_verification_failed"
    detail = "Credential verification failed"


class CredentialExists(PasskeyError):
    status = 422
    code = "webauthn_credential_exists"
    detail = "This credential is already registered"


class TooManyPasskeys(PasskeyError):
    status = 422
    code = "too_many_passkeys"
    detail = "Maximum number of passkeys reached"


class NoPasskey(PasskeyError):
    status = 422
    code = "webauthn_credential_not_found"
    detail = "No passkey is registered for this user"


class PasskeyNotFound(PasskeyError):
    status = 404
    code = "passkey_not_found"
    gotrue_code = "validation_failed"  # GoTrue's PasskeyUpdate/PasskeyDelete answer
    detail = "Passkey not found"


# --- the relying party ------------------------------------------------------------------------


@dataclass(frozen=True)
class Ceremony:
    """What an options endpoint answers: the challenge's id, the options for
    navigator.credentials.create()/get() (WebAuthn's JSON form) and when it ends."""

    challenge_id: uuid.UUID
    options: dict[str, Any]
    expires_at: int


def _rp_id() -> str:
    return settings.WEBAUTHN_RP_ID


def _origins() -> list[str]:
    return list(settings.WEBAUTHN_ORIGINS)


def _timeout_ms() -> int:
    return settings.WEBAUTHN_CHALLENGE_EXPIRY * 1000


def _challenge_store(
    *, kind: str, challenge: bytes, user_id: uuid.UUID | None = None, session_id: uuid.UUID | None = None
) -> WebAuthnChallenge:
    now = timezone.now()
    return WebAuthnChallenge.objects.create(
        kind=kind,
        challenge=challenge,
        user_id=user_id,
        session_id=session_id,
        created_at=now,
        expires_at=now + timedelta(seconds=settings.WEBAUTHN_CHALLENGE_EXPIRY),
    )


def _ceremony(row: WebAuthnChallenge, options: Any) -> Ceremony:
    return Ceremony(
        challenge_id=row.pk, options=json.loads(options_to_json(options)), expires_at=int(row.expires_at.timestamp())
    )


def challenge_consume(
    *,
    challenge_id: uuid.UUID,
    kind: str,
    user_id: uuid.UUID | None,
    session_id: uuid.UUID | None = None,
    now: datetime | None = None,
) -> bytes:
    """Spend a challenge of this kind, bound to this user and session (None:
    to none): its bytes. ChallengeNotFound if it is not there, used, or bound
    otherwise; ChallengeExpired if it ended (spent all the same, as GoTrue)."""
    now = now or timezone.now()
    bound = Q(user_id=user_id) if user_id is not None else Q(user_id__isnull=True)
    bound &= Q(session_id=session_id) if session_id is not None else Q(session_id__isnull=True)
    claimed = WebAuthnChallenge.objects.filter(bound, pk=challenge_id, kind=kind, used_at__isnull=True).update(
        used_at=now
    )
    if claimed != 1:
        raise ChallengeNotFound()
    row = WebAuthnChallenge.objects.only("challenge", "expires_at").get(pk=challenge_id)
    if row.expires_at <= now:
        raise ChallengeExpired()
    return bytes(row.challenge)


# --- registration ---------------------------------------------------------------------------


def _display_name(user: User) -> str:
    name = (user.user_metadata or {}).get("name") if isinstance(user.user_metadata, dict) else None
    return name if isinstance(name, str) and name else user.email


def passkey_registration_options(*, user: User, session_id: uuid.UUID | None) -> Ceremony:
    """Options to create a discoverable credential for `user` (the user's keys excluded).
    A user who has a second factor needs an aal2 session (InsufficientAal)."""
    mfa.aal_require(user_id=user.pk, session_id=session_id)
    existing = list(Passkey.objects.filter(user_id=user.pk).values_list("credential_id", flat=True))
    if len(existing) >= settings.PASSKEY_MAX_PER_USER:
        raise TooManyPasskeys()
    options = generate_registration_options(
        rp_id=_rp_id(),
        rp_name=settings.WEBAUTHN_RP_NAME,
        # GoTrue's WebAuthnID: the user id's text, which comes back as userHandle.
        user_id=str(user.pk).encode(),
        user_name=user.email,
        user_display_name=_display_name(user),
        timeout=_timeout_ms(),
        authenticator_selection=AuthenticatorSelectionCriteria(
            resident_key=ResidentKeyRequirement.REQUIRED,
            user_verification=UserVerificationRequirement.REQUIRED,
        ),
        exclude_credentials=[PublicKeyCredentialDescriptor(id=bytes(cred)) for cred in existing],
    )
    row = _challenge_store(kind=Kind.REGISTRATION, challenge=options.challenge, user_id=user.pk)
    return _ceremony(row, options)


def _transports(credential: Any) -> list[str]:
    response = credential.get("response")
    given = response.get("transports") if isinstance(response, dict) else None
    if not isinstance(given, list):
        return []
    return sorted({item for item in given if isinstance(item, str) and item in TRANSPORTS})


@dataclass(frozen=True)
class Registered:
    passkey: Passkey
    recovery_codes: list[str]  # the user's first set (their first second factor), shown once; else []


def passkey_registration_verify(
    *, user: User, session_id: uuid.UUID | None, challenge_id: uuid.UUID, credential: Any
) -> Registered:
    """Check the authenticator's answer to a registration challenge and store the passkey."""
    mfa.aal_require(user_id=user.pk, session_id=session_id)
    expected = challenge_consume(challenge_id=challenge_id, kind=Kind.REGISTRATION, user_id=user.pk)
    _credential_object(credential)
    try:
        verified = verify_registration_response(
            credential=credential,
            expected_challenge=expected,
            expected_rp_id=_rp_id(),
            expected_origin=_origins(),
            require_user_verification=True,
        )
    except Exception as exc:  # any failure to parse or verify untrusted input is a 400
        raise VerificationFailed(_reason(exc)) from None
    now = timezone.now()
    try:
        with transaction.atomic():
            # Serialize this user's registrations, so the limit holds under concurrency.
            User.objects.select_for_update().filter(pk=user.pk).values_list("pk", flat=True).first()
            if Passkey.objects.filter(user_id=user.pk).count() >= settings.PASSKEY_MAX_PER_USER:
                raise TooManyPasskeys()
            passkey = Passkey.objects.create(
                user_id=user.pk,
                credential_id=verified.credential_id,
                public_key=verified.credential_public_key,
                sign_count=verified.sign_count,
                transports=_transports(credential),
                aaguid=verified.aaguid,
                backup_eligible=verified.credential_device_type == "multi_device",
                backed_up=verified.credential_backed_up,
                created_at=now,
                updated_at=now,
            )
    except IntegrityError:
        raise CredentialExists() from None
    return Registered(passkey=passkey, recovery_codes=recovery.recovery_codes_ensure(user_id=user.pk))


def _credential_object(credential: Any) -> None:
    if not isinstance(credential, dict):
        raise VerificationFailed("Invalid credential response")


def _reason(exc: Exception) -> str:
    """What was wrong, in words safe to show (py_webauthn's messages name fields, not secrets)."""
    from webauthn.helpers.exceptions import WebAuthnException

    if isinstance(exc, WebAuthnException) and str(exc):
        return f"Credential verification failed: {str(exc)[:200]}"
    return "Invalid credential response"


# --- authentication ------------------------------------------------------------------------


def passkey_authentication_options(*, user: User | None = None, session_id: uuid.UUID | None = None) -> Ceremony:
    """Options for navigator.credentials.get(). Without a user: a sign-in
    (discoverable: no allowCredentials, the challenge bound to no one). With
    a user and their session: a second-factor use, bound to both, offering the
    user's keys."""
    allow: list[PublicKeyCredentialDescriptor] = []
    if user is not None:
        keys = list(Passkey.objects.filter(user_id=user.pk).values_list("credential_id", flat=True))
        if not keys:
            raise NoPasskey()
        allow = [PublicKeyCredentialDescriptor(id=bytes(cred)) for cred in keys]
    options = generate_authentication_options(
        rp_id=_rp_id(),
        timeout=_timeout_ms(),
        allow_credentials=allow,
        user_verification=UserVerificationRequirement.REQUIRED,
    )
    row = _challenge_store(
        kind=Kind.AUTHENTICATION,
        challenge=options.challenge,
        user_id=user.pk if user is not None else None,
        session_id=session_id if user is not None else None,
    )
    return _ceremony(row, options)


def _credential_id(credential: Any) -> bytes:
    raw = credential.get("rawId") or credential.get("id")
    if not isinstance(raw, str) or not raw:
        raise VerificationFailed("Invalid credential response")
    try:
        return base64url_to_bytes(raw)
    except ValueError:
        raise VerificationFailed("Invalid credential response") from None


def _user_handle(credential: Any) -> str | None:
    response = credential.get("response")
    handle = response.get("userHandle") if isinstance(response, dict) else None
    if not isinstance(handle, str) or not handle:
        return None
    try:
        return base64url_to_bytes(handle).decode()
    except (ValueError, UnicodeDecodeError):
        raise VerificationFailed("Invalid user handle in assertion") from None


class SignCountRegression(VerificationFailed):
    detail = "Credential verification failed: the authenticator's signature counter did not grow"

    def __init__(self, passkey: Passkey, stored: int, received: int) -> None:
        super().__init__()
        self.passkey, self.stored, self.received = passkey, stored, received


def passkey_assertion_verify(
    *, challenge_id: uuid.UUID, credential: Any, user_id: uuid.UUID | None = None, session_id: uuid.UUID | None = None
) -> Passkey:
    """Check an assertion against its challenge (a sign-in's: user_id None; a
    second factor's: that user and session) and advance the key's counter.
    The passkey, with its user. VerificationFailed (SignCountRegression) else."""
    expected = challenge_consume(
        challenge_id=challenge_id, kind=Kind.AUTHENTICATION, user_id=user_id, session_id=session_id
    )
    _credential_object(credential)
    passkey = Passkey.objects.select_related("user").filter(credential_id=_credential_id(credential)).first()
    if passkey is None or (user_id is not None and passkey.user_id != user_id):
        raise VerificationFailed("Credential verification failed: unknown credential")
    handle = _user_handle(credential)
    if handle is None and user_id is None:
        raise VerificationFailed("Credential verification failed: a discoverable credential names its user")
    if handle is not None and handle != str(passkey.user_id):
        raise VerificationFailed("Credential verification failed: user handle does not match the credential")
    try:
        verified = verify_authentication_response(
            credential=credential,
            expected_challenge=expected,
            expected_rp_id=_rp_id(),
            expected_origin=_origins(),
            credential_public_key=bytes(passkey.public_key),
            # 0: py_webauthn's own counter check is skipped; ours below is a conditional UPDATE.
            credential_current_sign_count=0,
            require_user_verification=True,
        )
    except Exception as exc:  # any failure to parse or verify untrusted input is a 400
        raise VerificationFailed(_reason(exc)) from None
    _sign_count_advance(passkey=passkey, received=verified.new_sign_count, backed_up=verified.credential_backed_up)
    return passkey


def _sign_count_advance(*, passkey: Passkey, received: int, backed_up: bool) -> None:
    """Store the new counter if it grew (both zero: an authenticator without a
    counter, fine); else SignCountRegression. Conditional, so two assertions
    carrying one counter value cannot both pass."""
    now = timezone.now()
    grew = Q(sign_count=0) if received == 0 else Q(sign_count__lt=received)
    updated = Passkey.objects.filter(grew, pk=passkey.pk).update(
        sign_count=received, last_used_at=now, updated_at=now, backed_up=backed_up
    )
    if updated != 1:
        raise SignCountRegression(passkey, passkey.sign_count, received)
    passkey.sign_count, passkey.last_used_at, passkey.updated_at = received, now, now


# --- the flows both surfaces call (audit included) ---------------------------------------------


def _audit_refusal(request: HttpRequest, exc: PasskeyError, kind: str, user_id: uuid.UUID | None, surface: str) -> None:
    if isinstance(exc, SignCountRegression):
        audit.record(
            AuditEvent.Kind.PASSKEY_SIGN_COUNT_REGRESSION,
            request,
            user_id=exc.passkey.user_id,
            passkey=exc.passkey.pk,
            stored=exc.stored,
            received=exc.received,
            **audit.surface_detail(surface),
        )
        user_id = exc.passkey.user_id
    audit.record(kind, request, user_id=user_id, method="passkey", reason=exc.code, **audit.surface_detail(surface))


def _user_may_sign_in(user: User) -> None:
    if not user.is_active:
        raise VerificationFailed("Credential verification failed: unknown credential")
    if user.is_banned():
        raise services.UserBanned()


def passkey_sign_in(*, request: HttpRequest, challenge_id: uuid.UUID, credential: Any, surface: str) -> IssuedTokens:
    """A passkey as the first factor: a new session at aal2, amr passkey."""
    try:
        passkey = passkey_assertion_verify(challenge_id=challenge_id, credential=credential)
        _user_may_sign_in(passkey.user)
    except PasskeyError as exc:
        _audit_refusal(request, exc, AuditEvent.Kind.LOGIN_FAILURE, None, surface)
        raise
    except services.UserBanned:
        audit.record(
            AuditEvent.Kind.LOGIN_FAILURE,
            request,
            user_id=passkey.user_id,
            method="passkey",
            reason="banned",
            **audit.surface_detail(surface),
        )
        raise
    tokens = services.session_login(
        user=passkey.user, ip=client_ip(request), user_agent=user_agent(request), method="passkey", aal=mfa.AAL2
    )
    audit.record(
        AuditEvent.Kind.LOGIN_SUCCESS,
        request,
        user_id=passkey.user_id,
        session=tokens.session_id,
        method="passkey",
        passkey=passkey.pk,
        **audit.surface_detail(surface),
    )
    return tokens


def passkey_second_factor(
    *,
    request: HttpRequest,
    user: User,
    session_id: uuid.UUID,
    challenge_id: uuid.UUID,
    credential: Any,
    surface: str,
) -> IssuedTokens:
    """A passkey as the second factor of a signed-in user: their session, raised to aal2."""
    try:
        passkey = passkey_assertion_verify(
            challenge_id=challenge_id, credential=credential, user_id=user.pk, session_id=session_id
        )
    except PasskeyError as exc:
        _audit_refusal(request, exc, AuditEvent.Kind.MFA_VERIFY_FAILURE, user.pk, surface)
        raise
    tokens = mfa.session_elevate(user=user, session_id=session_id, method="passkey", factor_id=passkey.pk)
    audit.record(
        AuditEvent.Kind.MFA_FACTOR_VERIFIED,
        request,
        user_id=user.pk,
        session=session_id,
        method="passkey",
        passkey=passkey.pk,
        **audit.surface_detail(surface),
    )
    return tokens


def passkey_register(
    *,
    request: HttpRequest,
    user: User,
    session_id: uuid.UUID | None,
    challenge_id: uuid.UUID,
    credential: Any,
    surface: str,
) -> Registered:
    registered = passkey_registration_verify(
        user=user, session_id=session_id, challenge_id=challenge_id, credential=credential
    )
    audit.record(
        AuditEvent.Kind.PASSKEY_REGISTERED,
        request,
        user_id=user.pk,
        passkey=registered.passkey.pk,
        **audit.surface_detail(surface),
    )
    if registered.recovery_codes:
        audit.record(
            AuditEvent.Kind.RECOVERY_CODES_GENERATED,
            request,
            user_id=user.pk,
            reason="first_passkey",
            **audit.surface_detail(surface),
        )
    return registered


# --- list, rename, delete --------------------------------------------------------------------


def passkey_list(*, user_id: uuid.UUID) -> list[Passkey]:
    return list(Passkey.objects.filter(user_id=user_id).order_by("created_at", "pk"))


def _own(*, user_id: uuid.UUID, passkey_id: uuid.UUID | str) -> Passkey:
    """The user's passkey, or PasskeyNotFound (another user's is not found either)."""
    try:
        key = uuid.UUID(str(passkey_id))
    except ValueError:
        raise PasskeyNotFound() from None
    passkey = Passkey.objects.filter(pk=key, user_id=user_id).first()
    if passkey is None:
        raise PasskeyNotFound()
    return passkey


def passkey_rename(
    *, request: HttpRequest, user_id: uuid.UUID, passkey_id: uuid.UUID | str, friendly_name: str, surface: str
) -> Passkey:
    passkey = _own(user_id=user_id, passkey_id=passkey_id)
    passkey.friendly_name = friendly_name
    passkey.updated_at = timezone.now()
    passkey.save(update_fields=["friendly_name", "updated_at"])
    audit.record(
        AuditEvent.Kind.PASSKEY_UPDATED, request, user_id=user_id, passkey=passkey.pk, **audit.surface_detail(surface)
    )
    return passkey


def passkey_delete(
    *,
    request: HttpRequest,
    user_id: uuid.UUID,
    session_id: uuid.UUID | None,
    passkey_id: uuid.UUID | str,
    surface: str,
) -> None:
    """A passkey is a second factor: removing one needs aal2 (accounts.mfa).
    The user's last second factor gone, their recovery codes go too."""
    mfa.aal_require(user_id=user_id, session_id=session_id)
    _passkey_remove(passkey=_own(user_id=user_id, passkey_id=passkey_id))
    audit.record(
        AuditEvent.Kind.PASSKEY_DELETED, request, user_id=user_id, passkey=passkey_id, **audit.surface_detail(surface)
    )


def passkey_admin_delete(*, request: HttpRequest, user_id: uuid.UUID, passkey_id: uuid.UUID | str) -> None:
    """The service role removes a user's passkey (GoTrue's admin passkey delete), audited with the actor."""
    _passkey_remove(passkey=_own(user_id=user_id, passkey_id=passkey_id))
    audit.record(
        AuditEvent.Kind.PASSKEY_DELETED,
        request,
        user_id=user_id,
        passkey=passkey_id,
        actor="service_role",
        surface="gotrue",
    )


def _passkey_remove(*, passkey: Passkey) -> None:
    """Delete it; the user's last second factor gone, their recovery codes go too."""
    with transaction.atomic():
        passkey.delete()
        if not mfa.user_has_second_factor(user_id=passkey.user_id):
            recovery.recovery_codes_delete(user_id=passkey.user_id)
