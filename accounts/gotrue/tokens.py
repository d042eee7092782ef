"""GoTrue-shaped access tokens: JWTs with Supabase's claims.

Signed like the native tokens by the active asymmetric key (ES256 by default,
`kid` in the header, accounts/signing.py), so services verify them from the
JWKS at /auth/v1/.well-known/jwks.json as they would a Supabase project's with
asymmetric keys. HS256 tokens signed with SUPABASE_JWT_SECRET (or, without it,
a key derived from SECRET_KEY for this purpose only) still verify while
JWT_LEGACY_HS256_VERIFY allows it. They carry the session id (`session_id`),
and are accepted on this surface only while that session is active, like the
native tokens.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from django.conf import settings

from accounts.models import NO_EMAIL_DOMAIN, User
from accounts.tokens import InvalidAccessToken, derived_key, jwt_sign, jwt_verify_cached

ROLE = "authenticated"
REQUIRED_CLAIMS = ["exp", "iat", "iss", "aud", "sub", "session_id"]


class InvalidGoTrueToken(Exception):
    pass


@dataclass(frozen=True)
class GoTrueClaims:
    user_id: uuid.UUID
    session_id: uuid.UUID


def gotrue_jwt_key() -> bytes:
    """This surface's legacy HS256 secret (SUPABASE_JWT_SECRET, else derived)."""
    if settings.SUPABASE_JWT_SECRET:
        return settings.SUPABASE_JWT_SECRET.encode()
    return derived_key("gotrue-jwt")


def app_metadata(user: User) -> dict:
    """GoTrue's app_metadata: provider/providers first, then what was imported."""
    return {"provider": "email", "providers": ["email"], **(user.app_metadata or {})}


def user_email(user: User) -> str:
    """The address GoTrue would show: "" for an imported user that had none."""
    return "" if user.email.endswith(f"@{NO_EMAIL_DOMAIN}") else user.email


def gotrue_access_token_encode(
    *,
    user: User,
    session_id: uuid.UUID,
    issued_at: int,
    expires_at: int,
    authenticated_at: datetime | None,
    aal: str = "aal1",
    amr: tuple[dict, ...] | list[dict] = (),
) -> str:
    claims = {
        "iss": settings.GOTRUE_ISSUER,
        "aud": settings.GOTRUE_JWT_AUDIENCE,
        "sub": str(user.pk),
        "exp": expires_at,
        "iat": issued_at,
        "email": user_email(user),
        "phone": user.phone or "",
        "app_metadata": app_metadata(user),
        "user_metadata": user.user_metadata or {},
        "role": ROLE,
        "aal": aal,
        # GoTrue lists the newest method first.
        "amr": list(reversed(amr))
        or [{"method": "password", "timestamp": int(authenticated_at.timestamp()) if authenticated_at else issued_at}],
        "session_id": str(session_id),
        "is_anonymous": bool(user.is_anonymous_user),
    }
    return jwt_sign(claims)


def _gotrue_claims(claims: dict) -> GoTrueClaims:
    return GoTrueClaims(user_id=uuid.UUID(str(claims["sub"])), session_id=uuid.UUID(str(claims["session_id"])))


def gotrue_access_token_decode(token: str) -> GoTrueClaims:
    # Verified once per process and token, like the native tokens (accounts.tokens).
    try:
        return jwt_verify_cached(
            token,
            legacy_key=gotrue_jwt_key(),
            audience=settings.GOTRUE_JWT_AUDIENCE,
            issuer=settings.GOTRUE_ISSUER,
            required=REQUIRED_CLAIMS,
            parse=_gotrue_claims,
        )
    except (InvalidAccessToken, ValueError, TypeError, AttributeError) as exc:
        raise InvalidGoTrueToken(str(exc)) from None
