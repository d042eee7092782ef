"""Writes for accounts: signup, login, refresh, logout, profile, password, users-sync.

Rules kept here: no transaction is open while a password is hashed; every
hash and verify holds a password-hashing slot (velro.admission: bounded, shed
with 503 `overloaded` when none is free); every function is keyword-only and
typed; errors are ApiError subclasses.
"""

from __future__ import annotations

import json
import logging
import secrets
import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from functools import cache
from typing import Literal

from django.conf import settings
from django.contrib.auth.hashers import check_password, make_password
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import IntegrityError, connection, transaction
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone
from rest_framework.exceptions import ErrorDetail, ValidationError

from accounts import touch
from accounts.apikeys import api_key_hash, api_key_new, api_key_prefix
from accounts.events import user_signed_up
from accounts.models import (
    NO_EMAIL_DOMAIN,
    ApiKey,
    OneTimeTokenPurpose,
    PublicUser,
    RefreshToken,
    RevocationKind,
    Session,
    User,
    normalize_email,
)
from accounts.onetime import ott_issue
from accounts.revocations import revocation_record
from accounts.selectors import (
    api_key_cache_invalidate,
    has_mfa_factors,
    session_cache_invalidate,
    user_cache_invalidate,
    user_related,
)
from accounts.tokens import (
    access_token_encode,
    refresh_token_hash,
    refresh_token_new,
    refresh_token_successor,
)
from velro.admission import password_hashing
from velro.db import db_budget, db_release
from velro.errors import ApiError, Conflict, InvalidCredentials, InvalidRefreshToken, RefreshTokenReused

logger = logging.getLogger("velro.accounts")

LogoutScope = Literal["local", "global", "others"]
MIRRORED_FIELDS = ("email", "username", "display_name")


@dataclass(frozen=True)
class IssuedTokens:
    user: User
    session_id: uuid.UUID
    access_token: str
    expires_at: int
    refresh_token: str
    expires_in: int = field(default_factory=lambda: settings.ACCESS_TOKEN_TTL_SECONDS)
    api_key: ApiKey | None = None  # the primary key, on signup only (raw key shown once)
    authenticated_at: datetime | None = None  # when the session's password check happened
    aal: str = "aal1"  # the session's assurance level (accounts.mfa)
    amr: tuple[dict, ...] = ()  # how it was reached: ({"method", "timestamp"}, ...), oldest first


class RefreshTokenRejected(InvalidRefreshToken):
    """A refresh token that cannot be used: the same 401 invalid_refresh_token
    on the native API; `reason` lets the GoTrue surface answer with its own
    code (not_found, session_ended, session_expired, user_inactive, reused)."""

    def __init__(self, *, reason: str) -> None:
        super().__init__()
        self.reason = reason


class UserBanned(InvalidCredentials):
    """The right password for a banned account (User.banned_until ahead): a
    refused login like any other for the code that catches InvalidCredentials
    (audit, the Django admin's sign-in), with its own answer (GoTrue: 400
    user_banned). Only after the password matched: a wrong one is answered
    invalid_credentials, so a ban is not shown to whoever guesses an address."""

    status = 403
    code = "user_banned"
    detail = "User is banned"


class SamePassword(ApiError):
    status = 422
    code = "same_password"
    detail = "New password should be different from the old password."


# --- passwords -------------------------------------------------------------


@cache
def _dummy_hash() -> str:
    return make_password(secrets.token_urlsafe(16))


def password_verify_dummy(*, password: str) -> None:
    """Spend the same argon2id verify as a real login (unknown user path)."""
    check_password(password, _dummy_hash())


def password_validate(*, password: str, user: User | None = None, field_name: str = "password") -> None:
    try:
        validate_password(password, user=user)
    except DjangoValidationError as exc:
        # The validators' codes (password_too_short, ...) are kept on the
        # messages: the GoTrue surface turns them into weak_password reasons.
        details = [
            ErrorDetail(message, code=error.code or "invalid") for error in exc.error_list for message in error.messages
        ]
        raise ValidationError({field_name: details}) from None


# --- sessions and tokens ---------------------------------------------------------


