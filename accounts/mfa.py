"""Authenticator assurance levels: what a session proved, and what needs more.

A session starts at aal1 after one factor (a password, an email code or link)
and is raised to aal2 by a second one: a TOTP code (accounts.totp), a recovery
code, a passkey used as a second factor (accounts.passkeys). A passkey sign-in
starts at aal2 (possession plus user verification). The level belongs to the
session row: a refresh keeps it, and each access token of the session carries
it (`aal`, `amr`) for clients; what a sensitive operation requires is checked
against the row, never the token's claim, so a token minted before a factor
was reset cannot outlive the reset.

Sensitive operations (changing the password or email, creating API keys,
removing a factor or passkey, regenerating recovery codes) call `aal_require`:
for a user with a second factor, the session must be aal2 (403
insufficient_aal); for a user without one, aal1 is all there is.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from django.db import transaction
from django.utils import timezone

from accounts import recovery, selectors, services
from accounts.models import FactorStatus, MfaFactor, Passkey, RefreshToken, Session, User, WebAuthnChallenge
from accounts.services import IssuedTokens
from accounts.tokens import refresh_token_hash, refresh_token_new
from monitoring.models import AuditEvent
from velro.errors import ApiError

AAL1 = "aal1"
AAL2 = "aal2"


class InsufficientAal(ApiError):
    status = 403
    code = "insufficient_aal"
    detail = "AAL2 session is required to perform this action: verify a second factor first"


class SessionNotFound(ApiError):
    status = 401
    code = "session_not_found"
    detail = "Session has ended"


def user_has_second_factor(*, user_id: uuid.UUID) -> bool:
    """A verified TOTP factor or a passkey: the user can reach aal2, so sensitive operations need it."""
    return (
        MfaFactor.objects.filter(user_id=user_id, status=FactorStatus.VERIFIED).exists()
        or Passkey.objects.filter(user_id=user_id).exists()
    )


def next_level(*, user_id: uuid.UUID) -> str:
    """GoTrue's nextLevel: aal2 when the user has a second factor."""
    return AAL2 if user_has_second_factor(user_id=user_id) else AAL1


def session_aal(*, session_id: uuid.UUID | None) -> str:
    """The session row's level (aal1 for no session: an API key)."""
    if session_id is None:
        return AAL1
    return Session.objects.filter(pk=session_id).values_list("aal", flat=True).first() or AAL1


def aal_require(*, user_id: uuid.UUID, session_id: uuid.UUID | None) -> None:
    """InsufficientAal unless the session is aal2 or the user has no second factor."""
    if session_aal(session_id=session_id) == AAL2:
        return
    if user_has_second_factor(user_id=user_id):
        raise InsufficientAal()


def session_elevate(
    *, user: User, session_id: uuid.UUID, method: str, factor_id: uuid.UUID | None = None, now: datetime | None = None
) -> IssuedTokens:
    """Raise a live session of `user` to aal2 after a second factor (`method`:
    totp, recovery, passkey...). The same session, a new access token and a new
    refresh token of the session (GoTrue's MFA verify answer); the session's
    older refresh tokens stay usable and now mint aal2 tokens too, since the
    level is the session's. SessionNotFound if the session has ended."""
    now = now or timezone.now()
    raw = refresh_token_new()
    with transaction.atomic():
        session = (
            Session.objects.select_for_update()
            .filter(pk=session_id, user_id=user.pk, revoked_at__isnull=True, expires_at__gt=now)
            .first()
        )
        if session is None:
            raise SessionNotFound()
        first = session.amr or [{"method": "password", "timestamp": int(session.created_at.timestamp())}]
        session.amr = [*first, {"method": method, "timestamp": int(now.timestamp())}]
        session.aal = AAL2
        session.factor_id = factor_id
        session.save(update_fields=["aal", "amr", "factor_id"])
        RefreshToken.objects.create(session=session, token_hash=refresh_token_hash(raw), created_at=now)
    return services.session_tokens(session=session, user=user, refresh_token=raw, now=now)


# --- operators and the admin sign-in -----------------------------------------------------

TOTP_DIGITS = 6


def user_second_factor_check(*, user: User, code: str) -> str | None:
    """The Django admin's second step (accounts.backends): which second factor
    `code` proved, "totp" or "recovery" (truthy), or None. Six digits are tried
    as a TOTP code of a verified factor (accounts.totp, which also refuses a
    replay); anything else as a recovery code, spent if it matches (the caller
    audits and emails the use: accounts.recovery_flows)."""
    code = (code or "").strip()
    if not code:
        return None
    if code.isdigit() and len(code) == TOTP_DIGITS:
        return "totp" if _totp_check(user=user, code=code) else None
    return "recovery" if recovery.recovery_code_use(user_id=user.pk, code=code) else None


def _totp_check(*, user: User, code: str) -> bool:
    try:
        from accounts.totp import factor_code_check  # the TOTP factors' module (imported late: optional here)
    except ImportError:
        return False  # no TOTP factors in this build: a six-digit code proves nothing
    return bool(factor_code_check(user=user, code=code))


@dataclass(frozen=True)
class MfaReset:
    factors: int
    passkeys: int
    recovery_codes: int
    sessions: int


def user_mfa_reset(*, user_id: uuid.UUID, actor: str) -> MfaReset:
    """An operator removes every second factor of a user (a lost phone and lost
    codes, proven to support out of band): TOTP factors and their challenges,
    passkeys and pending WebAuthn ceremonies, recovery codes; and ends every
    session of the user, since an aal2 session proved a factor that is gone.
    Audited (MFA_RESET, detail: actor and what went) in the same transaction:
    rare, and never to be lost."""
    with transaction.atomic():
        # Counted by kind: delete()'s total also counts what cascaded (a factor's challenges).
        factors = MfaFactor.objects.filter(user_id=user_id).delete()[1].get(MfaFactor._meta.label, 0)
        passkeys = Passkey.objects.filter(user_id=user_id).delete()[1].get(Passkey._meta.label, 0)
        WebAuthnChallenge.objects.filter(user_id=user_id).delete()
        codes = recovery.recovery_codes_remaining(user_id=user_id)
        recovery.recovery_codes_delete(user_id=user_id)
        sessions = services.user_sessions_end(user_id=user_id, reason="mfa_reset")
        done = MfaReset(factors=factors, passkeys=passkeys, recovery_codes=codes, sessions=sessions)
        AuditEvent.objects.create(
            kind=AuditEvent.Kind.MFA_RESET,
            user_id=user_id,
            identifier=actor[:254],
            detail={"actor": actor, **{name: str(value) for name, value in done.__dict__.items()}},
        )
    selectors.user_cache_invalidate(user_id=user_id)  # the snapshot says whether the user has factors
    return done
