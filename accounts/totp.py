"""TOTP second factors (GoTrue's /factors): enroll, challenge, verify, unenroll.

A factor is enrolled unverified with a new secret (RFC 6238: SHA-1, 6 digits,
30-second steps), shown once as a secret, an otpauth:// URI and a QR code;
the secret is stored encrypted (Fernet: MFA_ENCRYPTION_KEYS, else a key
derived from SECRET_KEY). A challenge (valid MFA_CHALLENGE_EXPIRY_DURATION
seconds, from the address that asked for it) is verified once with a code of
the current step or one step either side; the step is then claimed by a
conditional UPDATE of the factor's `last_step`, so a code is accepted once: a
replay, or two verifies racing with one code, find the step taken. A verify
raises the session to aal2 (accounts.mfa.session_elevate); the first one of a
factor makes it verified, drops the user's other unverified TOTP factors and
(the user's first second factor) makes the recovery codes. As GoTrue, every
verify ends the user's other aal1 sessions, and unenrolling a factor lowers
the sessions it raised back to aal1.

Services first (no request), then the flows both surfaces call (rate limit,
service, audit). Secrets never reach a log, the cache or the audit trail.
"""

from __future__ import annotations

import hmac
import io
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from urllib.parse import urlsplit

import pyotp
import segno
from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.http import HttpRequest
from django.utils import timezone

from accounts import mfa, recovery, selectors, services, throttles
from accounts.models import FactorStatus, FactorType, MfaChallenge, MfaFactor, Session, User
from accounts.services import IssuedTokens
from accounts.tokens import fernet_keys
from monitoring import audit
from monitoring.models import AuditEvent
from velro.errors import ApiError
from velro.net import client_ip

ENCRYPTION_PURPOSE = "mfa-totp"
TOTP_DIGITS = 6
TOTP_PERIOD = 30
VALID_WINDOW = 1  # steps either side of the current one (clock drift, a code typed at a step's end)
QR_SCALE = 3  # GoTrue's DefaultQRSize


# --- errors (GoTrue's codes; the native surface shows the same codes) --------------------------


class MfaError(ApiError):
    status = 422


class FactorNotFound(MfaError):
    status = 404
    code = "mfa_factor_not_found"
    detail = "Factor not found"


class ChallengeNotFound(MfaError):
    code = "mfa_factor_not_found"
    detail = "MFA factor with the provided challenge ID not found"


class ChallengeUnusable(MfaError):
    """GoTrue's answer to a challenge verified already or asked from another address."""

    code = "mfa_ip_address_mismatch"
    detail = "Challenge and verify IP addresses mismatch."


class ChallengeExpired(MfaError):
    code = "mfa_challenge_expired"
    detail = "MFA challenge has expired, verify against another challenge or create a new challenge."


class VerificationFailed(MfaError):
    code = "mfa_verification_failed"
    detail = "Invalid TOTP code entered"


class TooManyFactors(MfaError):
    code = "too_many_enrolled_mfa_factors"
    detail = "Maximum number of verified factors reached, unenroll to continue"


class FactorNameConflict(MfaError):
    code = "mfa_factor_name_conflict"

    def __init__(self, name: str) -> None:
        super().__init__(f'A factor with the friendly name "{name}" for this user already exists')


class EnrollNeedsAal2(mfa.InsufficientAal):
    detail = "AAL2 required to enroll a new factor"


class UnenrollNeedsAal2(mfa.InsufficientAal):
    """403 on the native surface; GoTrue answers this one with 422."""

    detail = "AAL2 required to unenroll verified factor"


# --- the secret at rest ------------------------------------------------------------------------


def _keys() -> list[Fernet]:
    return fernet_keys(ENCRYPTION_PURPOSE, settings.MFA_ENCRYPTION_KEYS)


def secret_encrypt(secret: str) -> str:
    return MultiFernet(_keys()).encrypt(secret.encode("ascii")).decode("ascii")


def secret_decrypt(encrypted: str) -> tuple[str, str | None]:
    """(secret, its ciphertext under the first key when it was under an older
    one, else None): a verify rewrites it, so an old key can be retired."""
    keys, token = _keys(), encrypted.encode("ascii")
    # InvalidToken from here: no configured key opens it (a key dropped too soon), a 500 to fix.
    secret = MultiFernet(keys).decrypt(token).decode("ascii")
    try:
        keys[0].decrypt(token)
    except InvalidToken:
        return secret, secret_encrypt(secret)
    return secret, None


