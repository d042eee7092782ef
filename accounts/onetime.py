"""One-time tokens: the code and the link an email carries, usable once.

Services for both surfaces (native and GoTrue): issue (replace the user's
older unused tokens of the purpose, queue the email in the same transaction),
consume (by address + code, or by link token), and the PKCE auth code that a
redirecting verify hands out.

Secrets:
- the code and the link token are derived from the token's id with an HMAC
  under keys derived from SECRET_KEY (accounts.tokens.derived_key). So the
  email outbox row stores only the id, and the worker derives both at render
  time (velro.signals.email_rendering): a database dump, outbox included, holds
  no usable code or link; with the dump AND SECRET_KEY one could derive live
  ones, but SECRET_KEY already signs access tokens (unless JWT_SECRET is set),
  so it is no new exposure. (Encrypting the code into the row would need the
  same key to decrypt: no stronger, and one more format to keep.)
- stored: `code_hash`, an HMAC of (token id, code) under a separate derived key
  (a plain hash of a 6-digit code falls to 10^6 guesses offline), and
  `token_hash`, the SHA-256 of the 256-bit link token (enough, as for refresh
  tokens).
- claimed with one conditional UPDATE (used_at IS NULL AND expires_at > now
  AND attempts < max): of two concurrent verifies exactly one wins.
- a wrong code counts against every live token of the address and purposes
  tried: OTT_MAX_ATTEMPTS wrong codes and they are dead (the 10^6 space cannot
  be walked through one token).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import urlencode

from django.conf import settings
from django.db import transaction
from django.db.models import F, QuerySet
from django.utils import timezone

from accounts.models import OneTimeToken, User
from accounts.models import OneTimeTokenPurpose as Purpose
from accounts.tokens import derived_key, secret_digest
from velro.cache import safe_cache
from velro.errors import ApiError
from velro.signals import email_requested

PKCE_PREFIX = "pkce_"  # GoTrue's: a link token for the PKCE flow carries it

# The outbox's email kinds (notifications.models.EmailKind; asked for through
# velro.signals.email_requested, as this app does not import the outbox).
EMAIL_KINDS = {
    Purpose.RECOVERY: "recovery",
    Purpose.MAGICLINK: "magiclink",
    Purpose.SIGNUP: "confirmation",
    Purpose.INVITE: "invite",
    Purpose.EMAIL_CHANGE_NEW: "email_change",
    Purpose.EMAIL_CHANGE_CURRENT: "email_change",
    Purpose.REAUTHENTICATION: "reauthentication",
}
# The `type` GoTrue's links and POST /verify use for each purpose.
LINK_TYPES = {
    Purpose.RECOVERY: "recovery",
    Purpose.MAGICLINK: "magiclink",
    Purpose.SIGNUP: "signup",
    Purpose.INVITE: "invite",
    Purpose.EMAIL_CHANGE_NEW: "email_change",
    Purpose.EMAIL_CHANGE_CURRENT: "email_change",
}
# Purposes whose verify starts a session that may set a new password without
# the current one (GoTrue: a recovery or OTP session).
SIGN_IN_PURPOSES = (Purpose.RECOVERY, Purpose.MAGICLINK, Purpose.SIGNUP, Purpose.INVITE)


class OneTimeTokenInvalid(ApiError):
    """Wrong, used, replaced, expired or exhausted: one answer for all (GoTrue's otp_expired)."""

    status = 403
    code = "otp_expired"
    detail = "Token has expired or is invalid"


class EmailSendTooSoon(ApiError):
    """GoTrue's per-address interval between two emails (GOTRUE_SMTP_MAX_FREQUENCY)."""

    status = 429
    code = "over_email_send_rate_limit"

    def __init__(self, *, seconds: int) -> None:
        super().__init__(
            f"For security purposes, you can only request this after {seconds} seconds.",
            headers={"Retry-After": str(seconds)},
        )


class EmailNotConfirmed(ApiError):
    """GoTrue: 400 on a password sign-in ("Email not confirmed"), 422 on /reauthenticate."""

    status = 422
    code = "email_not_confirmed"
    detail = "Please verify your email first."

    def __init__(self, *, status: int = 422, detail: str | None = None) -> None:
        super().__init__(detail)
        self.status = status


class EmailExists(ApiError):
    status = 422
    code = "email_exists"
    detail = "A user with this email address has already been registered"


class UserNotFoundByEmail(ApiError):
    status = 404
    code = "user_not_found"
    detail = "User with this email not found"


class ReauthenticationNotValid(ApiError):
    status = 422
    code = "reauthentication_not_valid"
    detail = "Nonce has expired or is invalid"


class FlowStateNotFound(ApiError):
    status = 404
    code = "flow_state_not_found"
    detail = "invalid flow state, no valid flow state found"


class FlowStateExpired(ApiError):
    status = 422
    code = "flow_state_expired"
    detail = "invalid flow state, flow state has expired"


class BadCodeVerifier(ApiError):
    status = 400
    code = "bad_code_verifier"
    detail = "code challenge does not match previously saved code verifier"


@dataclass(frozen=True)
class OneTimeIssue:
    token: OneTimeToken
    code: str
    link_token: str  # as the link carries it (pkce_-prefixed for a PKCE flow)


# --- the secrets -----------------------------------------------------------------------


def _derive(kind: str, token_id: uuid.UUID) -> bytes:
    return hmac.new(derived_key(f"ott-{kind}"), token_id.bytes, hashlib.sha256).digest()


def ott_code(*, token_id: uuid.UUID, digits: int | None = None) -> str:
    """The token's code: 64 bits of its HMAC, reduced to `digits` decimal digits
    (bias below 10^-9)."""
    digits = digits or settings.GOTRUE_MAILER_OTP_LENGTH
    number = int.from_bytes(_derive("code", token_id)[:8], "big") % 10**digits
    return str(number).zfill(digits)


def _link_token(token_id: uuid.UUID) -> str:
    return base64.urlsafe_b64encode(_derive("link", token_id)).rstrip(b"=").decode("ascii")


def ott_link_token(*, token: OneTimeToken) -> str:
    raw = _link_token(token.pk)
    return PKCE_PREFIX + raw if token.code_challenge else raw


def _code_hash(token_id: uuid.UUID, code: str) -> str:
    return hmac.new(derived_key("ott-code-hash"), f"{token_id}:{code}".encode(), hashlib.sha256).hexdigest()


def ott_link(*, token_id: uuid.UUID, purpose: str, redirect_to: str = "", pkce: bool = False) -> str:
    """The link in the email: GoTrue's GET /verify, which redirects on."""
    raw = _link_token(token_id)
    query = {"token": PKCE_PREFIX + raw if pkce else raw, "type": LINK_TYPES[purpose]}
    if redirect_to:
        query["redirect_to"] = redirect_to
    return f"{settings.GOTRUE_SITE_URL}/auth/v1/verify?{urlencode(query)}"


def email_context(context: dict) -> dict:
    """The one-time kinds' context at render time (velro.signals.email_rendering): the code and the link
    derived from the token id at render time (never stored in the outbox)."""
    token_id = uuid.UUID(context["ott_id"])
    rendered = {**context, "code": ott_code(token_id=token_id, digits=context.get("digits"))}
    purpose = context["purpose"]
    rendered["link"] = (
        ott_link(
            token_id=token_id,
            purpose=purpose,
            redirect_to=context.get("redirect_to", ""),
            pkce=bool(context.get("pkce")),
        )
        if purpose in LINK_TYPES
        else ""
    )
    return rendered


# --- the per-address interval ------------------------------------------------------------

_local_sent: dict[str, float] = {}  # the fallback when the cache is unavailable: per process


def send_interval_check(*, address: str, group: str, now: float | None = None) -> None:
    """At most one email per address and purpose group every GOTRUE_SMTP_MAX_FREQUENCY
    seconds, counted whether or not the address has an account (else a 429
    would tell which have one). EmailSendTooSoon otherwise."""
    interval = settings.GOTRUE_SMTP_MAX_FREQUENCY
    if interval <= 0:
        return
    now = time.time() if now is None else now
    key = f"ott-sent:{group}:{secret_digest(address.strip().lower())[:32]}"
    # SET NX EX + INCRBY: the first request of an interval counts 1 and starts it.
    count = safe_cache.incr(key, 1, interval)
    if count is None:
        sent_at = _local_sent.get(key)
        if sent_at is not None and now - sent_at < interval:
            raise EmailSendTooSoon(seconds=max(1, int(interval - (now - sent_at))))
        _local_sent[key] = now
        return
    if count == 1:
        safe_cache.set(f"{key}:at", now, timeout=interval)
        return
    sent_at = safe_cache.get(f"{key}:at")
    left = interval - (now - float(sent_at)) if sent_at is not None else interval
    raise EmailSendTooSoon(seconds=max(1, int(left)))


# --- issue ---------------------------------------------------------------------------------


def ott_issue(
    *,
    user: User,
    purpose: str,
    sent_to: str,
    redirect_to: str = "",
    code_challenge: str = "",
    code_challenge_method: str = "",
    email: bool = True,
    context: dict | None = None,
    now: datetime | None = None,
) -> OneTimeIssue:
    """A new token for `purpose`, replacing the user's unused ones of the same
    purpose, and (email=True) its email queued in the same transaction (sent
    after commit by the outbox, exactly once)."""
    now = now or timezone.now()
    address = sent_to.strip().lower()
    token_id = uuid.uuid4()
    digits = settings.GOTRUE_MAILER_OTP_LENGTH
    code = ott_code(token_id=token_id, digits=digits)
    token = OneTimeToken(
        id=token_id,
        user=user,
        purpose=purpose,
        sent_to=address,
        code_hash=_code_hash(token_id, code),
        token_hash=secret_digest(_link_token(token_id)),
        redirect_to=redirect_to or "",
        code_challenge=code_challenge or "",
        code_challenge_method=(code_challenge_method or "").lower() if code_challenge else "",
        created_at=now,
        expires_at=now + timedelta(seconds=settings.GOTRUE_MAILER_OTP_EXP),
    )
    with transaction.atomic():
        # Replaced: the older ones expire now (a new email makes the last one the only one).
        OneTimeToken.objects.filter(user=user, purpose=purpose, used_at__isnull=True, expires_at__gt=now).update(
            expires_at=now
        )
        token.save(force_insert=True)
        if email:
            email_requested.send(
                sender=OneTimeToken,
                kind=EMAIL_KINDS[purpose],
                recipient_id=user.pk,
                event_key=f"ott:{token_id}",
                context={
                    **(context or {}),
                    "to": address,
                    "ott_id": str(token_id),
                    "purpose": str(purpose),
                    "digits": digits,
                    "redirect_to": token.redirect_to,
                    "pkce": bool(token.code_challenge),
                    "expires_minutes": settings.GOTRUE_MAILER_OTP_EXP // 60,
                },
            )
    return OneTimeIssue(token=token, code=code, link_token=ott_link_token(token=token))


# --- consume -------------------------------------------------------------------------------


def _live(purposes: Iterable[str], now: datetime) -> QuerySet[OneTimeToken]:
    return OneTimeToken.objects.filter(
        purpose__in=list(purposes),
        used_at__isnull=True,
        expires_at__gt=now,
        attempts__lt=settings.OTT_MAX_ATTEMPTS,
    )


def ott_find(
    *,
    purposes: Iterable[str],
    email: str | None = None,
    code: str | None = None,
    token_hash: str | None = None,
    now: datetime | None = None,
) -> OneTimeToken:
    """The live token a code (with its address) or a link token names; no claim yet.

    A wrong code is counted against every live token of that address and those
    purposes. OneTimeTokenInvalid for anything that does not match."""
    now = now or timezone.now()
    purposes = list(purposes)
    if token_hash:
        raw = token_hash.removeprefix(PKCE_PREFIX)
        token = _live(purposes, now).select_related("user").filter(token_hash=secret_digest(raw)).first()
        if token is None:
            raise OneTimeTokenInvalid()
        return token
    if not email or not code:
        raise OneTimeTokenInvalid()
    code = code.strip()
    candidates = list(_live(purposes, now).select_related("user").filter(sent_to=email.strip().lower()))
    for token in candidates:
        if hmac.compare_digest(_code_hash(token.pk, code), token.code_hash):
            return token
    if candidates:
        OneTimeToken.objects.filter(pk__in=[token.pk for token in candidates]).update(attempts=F("attempts") + 1)
    raise OneTimeTokenInvalid()


def ott_claim(*, token: OneTimeToken, now: datetime | None = None) -> None:
    """Mark the token used: one conditional UPDATE, so exactly one of two racing
    verifies wins; the loser gets OneTimeTokenInvalid."""
    now = now or timezone.now()
    claimed = OneTimeToken.objects.filter(
        pk=token.pk, used_at__isnull=True, expires_at__gt=now, attempts__lt=settings.OTT_MAX_ATTEMPTS
    ).update(used_at=now)
    if claimed != 1:
        raise OneTimeTokenInvalid()
    token.used_at = now


def ott_consume(
    *,
    purposes: Iterable[str],
    email: str | None = None,
    code: str | None = None,
    token_hash: str | None = None,
    now: datetime | None = None,
) -> OneTimeToken:
    """Find and claim: the token (with its user), used from now on."""
    now = now or timezone.now()
    token = ott_find(purposes=purposes, email=email, code=code, token_hash=token_hash, now=now)
    ott_claim(token=token, now=now)
    return token


def ott_session_bind(*, token: OneTimeToken, session_id: uuid.UUID) -> None:
    OneTimeToken.objects.filter(pk=token.pk).update(session_id=session_id)
    token.session_id = session_id


def session_may_set_password(*, session_id: uuid.UUID, now: datetime | None = None) -> bool:
    """A session started by a recovery, email-code, magic-link or confirmation
    verify may set a new password without the current one (GoTrue's IsRecovery),
    within the code lifetime of its start."""
    now = now or timezone.now()
    return OneTimeToken.objects.filter(
        session_id=session_id,
        purpose__in=SIGN_IN_PURPOSES,
        used_at__gt=now - timedelta(seconds=settings.GOTRUE_MAILER_OTP_EXP),
    ).exists()


# --- PKCE ----------------------------------------------------------------------------------


def pkce_challenge_valid(*, code_challenge: str, code_challenge_method: str) -> str | None:
    """GoTrue's validatePKCEParams: None when valid (or absent), else the message."""
    if bool(code_challenge) != bool(code_challenge_method):
        return "PKCE flow requires code_challenge_method and code_challenge"
    if not code_challenge:
        return None
    if code_challenge_method.lower() not in ("s256", "plain"):
        return "code challenge method not supported"
    if not 43 <= len(code_challenge) <= 128:
        return "code challenge has to be between 43 and 128 characters"
    if any(not (char.isascii() and (char.isalnum() or char in "._~-")) for char in code_challenge):
        return "code challenge can only contain alphanumeric characters, hyphens, periods, underscores and tildes"
    return None


def pkce_auth_code_issue(*, token: OneTimeToken, now: datetime | None = None) -> str:
    """After a redirecting verify of a PKCE token: the auth code for /token?grant_type=pkce."""
    now = now or timezone.now()
    auth_code = str(uuid.uuid4()) + secrets.token_hex(8)  # GoTrue's is a UUID; 64 more bits here
    OneTimeToken.objects.filter(pk=token.pk).update(auth_code_hash=secret_digest(auth_code), auth_code_issued_at=now)
    return auth_code


def _verifier_matches(token: OneTimeToken, verifier: str) -> bool:
    if token.code_challenge_method == "plain":
        expected = verifier
    else:
        digest = hashlib.sha256(verifier.encode()).digest()
        expected = base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")
    return hmac.compare_digest(expected.encode(), token.code_challenge.encode())


def pkce_verifier_matches(*, code_challenge: str, method: str, verifier: str) -> bool:
    """A verifier against a stored challenge (plain or S256), constant time (the provider flows too)."""
    return _verifier_matches(OneTimeToken(code_challenge=code_challenge, code_challenge_method=method), verifier)


def pkce_exchange(*, auth_code: str, code_verifier: str, now: datetime | None = None) -> OneTimeToken:
    """The token (with its user) whose auth code and verifier match, claimed once."""
    now = now or timezone.now()
    token = (
        OneTimeToken.objects.select_related("user")
        .filter(auth_code_hash=secret_digest(auth_code), auth_code_used_at__isnull=True)
        .first()
    )
    if token is None or token.auth_code_issued_at is None:
        raise FlowStateNotFound()
    if now - token.auth_code_issued_at > timedelta(seconds=settings.GOTRUE_FLOW_STATE_EXPIRY):
        raise FlowStateExpired()
    if not _verifier_matches(token, code_verifier):
        raise BadCodeVerifier()
    claimed = OneTimeToken.objects.filter(pk=token.pk, auth_code_used_at__isnull=True).update(auth_code_used_at=now)
    if claimed != 1:
        raise FlowStateNotFound()
    return token


# --- housekeeping ----------------------------------------------------------------------------


def ott_prune(*, now: datetime | None = None, older_than: timedelta = timedelta(days=1)) -> int:
    """Delete tokens that expired more than `older_than` ago (beat, hourly): past
    every use (a verify, a PKCE exchange, the recovery session's password window)."""
    now = now or timezone.now()
    deleted, _ = OneTimeToken.objects.filter(expires_at__lt=now - older_than).delete()
    return deleted
