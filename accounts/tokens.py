"""Access tokens (JWT, PyJWT) and opaque refresh tokens."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from functools import cache

import jwt
from django.conf import settings
from django.utils.crypto import salted_hmac

from velro.localcache import LocalCache

ALGORITHM = "HS256"
ACCESS_TYPE = "access"
REQUIRED_CLAIMS = ["exp", "iat", "nbf", "iss", "aud", "sub", "sid", "typ"]


class InvalidAccessToken(Exception):
    pass


@dataclass(frozen=True)
class AccessClaims:
    user_id: uuid.UUID
    session_id: uuid.UUID
    expires_at: int


@cache
def derived_key(purpose: str) -> bytes:
    # Keys for separate purposes are derived from SECRET_KEY so one leaked
    # token type cannot forge another.
    return salted_hmac(f"velro.tokens.{purpose}", "key", secret=settings.SECRET_KEY, algorithm="sha256").digest()


def jwt_key() -> bytes:
    if settings.JWT_SECRET:
        return settings.JWT_SECRET.encode()
    return derived_key("jwt")


def access_token_encode(*, user_id: uuid.UUID, session_id: uuid.UUID, now: datetime) -> tuple[str, int]:
    """Return (token, expires_at unix seconds)."""
    issued = int(now.timestamp())
    expires_at = issued + settings.ACCESS_TOKEN_TTL_SECONDS
    claims = {
        "iss": settings.JWT_ISSUER,
        "aud": settings.JWT_AUDIENCE,
        "sub": str(user_id),
        "sid": str(session_id),
        "typ": ACCESS_TYPE,
        "iat": issued,
        "nbf": issued,
        "exp": expires_at,
    }
    return jwt.encode(claims, jwt_key(), algorithm=ALGORITHM), expires_at


def jwt_verify(token: str, *, key: bytes, audience: str, issuer: str, required: list[str]) -> dict:
    """Verify an HS256 JWT strictly; InvalidAccessToken for anything wrong with it.

    Shared by both surfaces (the native tokens here, GoTrue's in accounts.gotrue).
    """
    try:
        return jwt.decode(
            token,
            key,
            algorithms=[ALGORITHM],  # allowlist: never "none", never a key-confusion alg
            audience=audience,
            issuer=issuer,
            leeway=settings.JWT_LEEWAY_SECONDS,
            options={"require": required},
        )
    except (jwt.PyJWTError, ValueError, TypeError, AttributeError) as exc:
        raise InvalidAccessToken(str(exc)) from None


# Access tokens this process has verified: (token, key, audience, issuer) ->
# (claims, not before). A token is re-sent with every request of its 15
# minutes; its signature and claims cannot change, so only the time checks are
# repeated on a hit. Bounded; emptied when full.
_verified = LocalCache(max_entries=20_000)


def verified_clear() -> None:
    """Forget every verified token (tests)."""
    _verified.clear()


def access_token_decode(token: str) -> AccessClaims:
    key = jwt_key()
    cache_key = (token, key, settings.JWT_AUDIENCE, settings.JWT_ISSUER)
    hit = _verified.get(cache_key, settings.ACCESS_TOKEN_TTL_SECONDS)
    if hit is not None:
        claims, not_before = hit
        now, leeway = time.time(), settings.JWT_LEEWAY_SECONDS
        if not_before - leeway <= now < claims.expires_at + leeway:  # PyJWT's nbf and exp checks
            return claims
        _verified.pop(cache_key)
    verified = _access_claims(
        jwt_verify(token, key=key, audience=settings.JWT_AUDIENCE, issuer=settings.JWT_ISSUER, required=REQUIRED_CLAIMS)
    )
    _verified.set(cache_key, verified)
    return verified[0]


def _access_claims(claims: dict) -> tuple[AccessClaims, int]:
    if claims.get("typ") != ACCESS_TYPE:
        raise InvalidAccessToken("wrong token type")
    try:
        access = AccessClaims(
            user_id=uuid.UUID(str(claims["sub"])),
            session_id=uuid.UUID(str(claims["sid"])),
            expires_at=int(claims["exp"]),
        )
        return access, max(int(claims["nbf"]), int(claims["iat"]))
    except (ValueError, TypeError) as exc:
        raise InvalidAccessToken(str(exc)) from None


def refresh_token_new() -> str:
    """256 bits from the OS CSPRNG, URL-safe."""
    return secrets.token_urlsafe(32)


def refresh_token_successor(parent: str) -> str:
    """The one token that may follow `parent`.

    Deterministic, so a client that presents `parent` again within the grace
    window (two tabs refreshing at once) receives the same successor instead
    of a second, independent one. Unforgeable without the server key.
    """
    digest = hmac.new(derived_key("refresh-successor"), parent.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def refresh_token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