# --- codes -------------------------------------------------------------------------------------


def _totp(secret: str) -> pyotp.TOTP:
    return pyotp.TOTP(secret, digits=TOTP_DIGITS, interval=TOTP_PERIOD)


def code_step(*, secret: str, code: str, now: datetime) -> int | None:
    """The time step `code` belongs to (current +- VALID_WINDOW), or None."""
    code = code.strip()
    if len(code) != TOTP_DIGITS or not code.isdigit():
        return None
    totp = _totp(secret)
    current = totp.timecode(now)
    matched = None
    for step in range(current - VALID_WINDOW, current + VALID_WINDOW + 1):
        # Every candidate compared, in constant time: the answer's timing tells nothing.
        if hmac.compare_digest(totp.generate_otp(step), code):
            matched = step
    return matched


def qr_svg(uri: str) -> str:
    """The otpauth URI as an SVG QR code (error correction H, as GoTrue). Its one
    colour is named, not `#000`: as a `data:image/svg+xml;utf-8,` URI (how the
    clients show it) a `#` would end the image."""
    buffer = io.BytesIO()
    segno.make(uri, error="h").save(buffer, kind="svg", xmldecl=False, svgns=True, nl=False, scale=QR_SCALE)
    return buffer.getvalue().decode("utf-8").replace('"#000"', '"black"')


def qr_data_uri(svg: str) -> str:
    return f"data:image/svg+xml;utf-8,{svg}"


def default_issuer() -> str:
    """GoTrue's: the host (and port) of the site URL."""
    return urlsplit(settings.GOTRUE_SITE_URL).netloc or "localhost"


# --- services ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Enrollment:
    factor: MfaFactor
    secret: str  # shown once, never stored in clear
    uri: str
    qr_svg: str


@dataclass(frozen=True)
class Verification:
    tokens: IssuedTokens
    factor: MfaFactor
    first: bool  # this verify made the factor verified
    recovery_codes: list[str] = field(default_factory=list)  # the user's first set: shown once


def factors_list(*, user_id: uuid.UUID) -> list[MfaFactor]:
    """The user's factors, oldest first: one query on the (user, status) index."""
    return list(MfaFactor.objects.filter(user_id=user_id).order_by("created_at", "id"))


def _factor_get(*, user_id: uuid.UUID, factor_id: uuid.UUID | str) -> MfaFactor:
    try:
        factor_id = uuid.UUID(str(factor_id))
    except ValueError:
        raise FactorNotFound() from None
    factor = MfaFactor.objects.filter(pk=factor_id, user_id=user_id).first()
    if factor is None:
        raise FactorNotFound()
    return factor


def _expired_factors_delete(*, user_id: uuid.UUID, now: datetime) -> None:
    """GoTrue's DeleteExpiredFactors, for this user: unverified factors never
    challenged, older than MFA_FACTOR_EXPIRY_DURATION (an abandoned enrollment)."""
    cutoff = now - timedelta(seconds=settings.MFA_FACTOR_EXPIRY_DURATION)
    MfaFactor.objects.filter(
        user_id=user_id, status=FactorStatus.UNVERIFIED, created_at__lt=cutoff, challenges__isnull=True
    ).delete()


