"""Recovery codes as a feature, for both API surfaces (and the admin's sign-in).

throttle -> service -> audit -> email. The native views (accounts.recovery_views)
and the GoTrue-surface views (accounts.gotrue.recovery_views) call these and
differ only in their shapes and error bodies.

- verify: a session at aal1 spends one code and is raised to aal2
  (mfa.session_elevate, amr "recovery"); the spend and the raise are one
  transaction, so a code is not lost to a session that ended meanwhile;
- each use is audited (RECOVERY_CODE_USED, remaining) and the user is told by
  email (the outbox, in the same transaction): the email says how many codes
  remain, never a code;
- regenerate: a new set, shown once, the old one gone; needs aal2 (when the
  user has a second factor, which regenerating requires).
"""

from __future__ import annotations

import uuid
from datetime import datetime

from django.db import transaction
from django.http import HttpRequest
from django.utils import timezone

from accounts import mfa, recovery, throttles
from accounts.models import RecoveryCode, User
from accounts.recovery import RecoveryCodesSummary
from accounts.services import IssuedTokens
from monitoring import audit
from monitoring.models import AuditEvent
from velro.errors import ApiError
from velro.net import client_ip
from velro.signals import email_requested

EMAIL_KIND = "recovery_code_used"  # notifications.models.EmailKind.RECOVERY_CODE_USED (the outbox's app)


class RecoveryCodeInvalid(ApiError):
    """Wrong, used, from a replaced set, or malformed: one answer for all."""

    status = 422
    code = "mfa_verification_failed"
    detail = "Invalid recovery code entered"


class SecondFactorRequired(ApiError):
    status = 422
    code = "second_factor_required"
    detail = "Recovery codes back up a second factor: add an authenticator app or a passkey first"


def recovery_code_used_notify(
    *, request: HttpRequest, user: User, remaining: int, now: datetime, surface: str = "native"
) -> None:
    """Audit a spent code and tell the user by email (queued in the caller's transaction)."""
    audit.record(
        AuditEvent.Kind.RECOVERY_CODE_USED,
        request,
        user_id=user.pk,
        remaining=remaining,
        **audit.surface_detail(surface),
    )
    email_requested.send(
        sender=RecoveryCode,
        kind=EMAIL_KIND,
        recipient_id=user.pk,
        event_key=f"{EMAIL_KIND}:{uuid.uuid4()}",
        context={
            "name": user.display_name or user.email,
            "remaining": remaining,
            "used_at": now.strftime("%Y-%m-%d %H:%M UTC"),
            "ip": client_ip(request) or "",
        },
    )


def recovery_code_verify(
    *, request: HttpRequest, user: User, session_id: uuid.UUID, code: str, surface: str = "native"
) -> IssuedTokens:
    """Spend one of the user's codes and raise the session to aal2: the session's
    new tokens. RecoveryCodeInvalid for a code that does not spend; RateLimited."""
    throttles.recovery_code_guard(user_id=user.pk)
    now = timezone.now()
    with transaction.atomic():
        spent = recovery.recovery_code_use(user_id=user.pk, code=code, now=now)
        if spent:
            tokens = mfa.session_elevate(user=user, session_id=session_id, method="recovery", now=now)
            remaining = recovery.recovery_codes_remaining(user_id=user.pk)
            recovery_code_used_notify(request=request, user=user, remaining=remaining, now=now, surface=surface)
    if not spent:
        audit.record(
            AuditEvent.Kind.MFA_VERIFY_FAILURE,
            request,
            user_id=user.pk,
            method="recovery",
            **audit.surface_detail(surface),
        )
        raise RecoveryCodeInvalid()
    return tokens


def recovery_codes_status(*, user_id: uuid.UUID) -> RecoveryCodesSummary:
    return recovery.recovery_codes_summary(user_id=user_id)


def recovery_codes_regenerate(
    *, request: HttpRequest, user: User, session_id: uuid.UUID | None, surface: str = "native"
) -> tuple[list[str], RecoveryCodesSummary]:
    """A new set (shown once) replacing the old one. InsufficientAal unless the
    session is aal2; SecondFactorRequired for a user without a second factor."""
    mfa.aal_require(user_id=user.pk, session_id=session_id)
    if not mfa.user_has_second_factor(user_id=user.pk):
        raise SecondFactorRequired()
    codes = recovery.recovery_codes_generate(user_id=user.pk)
    audit.record(AuditEvent.Kind.RECOVERY_CODES_GENERATED, request, user_id=user.pk, **audit.surface_detail(surface))
    return codes, recovery.recovery_codes_summary(user_id=user.pk)