def _session_insert(*, session: Session, token_hash: str) -> None:
    """Insert a session and its first refresh token: one statement on PostgreSQL."""
    if connection.vendor != "postgresql":
        with transaction.atomic(savepoint=False):
            session.save(force_insert=True)
            RefreshToken.objects.create(session=session, token_hash=token_hash, created_at=session.created_at)
        return
    sessions, tokens = Session._meta.db_table, RefreshToken._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            WITH s AS (
                INSERT INTO {sessions} (
                    id, user_id, created_at, expires_at, revoked_at, revoked_reason, ip, user_agent,
                    aal, amr, factor_id
                )
                VALUES (%s, %s, %s, %s, NULL, '', %s, %s, %s, %s, NULL)
                RETURNING id
            )
            INSERT INTO {tokens} (session_id, token_hash, parent_id, created_at, rotated_at)
            SELECT s.id, %s, NULL, %s, NULL FROM s
            """,
            [
                session.id,
                session.user_id,
                session.created_at,
                session.expires_at,
                session.ip,
                session.user_agent,
                session.aal,
                json.dumps(session.amr),
                token_hash,
                session.created_at,
            ],
        )


def _issue(
    *,
    user: User,
    session_id: uuid.UUID,
    refresh_token: str,
    now: datetime,
    authenticated_at: datetime,
    aal: str = "aal1",
    amr: list[dict] | tuple[dict, ...] = (),
) -> IssuedTokens:
    access, expires_at = access_token_encode(user_id=user.pk, session_id=session_id, now=now, aal=aal)
    return IssuedTokens(
        user=user,
        session_id=session_id,
        access_token=access,
        expires_at=expires_at,
        refresh_token=refresh_token,
        authenticated_at=authenticated_at,
        aal=aal,
        amr=tuple(amr) or ({"method": "password", "timestamp": int(authenticated_at.timestamp())},),
    )


def session_start(
    *,
    user: User,
    ip: str | None,
    user_agent: str,
    now: datetime | None = None,
    method: str = "password",
    aal: str = "aal1",
) -> IssuedTokens:
    """A new session reached by `method` (GoTrue's amr: password, otp, magiclink,
    recovery, invite, passkey...) at assurance `aal`."""
    now = now or timezone.now()
    session = Session(
        id=uuid.uuid4(),
        user=user,
        created_at=now,
        expires_at=now + timedelta(seconds=settings.REFRESH_TOKEN_TTL_SECONDS),
        ip=ip,
        user_agent=user_agent[:256],
        aal=aal,
        amr=[{"method": method, "timestamp": int(now.timestamp())}],
    )
    raw = refresh_token_new()
    _session_insert(session=session, token_hash=refresh_token_hash(raw))
    return _issue(
        user=user, session_id=session.id, refresh_token=raw, now=now, authenticated_at=now, aal=aal, amr=session.amr
    )


def session_tokens(*, session: Session, user: User, refresh_token: str, now: datetime) -> IssuedTokens:
    """Tokens for an existing session at its level (accounts.mfa's step-up)."""
    return _issue(
        user=user,
        session_id=session.pk,
        refresh_token=refresh_token,
        now=now,
        authenticated_at=session.created_at,
        aal=session.aal,
        amr=session.amr,
    )


def _rotate(*, token: RefreshToken, successor_hash: str, now: datetime) -> None:
    """Mark `token` rotated and insert its successor: one statement on PostgreSQL."""
    if connection.vendor != "postgresql":
        RefreshToken.objects.create(
            session_id=token.session_id, token_hash=successor_hash, parent=token, created_at=now
        )
        RefreshToken.objects.filter(pk=token.pk).update(rotated_at=now)
        return
    table = RefreshToken._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            WITH parent AS (
                UPDATE {table} SET rotated_at = %s WHERE id = %s AND rotated_at IS NULL RETURNING id, session_id
            )
            INSERT INTO {table} (session_id, token_hash, parent_id, created_at, rotated_at)
            SELECT session_id, %s, id, %s, NULL FROM parent
            """,
            [now, token.pk, successor_hash, now],
        )


def session_refresh(*, refresh_token: str, now: datetime | None = None) -> IssuedTokens:
    """Rotate a refresh token: lock it, mark it rotated, insert its successor.

    A rotated token presented again within the grace window gets the same
    successor back (multi-tab races). Outside the window it is a replay: the
    whole session (token family) is revoked.
    """
    now = now or timezone.now()
    reuse_detected = False
    with db_budget():
        token = (
            RefreshToken.objects.select_for_update(of=("self",))
            .select_related(*user_related("session__user"))
            .annotate(user_has_mfa_factors=has_mfa_factors("session__user_id"))
            .filter(token_hash=refresh_token_hash(refresh_token))
            .first()
        )
        if token is None:
            raise RefreshTokenRejected(reason="not_found")
        session = token.session
        session.user.has_mfa_factors = token.user_has_mfa_factors
        if session.user.is_banned(now):
            # Before the session's own state: the ban ended it, and the answer says why (GoTrue's).
            raise RefreshTokenRejected(reason="user_inactive")
        if session.revoked_at is not None:
            ended_by_reuse = session.revoked_reason == "refresh_reuse"
            raise RefreshTokenRejected(reason="reused" if ended_by_reuse else "session_ended")
        if not session.is_active(now):
            raise RefreshTokenRejected(reason="session_expired")
        if not session.user.is_active:
            raise RefreshTokenRejected(reason="user_inactive")
        successor = refresh_token_successor(refresh_token)
        if token.rotated_at is None:
            _rotate(token=token, successor_hash=refresh_token_hash(successor), now=now)
        elif now - token.rotated_at <= timedelta(seconds=settings.REFRESH_REUSE_GRACE_SECONDS):
            if not RefreshToken.objects.filter(parent=token, rotated_at__isnull=True).exists():
                raise RefreshTokenRejected(reason="reused")
        else:
            _sessions_revoke(sessions=Session.objects.filter(pk=session.pk), reason="refresh_reuse", now=now)
            reuse_detected = True
    if reuse_detected:
        # Raised after the commit: the revocation must stick.
        logger.warning("refresh token reuse: session %s revoked", session.pk)
        raise RefreshTokenReused(user_id=session.user_id)
    return _issue(
        user=session.user,
        session_id=session.pk,
        refresh_token=successor,
        now=now,
        authenticated_at=session.created_at,
        aal=session.aal,
        amr=session.amr,
    )


def _sessions_revoke(*, sessions: QuerySet[Session], reason: str, now: datetime) -> int:
    ids = list(sessions.filter(revoked_at__isnull=True).values_list("pk", flat=True))
    if not ids:
        return 0
    count = Session.objects.filter(pk__in=ids, revoked_at__isnull=True).update(revoked_at=now, revoked_reason=reason)
    revocation_record(kind=RevocationKind.SESSION, subjects=ids)
    session_cache_invalidate(session_ids=ids)
    return count


def user_sessions_end(
    *, user_id: uuid.UUID, reason: str, keep_session_id: uuid.UUID | None = None, aal: str | None = None
) -> int:
    """End every session of a user (but `keep_session_id`; only those at `aal` when
    given): password replaced, account disabled, a second factor verified."""
    sessions = Session.objects.filter(user_id=user_id)
    if aal is not None:
        sessions = sessions.filter(aal=aal)
    if keep_session_id is not None:
        sessions = sessions.exclude(pk=keep_session_id)
    return _sessions_revoke(sessions=sessions, reason=reason, now=timezone.now())


def user_revoke(*, user_id: uuid.UUID) -> None:
    """The account was deactivated, banned or deleted: no cached state of it is trusted any more."""
    revocation_record(kind=RevocationKind.USER, subjects=[user_id])


def session_logout(
    *, user_id: uuid.UUID, session_id: uuid.UUID, scope: LogoutScope, now: datetime | None = None
) -> int:
    sessions = Session.objects.filter(user_id=user_id)
    if scope == "local":
        sessions = sessions.filter(pk=session_id)
    elif scope == "others":
        sessions = sessions.exclude(pk=session_id)
    with db_budget():
        return _sessions_revoke(sessions=sessions, reason=f"logout_{scope}", now=now or timezone.now())


def session_revoke(*, session_ids: list[uuid.UUID], reason: str, now: datetime | None = None) -> int:
    """Operator revocation (admin action)."""
    return _sessions_revoke(
        sessions=Session.objects.filter(pk__in=session_ids), reason=reason, now=now or timezone.now()
    )


# --- signup and login -------------------------------------------------------------


def _integrity_conflict(exc: IntegrityError) -> Conflict:
    # The constraint name, not the message text: an email like
    # "username@x.io" must not read as a username clash.
    diag = getattr(exc.__cause__, "diag", None)
    constraint = getattr(diag, "constraint_name", None) or str(exc)
    if "username" in constraint:
        return Conflict("This username is already taken", code="username_taken")
    return Conflict("An account with this email already exists", code="email_taken")


def user_signup(
    *,
    email: str,
    password: str,
    username: str | None = None,
    referral_code: str | None = None,
    ip: str | None = None,
    user_agent: str = "",
    display_name: str = "",
    user_metadata: dict | None = None,
    request: HttpRequest | None = None,
) -> IssuedTokens:
    """Create the user, mirror, session and primary API key in one transaction,
    and announce it there (events.user_signed_up): the receivers (the referral
    code, intent and welcome email) write in the same transaction, so a broker
    outage delays that work but cannot lose it. With `request`, a signup whose
    client has gone (or that waited too long) is shed before the hash."""
    email = normalize_email(email)
    candidate = User(
        email=email, username=username or None, display_name=display_name, user_metadata=user_metadata or {}
    )
    password_validate(password=password, user=candidate)
    # Hash before the transaction opens: no row locks or open transaction
    # are held for the ~20 ms of argon2.
    with password_hashing(request):
        candidate.password = make_password(password)
    now = timezone.now()
    candidate.date_joined = now
    candidate.last_login = now
    # No confirmation mail is sent: the address counts as confirmed at signup
    # (GoTrue's mailer_autoconfirm), which the GoTrue surface reports.
    candidate.email_confirmed_at = now
    try:
        with db_budget():
            candidate.save(force_insert=True)
            tokens = session_start(user=candidate, ip=ip, user_agent=user_agent, now=now)
            primary_key, _ = api_key_create(user=candidate, name="primary", is_primary=True, now=now)
            user_signed_up.send(sender=User, user=candidate, referral_code=referral_code or None, now=now)
    except IntegrityError as exc:
        raise _integrity_conflict(exc) from None
    return replace(tokens, api_key=primary_key)


def user_signup_pending(
    *,
    email: str,
    password: str,
    username: str | None = None,
    referral_code: str | None = None,
    display_name: str = "",
    user_metadata: dict | None = None,
    redirect_to: str = "",
    request: HttpRequest | None = None,
) -> User:
    """Confirmation-required mode (GOTRUE_MAILER_AUTOCONFIRM=false): the user,
    unconfirmed and without a session, and the confirmation email, in one
    transaction with the signup's announcement (user_signed_up)."""
    email = normalize_email(email)
    candidate = User(
        email=email, username=username or None, display_name=display_name, user_metadata=user_metadata or {}
    )
    password_validate(password=password, user=candidate)
    with password_hashing(request):
        candidate.password = make_password(password)
    now = timezone.now()
    candidate.date_joined = now
    candidate.email_confirmed_at = None
    try:
        with db_budget():
            candidate.save(force_insert=True)
            user_signed_up.send(sender=User, user=candidate, referral_code=referral_code or None, now=now)
            ott_issue(
                user=candidate,
                purpose=OneTimeTokenPurpose.SIGNUP,
                sent_to=candidate.email,
                redirect_to=redirect_to,
                now=now,
            )
    except IntegrityError as exc:
        raise _integrity_conflict(exc) from None
    return candidate


def user_authenticate(*, user: User | None, password: str, request: HttpRequest | None = None) -> User:
    """One argon2id verify, whoever asks (the user was read by
    selectors.user_for_login: one indexed read).

    Unknown users, users without a usable password and inactive users cost
    the same verify and get the same error as a wrong password. The verify
    holds a password-hashing slot, taken the same way for all of them: with
    none free in time, or the request's client gone, Overloaded (503), and no
    verify at all.
    """
    db_release()  # the wait for a slot and the verify need no connection
    with password_hashing(request):
        if user is None or not user.has_usable_password():
            password_verify_dummy(password=password)
            raise InvalidCredentials()
        if not user.is_active or user.is_banned():
            # The same verify, but nothing written: a refused login changes
            # nothing (no hash upgrade for a banned or deactivated account).
            matched = check_password(password, user.password)
            if matched and user.is_active:
                raise UserBanned()
            raise InvalidCredentials()
        # check_password upgrades a PBKDF2/bcrypt/weaker-argon2 hash on success.
        if not user.check_password(password):
            raise InvalidCredentials()
    return user


def session_login(
    *, user: User, ip: str | None = None, user_agent: str = "", method: str = "password", aal: str = "aal1"
) -> IssuedTokens:
    """A new session for an authenticated user (last_login written off the request path)."""
    now = timezone.now()
    tokens = session_start(user=user, ip=ip, user_agent=user_agent, now=now, method=method, aal=aal)
    touch.last_login(user_id=user.pk, when=now)
    user.last_login = now
    return tokens


# --- profile and password ------------------------------------------------------------


class _Unset:
    """Marks a keyword that was not given (None is a value: "clear it")."""


UNSET = _Unset()


def metadata_merge(current: dict, changes: dict) -> dict:
    """GoTrue's rule for `data`: top-level keys are set, a null value deletes its key."""
    merged = dict(current or {})
    for key, value in changes.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    return merged


def user_update_profile(
    *,
    user_id: uuid.UUID,
    display_name: str | _Unset = UNSET,
    username: str | _Unset | None = UNSET,
    user_metadata: dict | _Unset = UNSET,
) -> User:
    """`user_metadata` is merged into the stored one (metadata_merge)."""
    user = User.objects.select_related(*user_related()).get(pk=user_id)
    changed = []
    if not isinstance(user_metadata, _Unset):
        merged = metadata_merge(user.user_metadata, user_metadata)
        if merged != user.user_metadata:
            user.user_metadata = merged
            changed.append("user_metadata")
    if not isinstance(display_name, _Unset) and display_name != user.display_name:
        user.display_name = display_name
        changed.append("display_name")
    if not isinstance(username, _Unset) and (username or None) != user.username:
        user.username = username or None
        changed.append("username")
    if changed:
        try:
            # Its own savepoint: a clash must not poison a caller's transaction.
            with transaction.atomic():
                user.save(update_fields=changed)
        except IntegrityError as exc:
            raise _integrity_conflict(exc) from None
        user.profile.refresh_from_db()
    return user


def user_change_password(
    *,
    user_id: uuid.UUID,
    session_id: uuid.UUID,
    current_password: str | None,
    new_password: str,
    request: HttpRequest | None = None,
) -> None:
    """Set a new password and end every other session of the user.

    current_password=None: the caller's session is the proof (GoTrue's
    PUT /user); the new password must then differ from the current one.
    The verify and the new hash hold one password-hashing slot (Overloaded
    when none is free in time, or, with `request`, when its client has gone).
    """
    user = User.objects.get(pk=user_id)
    with password_hashing(request):
        if current_password is not None and not user.check_password(current_password):
            raise ValidationError({"current_password": ["Current password is incorrect."]})
        password_validate(password=new_password, user=user, field_name="new_password")
        # Plain check_password: no hash upgrade written for a password being replaced.
        if current_password is None and user.has_usable_password() and check_password(new_password, user.password):
            raise SamePassword()
        user.set_password(new_password)  # hashed outside the transaction
    user.keep_session_id = session_id
    with db_budget():
        # The model announces the change (password_replaced), which ends the
        # other sessions in this transaction: the same path as the admin's.
        user.save(update_fields=["password"])


# --- API keys ---------------------------------------------------------------------


class ApiKeyNotFound(ApiError):
    status = 404
    code = "not_found"
    detail = "API key not found"


def api_key_create(
    *, user: User, name: str, is_primary: bool = False, now: datetime | None = None
) -> tuple[ApiKey, str]:
    """Create a key; return it with the raw key, which is never stored."""
    raw = api_key_new()
    key = ApiKey.objects.create(
        user=user,
        name=name,
        prefix=api_key_prefix(raw),
        key_hash=api_key_hash(raw),
        is_primary=is_primary,
        created_at=now or timezone.now(),
    )
    key.raw_key = raw
    return key, raw


def api_key_revoke(*, user_id: uuid.UUID, key_id: uuid.UUID, now: datetime | None = None) -> None:
    key = ApiKey.objects.filter(pk=key_id, user_id=user_id, revoked_at__isnull=True).first()
    if key is None:
        raise ApiKeyNotFound()
    with transaction.atomic():
        ApiKey.objects.filter(pk=key.pk, revoked_at__isnull=True).update(revoked_at=now or timezone.now())
        revocation_record(kind=RevocationKind.API_KEY, subjects=[key.key_hash])
    api_key_cache_invalidate(key_hashes=[key.key_hash])


def api_keys_revoke(*, key_ids: list[uuid.UUID], now: datetime | None = None) -> int:
    """Operator revocation (admin action)."""
    keys = ApiKey.objects.filter(pk__in=key_ids, revoked_at__isnull=True)
    with transaction.atomic():
        hashes = list(keys.values_list("key_hash", flat=True))
        count = keys.update(revoked_at=now or timezone.now())
        revocation_record(kind=RevocationKind.API_KEY, subjects=hashes)
    api_key_cache_invalidate(key_hashes=hashes)
    return count


# --- users-sync (the public mirror) -----------------------------------------------


def public_user_sync(*, user: User, created: bool = False) -> None:
    """Make the mirror row match the auth user (called by the post_save hook)."""
    values = {name: getattr(user, name) for name in MIRRORED_FIELDS}
    if created:
        PublicUser.objects.create(user=user, created_at=user.date_joined, updated_at=user.date_joined, **values)
        return
    # Upsert: repairs a missing row as well as a stale one, in one statement.
    PublicUser.objects.bulk_create(
        [PublicUser(user=user, created_at=user.date_joined, updated_at=timezone.now(), **values)],
        update_conflicts=True,
        unique_fields=["user"],
        update_fields=[*MIRRORED_FIELDS, "updated_at"],
    )


def public_user_remove(*, user_id: uuid.UUID) -> None:
    """Delete the mirror row (normally already gone through the cascade)."""
    PublicUser.objects.filter(pk=user_id).delete()
    user_cache_invalidate(user_id=user_id)


@dataclass
class RepairReport:
    created: list[uuid.UUID] = field(default_factory=list)
    updated: list[uuid.UUID] = field(default_factory=list)
    unchanged: int = 0

    @property
    def changed(self) -> int:
        return len(self.created) + len(self.updated)


def public_users_repair(*, batch_size: int = 1000) -> RepairReport:
    """Backfill missing mirror rows and fix drifted ones. Idempotent."""
    report = RepairReport()
    users = User.objects.select_related("profile").order_by("pk")
    for user in users.iterator(chunk_size=batch_size):
        try:
            mirror = user.profile
        except PublicUser.DoesNotExist:
            mirror = None
        if mirror is None:
            with transaction.atomic():
                public_user_sync(user=user, created=True)
            report.created.append(user.pk)
        elif any(getattr(mirror, name) != getattr(user, name) for name in MIRRORED_FIELDS):
            public_user_sync(user=user)
            report.updated.append(user.pk)
        else:
            report.unchanged += 1
    return report


# --- one-time-token flows (accounts.onetime, accounts.flows) ------------------------------


def user_create_passwordless(*, email: str, user_metadata: dict | None = None) -> User:
    """An account asked for by an email-code / magic-link sign-in (GoTrue's
    create_user): no password, the address unconfirmed until the code is used.
    Announced like a signup (referral code, welcome email) in the same
    transaction. A concurrent creation of the same address returns that one."""
    email = normalize_email(email)
    now = timezone.now()
    user = User(
        email=email,
        user_metadata=user_metadata or {},
        date_joined=now,
        email_confirmed_at=None,
    )
    user.set_unusable_password()
    try:
        with db_budget(), transaction.atomic():
            user.save(force_insert=True)
            user_signed_up.send(sender=User, user=user, referral_code=None, now=now)
    except IntegrityError:
        return User.objects.get(email__lower=email.lower())
    return user


def user_confirm_email(*, user: User, now: datetime | None = None) -> None:
    """The address proved itself (a code or link sent to it was used)."""
    user.email_confirmed_at = now or timezone.now()
    user.save(update_fields=["email_confirmed_at"])


def user_reset_password(*, user: User, new_password: str, request: HttpRequest | None = None) -> None:
    """A forgotten password replaced (a recovery code proved the address): every
    session of the user ends, as with any password change."""
    with password_hashing(request):
        user.set_password(new_password)  # hashed outside the transaction
    if user.email_confirmed_at is None:
        user.email_confirmed_at = timezone.now()
    with db_budget():
        user.save(update_fields=["password", "email_confirmed_at"])


def user_change_email(*, user: User, new_email: str, now: datetime | None = None) -> None:
    """Both addresses confirmed the change (accounts.flows.email_change_verify): the
    new one replaces the old, confirmed. Taken meanwhile: Conflict email_taken."""
    user.email = normalize_email(new_email)
    user.email_confirmed_at = now or timezone.now()
    try:
        with transaction.atomic():  # its own savepoint: a clash must not poison the caller's transaction
            user.save(update_fields=["email", "email_confirmed_at"])
    except IntegrityError as exc:
        raise _integrity_conflict(exc) from None


def user_set_initial_password(*, user: User, password: str, request: HttpRequest | None = None) -> None:
    """An admin-generated signup link's password (GoTrue's generate_link type=signup)."""
    password_validate(password=password, user=user)
    with password_hashing(request):
        user.set_password(password)
    with db_budget():
        user.save(update_fields=["password"])


# --- the admin API (service role) -------------------------------------------------


class UserNotFound(ApiError):
    status = 404
    code = "user_not_found"
    detail = "User not found"


class PhoneTaken(Conflict):
    code = "phone_taken"
    detail = "Phone number already registered by another user"


class UserIdTaken(Conflict):
    code = "user_id_taken"
    detail = "A user with this id already exists"


def _admin_conflict(exc: IntegrityError) -> Conflict:
    diag = getattr(exc.__cause__, "diag", None)
    constraint = getattr(diag, "constraint_name", None) or str(exc)
    if "pkey" in constraint or "auth_users.id" in constraint:
        return UserIdTaken()
    return _integrity_conflict(exc)


def _phone_free(*, phone: str | None, user_id: uuid.UUID) -> None:
    # No unique index on phone (imported users may share one): checked here,
    # as GoTrue's IsDuplicatedPhone does, before the write.
    if phone and User.objects.filter(phone=phone).exclude(pk=user_id).exists():
        raise PhoneTaken()


def _admin_user(user_id: uuid.UUID) -> User:
    user = User.objects.select_related(*user_related()).filter(pk=user_id).first()
    if user is None:
        raise UserNotFound()
    return user


def user_ban_enforce(*, user_id: uuid.UUID) -> None:
    """A ban is final like a logout, on every node: the sessions end (and their
    refresh tokens), and no cached state of the user is trusted any more (the
    revocation feed), in the banning transaction. The API keys stay, refused
    while the ban lasts (selectors.api_key_user_get). Called by the model's
    post_save hook (accounts.signals), whoever set the ban."""
    user_sessions_end(user_id=user_id, reason="banned")
    user_revoke(user_id=user_id)


def admin_user_create(
    *,
    email: str | None,
    phone: str | None = None,
    password: str | None = None,
    email_confirm: bool = False,
    user_metadata: dict | None = None,
    app_metadata: dict | None = None,
    banned_until: datetime | None = None,
    display_name: str = "",
    user_id: uuid.UUID | None = None,
    request: HttpRequest | None = None,
) -> User:
    """GoTrue's POST /admin/users. Without a password the account has none
    usable (GoTrue stores a random one: the same effect). email_confirm=False
    leaves the address unconfirmed. No signup event: no welcome email or
    referral intent (the mirror row and referral code follow the user's insert)."""
    user_id = user_id or uuid.uuid4()
    now = timezone.now()
    user = User(
        id=user_id,
        # A phone-only user gets the importer's undeliverable placeholder (GoTrue shows "").
        email=normalize_email(email) if email else f"{user_id}@{NO_EMAIL_DOMAIN}",
        phone=phone or None,
        display_name=display_name,
        user_metadata=metadata_merge({}, user_metadata or {}),
        app_metadata=metadata_merge({}, app_metadata or {}),
        email_confirmed_at=now if email_confirm and email else None,
        banned_until=banned_until,
        date_joined=now,
    )
    if password:
        password_validate(password=password, user=user)
        with password_hashing(request):  # no transaction open while hashing
            user.password = make_password(password)
    else:
        user.set_unusable_password()
    try:
        with db_budget(), transaction.atomic():
            _phone_free(phone=user.phone, user_id=user_id)
            user.save(force_insert=True)
    except IntegrityError as exc:
        raise _admin_conflict(exc) from None
    return user


def admin_user_update(
    *,
    user_id: uuid.UUID,
    email: str | _Unset = UNSET,
    phone: str | _Unset = UNSET,
    password: str | _Unset = UNSET,
    email_confirm: bool = False,
    user_metadata: dict | _Unset = UNSET,
    app_metadata: dict | _Unset = UNSET,
    banned_until: datetime | _Unset | None = UNSET,
    request: HttpRequest | None = None,
) -> tuple[User, list[str]]:
    """GoTrue's PUT /admin/users/{id}; returns the user and the fields changed.

    A new password ends every session of the user (the model's password_replaced,
    as on every path); a ban in the future ends them too (user_ban_enforce);
    metadata is merged (metadata_merge, GoTrue's rule)."""
    user = _admin_user(user_id)
    changed: list[str] = []
    if not isinstance(password, _Unset):
        password_validate(password=password, user=user)
        with password_hashing(request):
            user.set_password(password)
        changed.append("password")
    if not isinstance(email, _Unset) and normalize_email(email) != user.email:
        user.email = normalize_email(email)
        changed.append("email")
    if not isinstance(phone, _Unset) and phone != (user.phone or ""):
        user.phone = phone or None
        changed.append("phone")
    if email_confirm:
        user.email_confirmed_at = timezone.now()  # GoTrue's Confirm: now, even if confirmed before
        changed.append("email_confirmed_at")
    if not isinstance(user_metadata, _Unset):
        user.user_metadata = metadata_merge(user.user_metadata, user_metadata)
        changed.append("user_metadata")
    if not isinstance(app_metadata, _Unset):
        user.app_metadata = metadata_merge(user.app_metadata, app_metadata)
        changed.append("app_metadata")
    if not isinstance(banned_until, _Unset):
        user.banned_until = banned_until
        changed.append("banned_until")
    if not changed:
        return user, changed
    try:
        with db_budget(), transaction.atomic():
            if "phone" in changed:
                _phone_free(phone=user.phone, user_id=user.pk)
            # A ban ends the sessions in this transaction (post_save: user_ban_enforce).
            user.save(update_fields=changed)
    except IntegrityError as exc:
        raise _admin_conflict(exc) from None
    if "email" in changed:
        user.profile.refresh_from_db()
    return user, changed


def admin_user_delete(*, user_id: uuid.UUID, soft: bool = False) -> User:
    """GoTrue's DELETE /admin/users/{id}. Either way the sessions and API keys
    end first, recorded in the revocation feed (final on every node, like a
    logout). Hard: the row goes, and with it, by the existing cascades, the
    mirror row, referral code, intent and received record, queued emails (a
    referrer's records keep their row with referrer NULL). Soft (GoTrue's
    should_soft_delete): the row stays, inactive, its address, phone, password
    and metadata cleared, deleted_at set."""
    user = _admin_user(user_id)
    now = timezone.now()
    with db_budget(), transaction.atomic():
        user_sessions_end(user_id=user.pk, reason="user_deleted")
        api_keys_revoke(key_ids=list(ApiKey.objects.filter(user_id=user.pk).values_list("pk", flat=True)), now=now)
        if not soft:
            user.delete()  # post_delete: the mirror goes, the user is revoked on every node
            return user
        if user.deleted_at is None:
            user.deleted_at = now
            user.is_active = False  # post_save: the user is revoked on every node
            user.email = f"{user.pk}@{NO_EMAIL_DOMAIN}"
            user.username = None
            user.display_name = ""
            user.phone = None
            user.user_metadata = {}
            user.set_unusable_password()
            user.save(
                update_fields=[
                    "deleted_at",
                    "is_active",
                    "email",
                    "username",
                    "display_name",
                    "phone",
                    "user_metadata",
                    "password",
                ]
            )
    return user
