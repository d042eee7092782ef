"""Access tokens (JWT, PyJWT) and opaque refresh tokens."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
import uuid
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any, TypeVar

import jwt
from cryptography.fernet import Fernet, MultiFernet
from django.conf import settings
from django.utils.crypto import salted_hmac

from accounts import signing
from velro.localcache import LocalCache

# Tokens signed before the asymmetric keys (no kid) use this, with a shared
# secret; verified only while JWT_LEGACY_HS256_VERIFY allows it.
LEGACY_ALGORITHM = "HS256"
ALGORITHM = LEGACY_ALGORITHM  # the name HS256-only callers import
ACCESS_TYPE = "access"
REQUIRED_CLAIMS = ["exp", "iat", "nbf", "iss", "aud", "sub", "sid", "typ"]

T = TypeVar("T")


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


def fernet_keys(purpose: str, keys: list[str] | tuple[str, ...] = ()) -> list[Fernet]:
    """Fernets for data encrypted at rest (signing keys, TOTP secrets), the one
    that encrypts first: `keys` (Fernet keys: rotation) when given; else keys
    derived for `purpose` from SECRET_KEY and each SECRET_KEY_FALLBACKS secret
    (which still decrypt, so SECRET_KEY can rotate)."""
    if keys:
        return [Fernet(key.encode() if isinstance(key, str) else key) for key in keys]
    secrets_ = [settings.SECRET_KEY, *getattr(settings, "SECRET_KEY_FALLBACKS", [])]
    derived = (
        salted_hmac(f"velro.tokens.{purpose}", "key", secret=secret, algorithm="sha256").digest() for secret in secrets_
    )
    return [Fernet(base64.urlsafe_b64encode(key)) for key in derived]


def derived_fernet(purpose: str, keys: list[str] | tuple[str, ...] = ()) -> MultiFernet:
    """fernet_keys() as one MultiFernet: the first encrypts, all decrypt."""
    return MultiFernet(fernet_keys(purpose, keys))


def jwt_key() -> bytes:
    """The native surface's legacy HS256 secret (JWT_SECRET, else derived)."""
    if settings.JWT_SECRET:
        return settings.JWT_SECRET.encode()
    return derived_key("jwt")


def access_token_encode(
    *, user_id: uuid.UUID, session_id: uuid.UUID, now: datetime, aal: str = "aal1"
) -> tuple[str, int]:
    """Return (token, expires_at unix seconds). `aal` is informational: what a
    sensitive operation requires is read from the session (accounts.mfa)."""
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
        "aal": aal,
    }
    return jwt_sign(claims), expires_at


def jwt_sign(claims: dict) -> str:
    """Sign with the active key, its `kid` in the header (both surfaces)."""
    signer = signing.keys.signer()
    return jwt.encode(claims, signer.private_key, algorithm=signer.algorithm, headers={"kid": signer.kid})


@dataclass(frozen=True)
class VerificationKey:
    identity: Hashable  # what the verified-token cache keys on
    key: Any
    algorithm: str


def jwt_verification_key(*, algorithm: Any, kid: Any, legacy_key: bytes) -> VerificationKey:
    """The one key (and the one algorithm) a token whose header names
    `algorithm` and `kid` may be verified with.

    A token with a `kid` is verified only with that stored key and that key's
    own algorithm (an allowlist of one: never "none", and never HS256 with a
    public key, so no key confusion); the key must be active, standby or
    retired within the access-token lifetime (accounts.signing). An HS256
    token is verified with the surface's legacy secret while
    JWT_LEGACY_HS256_VERIFY allows it. Anything else is refused.
    """
    if algorithm == LEGACY_ALGORITHM:
        if not settings.JWT_LEGACY_HS256_VERIFY:
            raise InvalidAccessToken("HS256 tokens are no longer accepted")
        return VerificationKey(identity=(LEGACY_ALGORITHM, legacy_key), key=legacy_key, algorithm=LEGACY_ALGORITHM)
    if not isinstance(kid, str) or not kid:
        raise InvalidAccessToken("no key id")
    verifier = signing.keys.verifier(kid)
    if verifier is None:
        raise InvalidAccessToken("unknown or revoked key id")
    if algorithm != verifier.algorithm:
        raise InvalidAccessToken("algorithm not allowed for this key")
    return VerificationKey(identity=kid, key=verifier.public_key, algorithm=verifier.algorithm)