def factor_enroll(
    *,
    user: User,
    friendly_name: str,
    issuer: str = "",
    session_id: uuid.UUID | None,
    now: datetime | None = None,
) -> Enrollment:
    """A new unverified TOTP factor of `user`. GoTrue's rules: at most
    MFA_MAX_ENROLLED_FACTORS factors (verified or not), names unique per user,
    and aal2 when the user already has a second factor."""
    now = now or timezone.now()
    friendly_name = friendly_name.strip()
    secret = pyotp.random_base32()  # 160 bits, as GoTrue's
    uri = _totp(secret).provisioning_uri(name=user.email or str(user.pk), issuer_name=issuer or default_issuer())
    with transaction.atomic():
        # One enrollment of a user at a time: the count below cannot be raced past.
        User.objects.select_for_update().filter(pk=user.pk).values_list("pk").first()
        _expired_factors_delete(user_id=user.pk, now=now)
        factors = list(MfaFactor.objects.filter(user_id=user.pk).values_list("friendly_name", flat=True))
        if friendly_name and friendly_name in factors:
            raise FactorNameConflict(friendly_name)
        if len(factors) >= settings.MFA_MAX_ENROLLED_FACTORS:
            raise TooManyFactors()
        try:
            mfa.aal_require(user_id=user.pk, session_id=session_id)
        except mfa.InsufficientAal:
            raise EnrollNeedsAal2() from None
        try:
            with transaction.atomic():
                factor = MfaFactor.objects.create(
                    user=user,
                    factor_type=FactorType.TOTP,
                    friendly_name=friendly_name,
                    status=FactorStatus.UNVERIFIED,
                    secret_encrypted=secret_encrypt(secret),
                    created_at=now,
                    updated_at=now,
                )
        except IntegrityError:
            raise FactorNameConflict(friendly_name) from None
    selectors.user_cache_invalidate(user_id=user.pk)  # the user object lists its factors
    return Enrollment(factor=factor, secret=secret, uri=uri, qr_svg=qr_svg(uri))


def factor_challenge(
    *, user_id: uuid.UUID, factor_id: uuid.UUID | str, ip: str | None, now: datetime | None = None
) -> MfaChallenge:
    now = now or timezone.now()
    factor = _factor_get(user_id=user_id, factor_id=factor_id)
    expires_at = now + timedelta(seconds=settings.MFA_CHALLENGE_EXPIRY_DURATION)
    with transaction.atomic():
        challenge = MfaChallenge.objects.create(factor=factor, created_at=now, expires_at=expires_at, ip=ip)
        MfaFactor.objects.filter(pk=factor.pk).update(last_challenged_at=now)
    return challenge


# Called between the checks and the step claim (tests force two verifies to race there).
before_claim: Callable[[], None] = lambda: None  # noqa: E731


def _challenge_usable(
    *, factor: MfaFactor, challenge_id: uuid.UUID | str, ip: str | None, now: datetime
) -> MfaChallenge:
    try:
        challenge_id = uuid.UUID(str(challenge_id))
    except ValueError:
        raise ChallengeNotFound() from None
    challenge = MfaChallenge.objects.filter(pk=challenge_id, factor_id=factor.pk).first()
    if challenge is None:
        raise ChallengeNotFound()
    if challenge.verified_at is not None or (challenge.ip or None) != (ip or None):
        raise ChallengeUnusable()
    if challenge.expires_at <= now:
        challenge.delete()
        raise ChallengeExpired()
    return challenge


class _Refused(Exception):
    """The claim found the step taken (a replay) or the challenge used: roll back."""

    def __init__(self, error: MfaError, reason: str) -> None:
        self.error, self.reason = error, reason


def factor_verify(
    *,
    user: User,
    factor_id: uuid.UUID | str,
    challenge_id: uuid.UUID | str,
    code: str,
    session_id: uuid.UUID,
    ip: str | None,
    now: datetime | None = None,
    on_failure: Callable[[MfaFactor, str], None] = lambda factor, reason: None,
) -> Verification:
    """Verify `code` against a challenge of the factor: the session at aal2.

    Refused (VerificationFailed) for a wrong code, a code of a step already
    used (a replay; of two verifies racing with one code, the one that claims
    the step second), and ChallengeExpired / ChallengeUnusable /
    ChallengeNotFound for the challenge; `on_failure(factor, reason)` hears
    about each refusal after the factor was found (the flow audits them)."""
    now = now or timezone.now()
    factor = _factor_get(user_id=user.pk, factor_id=factor_id)
    try:
        challenge = _challenge_usable(factor=factor, challenge_id=challenge_id, ip=ip, now=now)
    except MfaError as exc:
        on_failure(factor, exc.code)
        raise
    secret, reencrypted = secret_decrypt(factor.secret_encrypted)
    step = code_step(secret=secret, code=code, now=now)
    if step is None:
        on_failure(factor, "wrong_code")
        raise VerificationFailed()
    before_claim()
    try:
        verification = _claim_and_elevate(
            user=user,
            factor=factor,
            challenge=challenge,
            step=step,
            reencrypted=reencrypted,
            session_id=session_id,
            now=now,
        )
    except _Refused as refused:
        on_failure(factor, refused.reason)
        raise refused.error from None
    selectors.user_cache_invalidate(user_id=user.pk)
    return verification


