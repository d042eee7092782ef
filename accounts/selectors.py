"""Reads for accounts, cached in Redis behind velro.cache.safe_cache.

What is cached, per id, with the cache generation it was read under:
- the user (safe fields only: never the password hash) with its mirror role;
- the session state (owner, expiry, revoked) that token authentication checks;
- the API key record by its keyed hash (never the key itself).

Every write path that changes one of these rows deletes its entry (services
and the users-sync hooks call the *_invalidate functions below), after commit
as well as at once. Revocations (logout, key revoke, deactivation...) do more
(accounts/revocations.py): a tombstone read in the same round trip as the
entry, and the PostgreSQL feed, make a cached "active" entry worthless, so a
reader that re-cached the old row between the delete and the commit cannot
resurrect it. A token-authenticated request on a warm cache runs no SQL.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Exists, OuterRef, QuerySet
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from accounts.models import ApiKey, MfaFactor, PublicUser, RevocationKind, Role, Session, User
from accounts.revocations import feed, l1_epoch, l1_epoch_bump, tombstone_key
from velro.cache import GENERATION_KEY, safe_cache
from velro.localcache import LocalCache
from velro.prepared import PreparedRead


def user_key(user_id: uuid.UUID | str) -> str:
    # v2: the snapshot carries the GoTrue fields (metadata, phone, timestamps).
    return f"user:v2:{user_id}"


def session_key(session_id: uuid.UUID | str) -> str:
    return f"session:v1:{session_id}"


def api_key_key(key_hash: str) -> str:
    return f"apikey:v1:{key_hash}"


def _fresh(entry: Any, generation: int) -> dict | None:
    return entry if isinstance(entry, dict) and entry.get("g") == generation else None


def _trusted(found: dict[str, Any], *subjects: tuple[str, str]) -> bool:
    """May a cached positive entry about these (kind, subject)s be used? Not
    when one of them has a tombstone, or the revocation feed says no."""
    if any(tombstone_key(kind, subject) in found for kind, subject in subjects):
        return False
    return feed.trusts_cached(*subjects)


def _tombstones(*subjects: tuple[str, str]) -> list[str]:
    return [tombstone_key(kind, subject) for kind, subject in subjects]


# --- invalidation ------------------------------------------------------------------


def cache_invalidate(keys: Iterable[str]) -> None:
    keys = list(keys)
    safe_cache.delete_many(keys)
    if connection.in_atomic_block:
        transaction.on_commit(lambda: safe_cache.delete_many(keys))


def user_cache_invalidate(*, user_id: uuid.UUID) -> None:
    cache_invalidate([user_key(user_id)])
    _l1_drop_all()  # the L1 is keyed by session: a user's change drops it whole (writes are rare)


def session_cache_invalidate(*, session_ids: Iterable[uuid.UUID]) -> None:
    cache_invalidate([session_key(sid) for sid in session_ids])
    _l1_drop_all()


# --- the L1: this process's verified sessions ---------------------------------------
#
# session id -> (session state, user snapshot), as last verified against Redis
# or PostgreSQL. A hit is used only while the machine's L1 epoch has not moved
# (any process of this machine that revokes or changes a user bumps it, and
# every process drops its L1 on seeing that), and while the revocation feed is
# fresh and knows no revocation of the session or its user (the same rule as a
# Redis entry): a revocation made on another machine ends it within the feed's
# bound, anything else changed there is at most AUTH_L1_TTL_SECONDS old. Off
# when the feed is off (nothing would bound it).

# ~1.4 KB an entry (measured with tracemalloc): at most ~14 MB a process;
# 10,000 distinct sessions within the TTL is 5,000 a second per process before a refill.
session_l1 = LocalCache(max_entries=10_000)


def _l1_enabled() -> bool:
    return settings.AUTH_L1_TTL_SECONDS > 0 and feed.enabled


def _l1_drop_all() -> None:
    """Every process of this machine, this one included, drops its L1 before its
    next use of it, and again after the caller's transaction commits."""
    l1_epoch_bump()


def api_key_cache_invalidate(*, key_hashes: Iterable[str]) -> None:
    cache_invalidate([api_key_key(key_hash) for key_hash in key_hashes])


# --- extra user fields (filled in by other apps) ------------------------------------------


