"""Authentication on the GoTrue surface: the `apikey` header and bearer JWTs.

Tokens are GoTrue-shaped (accounts.gotrue.tokens) and checked against the
same session state as the native API (accounts.selectors.session_user_get:
cached, 0 SQL on a warm cache), so a logout on either surface ends them at
once. API keys (vk_live_...) are not accepted here: GoTrue has none.
"""

from __future__ import annotations

import hmac

from django.conf import settings
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.request import Request

from accounts.authentication import AuthContext
from accounts.gotrue.errors import GoTrueError, bad_jwt, no_authorization, session_not_found
from accounts.gotrue.tokens import InvalidGoTrueToken, gotrue_access_token_decode
from accounts.models import User
from accounts.selectors import session_user_get


def apikey_check(request: Request) -> None:
    """With SUPABASE_ANON_KEY set, the request must carry it (the `apikey`
    header, or `?apikey=` as Supabase's gateway also accepts)."""
    expected = settings.SUPABASE_ANON_KEY
    if not expected:
        return
    given = request.META.get("HTTP_APIKEY") or request.query_params.get("apikey") or ""
    if not given:
        raise GoTrueError(401, "no_authorization", "No API key found in request")
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise GoTrueError(401, "no_authorization", "Invalid API key")


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
