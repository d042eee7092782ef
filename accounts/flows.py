"""What an auth operation does, in order, for both API surfaces.

admission -> throttle -> service -> audit -> result. The native views
(accounts.views) and the GoTrue views (accounts.gotrue.views) call these and
differ only in their serializers and error mapping, so a rule added here holds
on both (and on the Django admin's sign-in, accounts.backends).

Admission (velro.admission): a login whose client has already gone, or that
waited longer than HASH_MAX_REQUEST_AGE_MS, is shed (503 `overloaded`) before
the rate limits and the user read; the verify itself then holds a
password-hashing slot (services.user_authenticate), checked again once the
slot is had. A shed login verifies nothing and writes nothing: no session for
a client that is not there to receive it.
"""

from __future__ import annotations

import uuid
from typing import Any

from django.http import HttpRequest

from accounts import selectors, services, throttles
from accounts.models import User
from accounts.services import IssuedTokens
from monitoring import audit
from monitoring.models import AuditEvent
from velro import admission
from velro.errors import InvalidCredentials, Overloaded, RefreshTokenReused
from velro.net import client_ip, user_agent


def _authenticate(
    *, request: HttpRequest, password: str, email: str | None, username: str | None, surface: str
) -> tuple[User, str]:
    """Admission, rate limits (per address; per account, owner-safe), one user
    read, one argon2id verify; a failure is audited. Returns (user, account key)."""
    admission.admit(request)
    ip = client_ip(request)
    identifier = email if email is not None else (username or "")
    throttles.login_ip_guard(ip=ip)
    user = selectors.user_for_login(email=email, username=username)
    account = throttles.login_account(user_id=user.pk if user else None, identifier=identifier)
    throttles.login_account_guard(
        ip=ip,
        account=account,
        known_source=lambda: user is not None and selectors.user_signed_in_from(user_id=user.pk, ip=ip),
    )
    try:
        return services.user_authenticate(user=user, password=password, request=request), account
    except InvalidCredentials as exc:
        banned = {"reason": "banned"} if isinstance(exc, services.UserBanned) else {}
        audit.record(AuditEvent.Kind.LOGIN_FAILURE, request, identifier=identifier, **banned, **_surface(surface))
        raise
    except Overloaded:
        # Shed before any verify: no guess was spent, so the failure counted
        # in advance by login_account_guard is handed back (else an overload
        # would lock owners out of their accounts).
        throttles.login_succeeded(ip=ip, account=account)
        raise


def _still_connected(*, request: HttpRequest, account: str) -> None:
    """After a right password: shed (Overloaded) if the client left during the
    verify, so no session is made for nobody; the failure counted in advance is
    handed back (the password was right)."""
    try:
        admission.ensure_client(request)
    except Overloaded:
        throttles.login_succeeded(ip=client_ip(request), account=account)
        raise


def password_login(
    *,
    request: HttpRequest,
    password: str,
    email: str | None = None,
    username: str | None = None,
    surface: str = "native",
) -> IssuedTokens:
    """Sign in with a password: the checks above, then (the client still
    connected) the session insert."""
    user, account = _authenticate(request=request, password=password, email=email, username=username, surface=surface)
    _still_connected(request=request, account=account)
    tokens = services.session_login(user=user, ip=client_ip(request), user_agent=user_agent(request))
    throttles.login_succeeded(ip=client_ip(request), account=account)
    audit.record(
        AuditEvent.Kind.LOGIN_SUCCESS, request, user_id=user.pk, session=tokens.session_id, **_surface(surface)
    )
    return tokens


def admin_login(*, request: HttpRequest, email: str, password: str) -> User:
    """The Django admin's sign-in (accounts.backends): the API's limits and
    audit trail, no API session. Raises InvalidCredentials / RateLimited /
    Overloaded."""
    user, account = _authenticate(request=request, password=password, email=email, username=None, surface="admin")
    _still_connected(request=request, account=account)
    throttles.login_succeeded(ip=client_ip(request), account=account)
    audit.record(AuditEvent.Kind.LOGIN_SUCCESS, request, user_id=user.pk, surface="admin")
    return user


def token_refresh(*, request: HttpRequest, refresh_token: str, surface: str = "native") -> IssuedTokens:
    """Rotate, audit (a replay is audited as reuse). The per-address limit is
    taken by the view before the body is parsed: throttles.refresh_guard."""
    tag = _surface(surface)
    try:
        tokens = services.session_refresh(refresh_token=refresh_token)
    except RefreshTokenReused as exc:
        audit.record(AuditEvent.Kind.REFRESH_REUSE, request, user_id=exc.user_id, **tag)
        raise
    audit.record(AuditEvent.Kind.REFRESH, request, user_id=tokens.user.pk, session=tokens.session_id, **tag)
    return tokens


def _surface(surface: str) -> dict[str, str]:
    # Native events carry no tag (as before the GoTrue surface existed).
    return {} if surface == "native" else {"surface": surface}


# --- the admin API (service role) ---------------------------------------------------------
#
# Every admin action is audited with the actor (the service role) and the
# target user; the detail names the fields changed, never their values.

SERVICE_ROLE = "service_role"


def _admin(surface: str) -> dict[str, str]:
    return {"actor": SERVICE_ROLE, **_surface(surface)}


def admin_user_create(*, request: HttpRequest, surface: str = "gotrue", **fields: Any) -> User:
    user = services.admin_user_create(request=request, **fields)
    detail = _admin(surface)
    audit.record(AuditEvent.Kind.ADMIN_USER_CREATED, request, user_id=user.pk, **detail)
    if user.banned_until is not None:
        audit.record(AuditEvent.Kind.ADMIN_USER_BANNED, request, user_id=user.pk, until=user.banned_until, **detail)
    return user


def admin_user_update(*, request: HttpRequest, user_id: uuid.UUID, surface: str = "gotrue", **fields: Any) -> User:
    user, changed = services.admin_user_update(request=request, user_id=user_id, **fields)
    detail = _admin(surface)
    if changed:
        audit.record(AuditEvent.Kind.ADMIN_USER_UPDATED, request, user_id=user.pk, fields=",".join(changed), **detail)
    if "banned_until" in changed:
        if user.is_banned():
            audit.record(AuditEvent.Kind.ADMIN_USER_BANNED, request, user_id=user.pk, until=user.banned_until, **detail)
        else:
            audit.record(AuditEvent.Kind.ADMIN_USER_UNBANNED, request, user_id=user.pk, **detail)
    return user


def admin_user_delete(*, request: HttpRequest, user_id: uuid.UUID, soft: bool, surface: str = "gotrue") -> None:
    services.admin_user_delete(user_id=user_id, soft=soft)
    audit.record(AuditEvent.Kind.ADMIN_USER_DELETED, request, user_id=user_id, soft=soft, **_admin(surface))