@dataclass(frozen=True)
class UserField:
    """A field another app adds to the user body and the cached snapshot.

    `read(user)` gives the value from a user loaded with `related` (a
    select_related path from User, or None): no query of its own, so login,
    refresh and a cold /me keep their SQL budget.
    """

    name: str
    read: Callable[[User], Any]
    related: str | None = None


_user_fields: dict[str, UserField] = {}


def user_field_register(*, name: str, read: Callable[[User], Any], related: str | None = None) -> None:
    """Called from another app's AppConfig.ready() (e.g. referrals: "referral_code")."""
    if name in _CORE_ENTRY_KEYS:
        raise ValueError(f"{name!r} is a core user field")
    _user_fields[name] = UserField(name=name, read=read, related=related)
    for read_ in _prepared_user_reads:  # their select_related paths changed
        read_.reset()


def user_related(prefix: str = "") -> list[str]:
    """select_related paths for a user read (`prefix`: the path to the user, e.g. "session__user")."""
    paths = ["profile", *(field.related for field in _user_fields.values() if field.related)]
    return [f"{prefix}__{path}" if prefix else path for path in paths]


def user_field(user: User, name: str) -> Any:
    """An extra field's value, from a cached snapshot or the row read with user_related()."""
    if getattr(user, "is_cached_snapshot", False):
        return user.cached_fields.get(name)
    field = _user_fields.get(name)
    return field.read(user) if field is not None else None


# --- second factors on the user object ---------------------------------------------------


def has_mfa_factors(user_ref: str = "pk") -> Exists:
    """Does the user (`user_ref`, the path to its id) have any factor? For an
    annotation on the user read a request makes anyway (login, refresh, the
    cold token check): what spares users without factors a query of their own."""
    return Exists(MfaFactor.objects.filter(user_id=OuterRef(user_ref)))


def user_factors(*, user: User) -> list[MfaFactor]:
    """The user's factors, oldest first: none without a query when the user was
    read with has_mfa_factors() (or from a snapshot of such a read) and has none;
    else one query on the (user, status) index."""
    if getattr(user, "has_mfa_factors", None) is False:
        return []
    return list(MfaFactor.objects.filter(user_id=user.pk).order_by("created_at", "id"))


# --- user snapshots --------------------------------------------------------------


def _user_entry(user: User, generation: int) -> dict[str, Any]:
    profile = getattr(user, "profile", None)
    return {
        "g": generation,
        "id": str(user.pk),
        "email": user.email,
        "username": user.username,
        "display_name": user.display_name,
        "is_active": user.is_active,
        "is_staff": user.is_staff,
        "is_superuser": user.is_superuser,
        "date_joined": user.date_joined.isoformat(),
        "role": profile.role if profile else Role.VIEWER,
        # Read by the GoTrue surface (GET /auth/v1/user and its token claims).
        "updated_at": _iso(user.updated_at),
        "last_login": _iso(user.last_login),
        "email_confirmed_at": _iso(user.email_confirmed_at),
        "phone": user.phone,
        "user_metadata": user.user_metadata,
        "app_metadata": user.app_metadata,
        "is_anonymous_user": user.is_anonymous_user,
        "banned_until": _iso(user.banned_until),
        # Whether the GoTrue user object must list factors (None: not read; see user_factors).
        "has_mfa_factors": getattr(user, "has_mfa_factors", None),
        # The extra fields, flat (the snapshot's shape does not depend on who adds them).
        **{name: field.read(user) for name, field in _user_fields.items()},
    }


# The snapshot's own keys: an extra field may not take one of these names.
_CORE_ENTRY_KEYS = frozenset(
    (
        "g",
        "id",
        "email",
        "username",
        "display_name",
        "is_active",
        "is_staff",
        "is_superuser",
        "date_joined",
        "role",
        "updated_at",
        "last_login",
        "email_confirmed_at",
        "phone",
        "user_metadata",
        "app_metadata",
        "is_anonymous_user",
        "banned_until",
        "has_mfa_factors",
    )
)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _datetime(value: str | None) -> datetime | None:
    return parse_datetime(value) if value else None


