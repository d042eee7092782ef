"""Authentication on the GoTrue surface: the `apikey` header and bearer JWTs.

Tokens are GoTrue-shaped (accounts.gotrue.tokens) and checked against the
same session state as the native API (accounts.selectors.session_user_get:
cached, 0 SQL on a warm cache), so a logout on either surface ends them at
once. API keys (vk_live_...) are not accepted here: GoTrue has none.
"""

from __future__ import annotations

import hmac

import jwt
from django.conf import settings
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.permissions import BasePermission
from rest_framework.request import Request

from accounts.authentication import AuthContext
from accounts.gotrue.errors import GoTrueError, bad_jwt, no_authorization, session_not_found
from accounts.gotrue.tokens import InvalidGoTrueToken, gotrue_access_token_decode
from accounts.models import User
from accounts.selectors import session_user_get

ANON_ROLE = "anon"
# GoTrue's default GOTRUE_JWT_ADMIN_ROLES.
ADMIN_ROLES = ("service_role", "supabase_admin")


def _same(given: str, expected: str) -> bool:
    return bool(expected) and hmac.compare_digest(given.encode(), expected.encode())


def _legacy_key_role(key: str) -> str | None:
    """The role of a legacy JWT-form project key (HS256 with the project's JWT
    secret, as Supabase issued its anon and service_role keys); None for
    anything else. Only with SUPABASE_JWT_SECRET: no other key signed them."""
    if not settings.SUPABASE_JWT_SECRET or key.count(".") != 2:
        return None
    try:
        claims = jwt.decode(
            key,
            settings.SUPABASE_JWT_SECRET,
            algorithms=["HS256"],
            options={"verify_aud": False, "require": ["role"]},
        )
    except (jwt.PyJWTError, ValueError, TypeError):
        return None
    role = claims.get("role")
    return role if role == ANON_ROLE or role in ADMIN_ROLES else None


def key_role(key: str) -> str | None:
    """ "anon", an admin role, or None: what a project key (an `apikey` header
    or a bearer credential) stands for."""
    if not key:
        return None
    if _same(key, settings.SUPABASE_SERVICE_ROLE_KEY):
        return ADMIN_ROLES[0]
    if _same(key, settings.SUPABASE_ANON_KEY):
        return ANON_ROLE
    return _legacy_key_role(key)


def _apikey(request: Request) -> str:
    # `?apikey=` as Supabase's gateway also accepts.
    return request.META.get("HTTP_APIKEY") or request.query_params.get("apikey") or ""


def apikey_role(request: Request) -> str | None:
    """What the request's `apikey` stands for (key_role): e.g. server code
    calling /logout with a user's token and the service-role key."""
    return key_role(_apikey(request))


def apikey_check(request: Request) -> None:
    """With a project key configured (SUPABASE_ANON_KEY or
    SUPABASE_SERVICE_ROLE_KEY), the request must carry one of them as `apikey`."""
    if not (settings.SUPABASE_ANON_KEY or settings.SUPABASE_SERVICE_ROLE_KEY):
        return
    given = _apikey(request)
    if not given:
        raise GoTrueError(401, "no_authorization", "No API key found in request")
    if key_role(given) is None:
        raise GoTrueError(401, "no_authorization", "Invalid API key")


def service_role_check(request: Request) -> None:
    """The admin API's credential, as GoTrue's requireAdmin: the bearer token
    (or, without one, the `apikey`) must be the service-role key or a JWT-form
    key with an admin role. A user's token or the anon key: 403 not_admin."""
    parts = get_authorization_header(request).split()
    if parts and (len(parts) != 2 or parts[0].lower() != b"bearer"):
        raise no_authorization()
    credential = parts[1].decode("ascii", "replace") if parts else _apikey(request)
    if not credential:
        raise no_authorization()
    if key_role(credential) not in ADMIN_ROLES:
        raise GoTrueError(403, "not_admin", "User not allowed")


class IsServiceRole(BasePermission):
    """DRF permission for the admin API: service_role_check (raises GoTrue's errors)."""

    def has_permission(self, request: Request, view: object) -> bool:
        service_role_check(request)
        return True


def _public_reason(exc: Exception) -> str:
    """GoTrue's wording, without the JWT library's own messages (which name
    claims, algorithms and the library's internals to any caller)."""
    if "expired" in str(exc).lower():
        return "token has invalid claims: token is expired"
    return "token is malformed or its signature is invalid"


class GoTrueTokenAuthentication(BaseAuthentication):
    def authenticate(self, request: Request) -> tuple[User, AuthContext] | None:
        parts = get_authorization_header(request).split()
        if not parts:
            return None  # the permission answers 401 no_authorization
        if len(parts) != 2 or parts[0].lower() != b"bearer":
            raise no_authorization()
        try:
            claims = gotrue_access_token_decode(parts[1].decode("ascii"))
        except (InvalidGoTrueToken, UnicodeDecodeError) as exc:
            raise bad_jwt(_public_reason(exc)) from None
        user = session_user_get(session_id=claims.session_id, user_id=claims.user_id)
        if user is None:
            raise session_not_found()
        return user, AuthContext(user_id=user.pk, session_id=claims.session_id)

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="velro"'