def jwt_verify(token: str, *, key: bytes, audience: str, issuer: str, required: list[str]) -> dict:
    """Verify an HS256 JWT with `key` strictly; InvalidAccessToken for anything wrong with it.

    For HS256 JWTs that are not access tokens (a legacy JWT-form API key);
    access tokens of both surfaces go through jwt_verify_cached.
    """
    hs256 = VerificationKey(identity=(LEGACY_ALGORITHM, key), key=key, algorithm=LEGACY_ALGORITHM)
    return jwt_decode_with(token, hs256, audience=audience, issuer=issuer, required=required)


def jwt_decode_with(token: str, key: VerificationKey, *, audience: str, issuer: str, required: list[str]) -> dict:
    try:
        return jwt.decode(
            token,
            key.key,
            algorithms=[key.algorithm],  # allowlist of one, the key's own
            audience=audience,
            issuer=issuer,
            leeway=settings.JWT_LEEWAY_SECONDS,
            options={"require": required},
        )
    except (jwt.PyJWTError, ValueError, TypeError, AttributeError) as exc:
        raise InvalidAccessToken(str(exc)) from None


# Access tokens this process has verified, both surfaces: (token, audience,
# issuer) -> (what the caller made of the claims, the header's alg and kid,
# the key's identity, not before, expires at). A token is re-sent with every
# request of its 15 minutes; its header, signature and claims cannot change,
# so on a hit only the key and the times are checked again: the remembered
# alg and kid are resolved in the process's key set (a dict lookup) on every
# request, so a revoked key, or HS256 turned off, stops its cached tokens too.
# Parsing the header again on each hit (PyJWT's get_unverified_header decodes
# all three segments, checking each character in Python) was a sixth of a
# token-authenticated request's CPU. Bounded; emptied when full.
_verified = LocalCache(max_entries=20_000)


def verified_clear() -> None:
    """Forget every verified token (tests)."""
    _verified.clear()


def jwt_verify_cached(
    token: str, *, legacy_key: bytes, audience: str, issuer: str, required: list[str], parse: Callable[[dict], T]
) -> T:
    """jwt_verify, then `parse(claims)` (which raises on claims it refuses),
    remembered for the token's lifetime in this process."""
    cache_key = (token, audience, issuer)
    hit = _verified.get(cache_key, settings.ACCESS_TOKEN_TTL_SECONDS)
    if hit is not None:
        value, (algorithm, kid), identity, not_before, expires_at = hit
        # Raises once the key may no longer verify.
        key = jwt_verification_key(algorithm=algorithm, kid=kid, legacy_key=legacy_key)
        now, leeway = time.time(), settings.JWT_LEEWAY_SECONDS
        if key.identity == identity and not_before - leeway <= now < expires_at + leeway:  # PyJWT's nbf/iat and exp
            return value
        _verified.pop(cache_key)
    try:
        header = jwt.get_unverified_header(token)
    except (jwt.PyJWTError, ValueError, TypeError, AttributeError) as exc:
        raise InvalidAccessToken(str(exc)) from None
    algorithm, kid = header.get("alg"), header.get("kid")
    key = jwt_verification_key(algorithm=algorithm, kid=kid, legacy_key=legacy_key)
    claims = jwt_decode_with(token, key, audience=audience, issuer=issuer, required=required)
    value = parse(claims)
    try:
        issued_at = int(claims["iat"])
        not_before, expires_at = max(int(claims.get("nbf", issued_at)), issued_at), int(claims["exp"])
    except (ValueError, TypeError) as exc:
        raise InvalidAccessToken(str(exc)) from None
    _verified.set(cache_key, (value, (algorithm, kid), key.identity, not_before, expires_at))
    return value


def access_token_decode(token: str) -> AccessClaims:
    return jwt_verify_cached(
        token,
        legacy_key=jwt_key(),
        audience=settings.JWT_AUDIENCE,
        issuer=settings.JWT_ISSUER,
        required=REQUIRED_CLAIMS,
        parse=_access_claims,
    )


def _access_claims(claims: dict) -> AccessClaims:
    if claims.get("typ") != ACCESS_TYPE:
        raise InvalidAccessToken("wrong token type")
    try:
        return AccessClaims(
            user_id=uuid.UUID(str(claims["sub"])),
            session_id=uuid.UUID(str(claims["sid"])),
            expires_at=int(claims["exp"]),
        )
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


def secret_digest(value: str) -> str:
    """How a random secret (a refresh token, a one-time link token, a flow
    state) is stored: its SHA-256, hex. Enough for values of 128+ random bits:
    nothing to guess, so no salt or stretching."""
    return hashlib.sha256(value.encode()).hexdigest()


def refresh_token_hash(token: str) -> str:
    return secret_digest(token)