def _user_from_entry(entry: dict[str, Any]) -> User:
    user = User(
        id=uuid.UUID(entry["id"]),
        email=entry["email"],
        username=entry["username"],
        display_name=entry["display_name"],
        is_active=entry["is_active"],
        is_staff=entry["is_staff"],
        is_superuser=entry["is_superuser"],
        date_joined=parse_datetime(entry["date_joined"]),
        updated_at=_datetime(entry["updated_at"]),
        last_login=_datetime(entry["last_login"]),
        email_confirmed_at=_datetime(entry["email_confirmed_at"]),
        phone=entry["phone"],
        user_metadata=entry["user_metadata"],
        app_metadata=entry["app_metadata"],
        is_anonymous_user=entry["is_anonymous_user"],
        # .get: entries cached before the admin API had no ban.
        banned_until=_datetime(entry.get("banned_until")),
        password="!",  # the hash is never cached; this snapshot cannot log in
    )
    user._state.adding = False
    user._state.db = "default"
    user.is_cached_snapshot = True
    user.profile = PublicUser(
        user=user, email=user.email, username=user.username, display_name=user.display_name, role=entry["role"]
    )
    user.cached_fields = {name: entry.get(name) for name in _user_fields}
    user.has_mfa_factors = entry.get("has_mfa_factors")
    return user


# --- token authentication ---------------------------------------------------------


def session_user_get(*, session_id: uuid.UUID, user_id: uuid.UUID, now: datetime | None = None) -> User | None:
    """The user behind an access token, or None when its session has ended.

    L1 hit (this process verified it within AUTH_L1_TTL_SECONDS): no round trip.
    Warm cache: one Redis round trip (session state, user, generation), no SQL.
    Cold: one SQL query, whose answer is cached.
    """
    now = now or timezone.now()
    subjects = ((RevocationKind.SESSION, str(session_id)), (RevocationKind.USER, str(user_id)))
    l1 = _l1_enabled()
    if l1:
        if l1_epoch().changed():  # some process of this machine revoked or changed a user
            session_l1.clear()
        hit = session_l1.get(str(session_id), settings.AUTH_L1_TTL_SECONDS)
        if hit is not None and _usable(hit[0], user_id, now) and feed.trusts_cached(*subjects):
            return None if _entry_banned(hit[1], now) else _user_from_entry(hit[1])
    skey, ukey = session_key(session_id), user_key(user_id)
    found = safe_cache.get_many([skey, ukey, *_tombstones(*subjects), GENERATION_KEY], counted=[skey, ukey])
    generation = safe_cache.generation(found)
    state, snapshot = _fresh(found.get(skey), generation), _fresh(found.get(ukey), generation)
    if state is not None:
        # "Ended" is final: trusted whatever else is known.
        if state["revoked"] or state["user"] != str(user_id) or state["exp"] <= now.timestamp():
            return None
        if snapshot is not None and (not snapshot["is_active"] or _entry_banned(snapshot, now)):
            return None
        if snapshot is not None and _trusted(found, *subjects):
            if l1:
                session_l1.set(str(session_id), (state, snapshot))
            return _user_from_entry(snapshot)

    session = (
        Session.objects.select_related(*user_related("user"))
        .annotate(user_has_mfa_factors=has_mfa_factors("user_id"))
        .filter(pk=session_id, user_id=user_id)
        .first()
    )
    if session is None:
        return None
    user = session.user
    user.has_mfa_factors = session.user_has_mfa_factors
    state = {
        "g": generation,
        "user": str(user.pk),
        "exp": session.expires_at.timestamp(),
        "revoked": session.revoked_at is not None,
    }
    entry = _user_entry(user, generation)
    safe_cache.set_many({skey: state, ukey: entry})
    if not (session.is_active(now) and user.is_active) or user.is_banned(now):
        return None
    if l1:
        session_l1.set(str(session_id), (state, entry))
    return user


def _entry_banned(entry: dict[str, Any], now: datetime) -> bool:
    """A ban ends the user's sessions when it is set; this refuses a session a
    login inserted while the ban was committing (its user read before the ban)."""
    until = entry.get("banned_until")
    return until is not None and parse_datetime(until) > now


def _usable(state: dict[str, Any], user_id: uuid.UUID, now: datetime) -> bool:
    """A verified session state still says yes (the L1 keeps only active ones; expiry moves on)."""
    return not state["revoked"] and state["user"] == str(user_id) and state["exp"] > now.timestamp()


# --- API keys -------------------------------------------------------------------------


