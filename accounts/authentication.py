"""DRF authentication: `Authorization: Bearer <access JWT>`."""

from __future__ import annotations

from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.exceptions import AuthenticationFailed
from rest_framework.request import Request

from accounts.models import User
from accounts.selectors import session_user_get
from accounts.tokens import AccessClaims, InvalidAccessToken, access_token_decode


class AccessTokenAuthentication(BaseAuthentication):
    def authenticate(self, request: Request) -> tuple[User, AccessClaims] | None:
        parts = get_authorization_header(request).split()
        if not parts or parts[0].lower() != b"bearer":
            return None
        if len(parts) != 2:
            raise AuthenticationFailed("Malformed Authorization header")
        try:
            claims = access_token_decode(parts[1].decode("ascii"))
        except (UnicodeDecodeError, InvalidAccessToken):
            raise AuthenticationFailed("Invalid or expired access token") from None
        user = session_user_get(session_id=claims.session_id, user_id=claims.user_id)
        if user is None:
            raise AuthenticationFailed("Session has ended")
        return user, claims

    def authenticate_header(self, request: Request) -> str:
        # Present, so DRF answers 401 (not 403) to a missing or bad token.
        return 'Bearer realm="velro"'