def _step_claim(*, factor: MfaFactor, step: int, changes: dict) -> bool:
    """Advance the factor's last accepted step to `step` (with `changes`) unless it is
    there already: one conditional UPDATE, so a code is accepted once, whoever races."""
    return bool(
        MfaFactor.objects.filter(pk=factor.pk)
        .filter(Q(last_step__isnull=True) | Q(last_step__lt=step))
        .update(**changes)
    )


def _claim_and_elevate(
    *,
    user: User,
    factor: MfaFactor,
    challenge: MfaChallenge,
    step: int,
    reencrypted: str | None,
    session_id: uuid.UUID,
    now: datetime,
) -> Verification:
    with transaction.atomic():
        changes = {"last_step": step, "updated_at": now}
        if reencrypted is not None:
            changes["secret_encrypted"] = reencrypted  # written under the first MFA_ENCRYPTION_KEYS key
        if not _step_claim(factor=factor, step=step, changes=changes):
            raise _Refused(VerificationFailed(), "replay")
        used = MfaChallenge.objects.filter(pk=challenge.pk, verified_at__isnull=True).update(verified_at=now)
        if not used:
            raise _Refused(ChallengeUnusable(), "challenge_used")
        first = bool(
            MfaFactor.objects.filter(pk=factor.pk, status=FactorStatus.UNVERIFIED).update(
                status=FactorStatus.VERIFIED, updated_at=now
            )
        )
        tokens = mfa.session_elevate(user=user, session_id=session_id, method="totp", factor_id=factor.pk, now=now)
        # GoTrue: the user's sessions that did not pass a second factor end, and
        # the other unverified TOTP factors (abandoned enrollments) go.
        services.user_sessions_end(user_id=user.pk, reason="mfa_verified", keep_session_id=session_id, aal=mfa.AAL1)
        MfaFactor.objects.filter(
            user_id=user.pk, status=FactorStatus.UNVERIFIED, factor_type=factor.factor_type
        ).delete()
        codes = recovery.recovery_codes_ensure(user_id=user.pk) if first else []
    factor.refresh_from_db()
    return Verification(tokens=tokens, factor=factor, first=first, recovery_codes=codes)


def factor_code_check(*, user: User, code: str, now: datetime | None = None) -> bool:
    """A code of one of the user's verified TOTP factors, spent (its step
    claimed as a verify claims it, so it is accepted once): the Django admin's
    sign-in second step (accounts.mfa.user_second_factor_check), where there
    is no API session or challenge to raise."""
    now = now or timezone.now()
    for factor in MfaFactor.objects.filter(user_id=user.pk, status=FactorStatus.VERIFIED, factor_type=FactorType.TOTP):
        secret, _ = secret_decrypt(factor.secret_encrypted)
        step = code_step(secret=secret, code=code, now=now)
        if step is None:
            continue
        return _step_claim(factor=factor, step=step, changes={"last_step": step, "updated_at": now})
    return False


def factor_unenroll(*, user_id: uuid.UUID, factor_id: uuid.UUID | str, session_id: uuid.UUID | None) -> MfaFactor:
    """Remove a factor (a verified one needs an aal2 session, as GoTrue). The
    sessions it raised go back to aal1 (GoTrue's DowngradeSessionsToAAL1); the
    user's last second factor gone, so are the recovery codes."""
    factor = _factor_get(user_id=user_id, factor_id=factor_id)
    if factor.status == FactorStatus.VERIFIED and mfa.session_aal(session_id=session_id) != mfa.AAL2:
        raise UnenrollNeedsAal2()
    return _factor_remove(user_id=user_id, factor=factor)


def factor_admin_delete(*, user_id: uuid.UUID, factor_id: uuid.UUID | str) -> MfaFactor:
    """The service role removes a factor (GoTrue's admin deleteFactor): no session
    level to check; the same downgrade of the sessions it raised."""
    return _factor_remove(user_id=user_id, factor=_factor_get(user_id=user_id, factor_id=factor_id))