def api_key_user_get(*, key_hash: str) -> tuple[User, uuid.UUID] | None:
    """(user, key id) for an active API key, or None. Warm cache: no SQL."""
    kkey = api_key_key(key_hash)
    subject = (RevocationKind.API_KEY, key_hash)
    found = safe_cache.get_many([kkey, *_tombstones(subject), GENERATION_KEY], counted=[kkey])
    generation = safe_cache.generation(found)
    record = _fresh(found.get(kkey), generation)
    if record is not None and not record["revoked"] and not _trusted(found, subject):
        record = None  # revoked somewhere since it was cached, perhaps: ask PostgreSQL
    if record is None:
        key = ApiKey.objects.filter(key_hash=key_hash).only("id", "user_id", "revoked_at").first()
        if key is None:
            return None  # unknown keys are not cached: nothing to fill the cache with
        record = {"g": generation, "id": str(key.pk), "user": str(key.user_id), "revoked": key.revoked_at is not None}
        safe_cache.set(kkey, record)
    if record["revoked"]:
        return None
    user = user_get(user_id=uuid.UUID(record["user"]))
    if user is None or not user.is_active or user.is_banned():
        return None
    return user, uuid.UUID(record["id"])


def user_get(*, user_id: uuid.UUID) -> User | None:
    """A user snapshot by id (cached)."""
    ukey = user_key(user_id)
    subject = (RevocationKind.USER, str(user_id))
    found = safe_cache.get_many([ukey, *_tombstones(subject), GENERATION_KEY], counted=[ukey])
    generation = safe_cache.generation(found)
    snapshot = _fresh(found.get(ukey), generation)
    if snapshot is not None and (not snapshot["is_active"] or _trusted(found, subject)):
        return _user_from_entry(snapshot)
    users = User.objects.select_related(*user_related()).annotate(has_mfa_factors=has_mfa_factors())
    user = users.filter(pk=user_id).first()
    if user is not None:
        safe_cache.set(ukey, _user_entry(user, generation))
    return user


def user_api_keys(*, user_id: uuid.UUID) -> list[ApiKey]:
    return list(ApiKey.objects.filter(user_id=user_id, revoked_at__isnull=True).order_by("-created_at"))


# --- login -------------------------------------------------------------------------------


def _user_for_login_query(field: str) -> Callable[..., QuerySet]:
    def build(*, identifier: str) -> QuerySet:
        # has_mfa_factors: an EXISTS in the same query, so a session body of a
        # user without factors needs no query to say so. Unique
        # (case-insensitively): LIMIT 1, without .first()'s ORDER BY.
        users = User.objects.select_related(*user_related()).annotate(has_mfa_factors=has_mfa_factors())
        return users.filter(**{f"{field}__lower": identifier})[:1]

    return build


# Compiled once (velro.prepared): a login pays for the query, not for building its SQL.
_login_by_email = PreparedRead(User, _user_for_login_query("email"), "identifier")
_login_by_username = PreparedRead(User, _user_for_login_query("username"), "identifier")
_prepared_user_reads = (_login_by_email, _login_by_username)


def user_for_login(*, email: str | None = None, username: str | None = None) -> User | None:
    """The account a login names: one indexed read (case-insensitive), never cached
    (the password hash is needed and is never cached)."""
    if email is not None:
        return _login_by_email.first(identifier=email.strip().lower())
    return _login_by_username.first(identifier=(username or "").strip().lower())


def user_signed_in_from(*, user_id: uuid.UUID, ip: str | None) -> bool:
    """Has this account signed in from this address before (a session row says so)?"""
    return ip is not None and Session.objects.filter(user_id=user_id, ip=ip).exists()


# --- the admin API -------------------------------------------------------------------


def users_page(*, page: int, per_page: int) -> tuple[list[User], int]:
    """One page of users, newest first (GoTrue's order), and the total: two
    queries whatever the page size (the index auth_users_joined_desc serves the order)."""
    offset = (page - 1) * per_page
    ordered = (
        User.objects.annotate(has_mfa_factors=has_mfa_factors())
        .prefetch_related("identities")
        .order_by("-date_joined", "-id")
    )
    users = list(ordered[offset : offset + per_page])
    return users, User.objects.count()


def user_admin_get(*, user_id: uuid.UUID) -> User | None:
    """A user as the admin API shows it: read from PostgreSQL, not the cache
    (an operator acting on a user sees its committed state)."""
    return User.objects.filter(pk=user_id).first()