def factor_admin_rename(
    *, user_id: uuid.UUID, factor_id: uuid.UUID | str, friendly_name: str, now: datetime | None = None
) -> MfaFactor:
    """The service role renames a factor (GoTrue's admin factor update); a blank
    name changes nothing, as GoTrue. Names stay unique per user."""
    factor = _factor_get(user_id=user_id, factor_id=factor_id)
    friendly_name = friendly_name.strip()
    if not friendly_name or friendly_name == factor.friendly_name:
        return factor
    factor.friendly_name = friendly_name
    factor.updated_at = now or timezone.now()
    try:
        with transaction.atomic():
            if MfaFactor.objects.filter(user_id=user_id, friendly_name=friendly_name).exclude(pk=factor.pk).exists():
                raise FactorNameConflict(friendly_name)
            factor.save(update_fields=["friendly_name", "updated_at"])
    except IntegrityError:  # a rename or enrollment that committed in between
        raise FactorNameConflict(friendly_name) from None
    selectors.user_cache_invalidate(user_id=user_id)  # the user object lists its factors
    return factor


def _factor_remove(*, user_id: uuid.UUID, factor: MfaFactor) -> MfaFactor:
    with transaction.atomic():
        MfaFactor.objects.filter(pk=factor.pk).delete()
        for session in Session.objects.select_for_update().filter(user_id=user_id, factor_id=factor.pk):
            session.aal = mfa.AAL1
            session.factor_id = None
            session.amr = [entry for entry in session.amr or [] if entry.get("method") != factor.factor_type]
            session.save(update_fields=["aal", "factor_id", "amr"])
        if not mfa.user_has_second_factor(user_id=user_id):
            recovery.recovery_codes_delete(user_id=user_id)
    selectors.user_cache_invalidate(user_id=user_id)
    return factor


# --- flows (both surfaces): rate limit -> service -> audit -------------------------------------


def enroll(
    *, request: HttpRequest, user: User, session_id: uuid.UUID | None, friendly_name: str, issuer: str, surface: str
) -> Enrollment:
    enrollment = factor_enroll(user=user, friendly_name=friendly_name, issuer=issuer, session_id=session_id)
    audit.record(
        AuditEvent.Kind.MFA_FACTOR_ENROLLED,
        request,
        user_id=user.pk,
        factor=str(enrollment.factor.pk),
        factor_type=enrollment.factor.factor_type,
        surface=surface,
    )
    return enrollment


def challenge(*, request: HttpRequest, user: User, factor_id: uuid.UUID | str) -> MfaChallenge:
    return factor_challenge(user_id=user.pk, factor_id=factor_id, ip=client_ip(request))


def verify(
    *,
    request: HttpRequest,
    user: User,
    session_id: uuid.UUID,
    factor_id: uuid.UUID | str,
    challenge_id: uuid.UUID | str,
    code: str,
    surface: str,
) -> Verification:
    def failed(factor: MfaFactor, reason: str) -> None:
        audit.record(
            AuditEvent.Kind.MFA_VERIFY_FAILURE,
            request,
            user_id=user.pk,
            factor=str(factor.pk),
            reason=reason,
            surface=surface,
        )

    throttles.mfa_verify_guard(user_id=user.pk, factor_id=str(factor_id))
    verification = factor_verify(
        user=user,
        factor_id=factor_id,
        challenge_id=challenge_id,
        code=code,
        session_id=session_id,
        ip=client_ip(request),
        on_failure=failed,
    )
    audit.record(
        AuditEvent.Kind.MFA_FACTOR_VERIFIED,
        request,
        user_id=user.pk,
        factor=str(verification.factor.pk),
        session=verification.tokens.session_id,
        first=verification.first,
        surface=surface,
    )
    if verification.recovery_codes:
        audit.record(AuditEvent.Kind.RECOVERY_CODES_GENERATED, request, user_id=user.pk, surface=surface)
    return verification


def unenroll(
    *, request: HttpRequest, user: User, session_id: uuid.UUID | None, factor_id: uuid.UUID | str, surface: str
) -> MfaFactor:
    factor = factor_unenroll(user_id=user.pk, factor_id=factor_id, session_id=session_id)
    audit.record(
        AuditEvent.Kind.MFA_FACTOR_UNENROLLED,
        request,
        user_id=user.pk,
        factor=str(factor.pk),
        factor_status=factor.status,
        session=session_id,
        surface=surface,
    )
    return factor
