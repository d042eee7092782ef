"""DRF authentication: `Authorization: Bearer <access JWT | API key>` or `X-API-Key`."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from django.utils import timezone
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.exceptions import AuthenticationFailed
from rest_framework.permissions import BasePermission
from rest_framework.request import Request

from accounts import touch
from accounts.apikeys import KEY_PREFIX, api_key_hash, api_key_looks_valid
from accounts.models import User
from accounts.selectors import api_key_user_get, session_user_get
from accounts.tokens import InvalidAccessToken, access_token_decode


@dataclass(frozen=True)
class AuthContext:
    """`request.auth`: how the caller proved who they are."""

    user_id: uuid.UUID
    session_id: uuid.UUID | None = None  # access token
    api_key_id: uuid.UUID | None = None  # API key


def _credential(request: Request) -> str | None:
    header_key = request.META.get("HTTP_X_API_KEY")
    if header_key:
        return header_key
    parts = get_authorization_header(request).split()
    if not parts or parts[0].lower() != b"bearer":
        return None
    if len(parts) != 2:
        raise AuthenticationFailed("Malformed Authorization header")
    try:
        return parts[1].decode("ascii")
    except UnicodeDecodeError:
        raise AuthenticationFailed("Malformed Authorization header") from None


class AccessTokenAuthentication(BaseAuthentication):
    def authenticate(self, request: Request) -> tuple[User, AuthContext] | None:
        credential = _credential(request)
        if credential is None:
            return None
        if credential.startswith(KEY_PREFIX):
            return self._api_key(credential)
        try:
            claims = access_token_decode(credential)
        except InvalidAccessToken:
            raise AuthenticationFailed("Invalid or expired access token") from None
        user = session_user_get(session_id=claims.session_id, user_id=claims.user_id)
        if user is None:
            raise AuthenticationFailed("Session has ended")
        return user, AuthContext(user_id=user.pk, session_id=claims.session_id)

    def _api_key(self, key: str) -> tuple[User, AuthContext]:
        found = api_key_user_get(key_hash=api_key_hash(key)) if api_key_looks_valid(key) else None
        if found is None:
            raise AuthenticationFailed("Invalid or revoked API key")
        user, key_id = found
        touch.api_key_used(key_id=key_id, when=timezone.now())
        return user, AuthContext(user_id=user.pk, api_key_id=key_id)

    def authenticate_header(self, request: Request) -> str:
        # Present, so DRF answers 401 (not 403) to a missing or bad token.
        return 'Bearer realm="velro"'


class HasSession(BasePermission):
    """Session operations (logout, password, key management) need an access
    token: an API key alone cannot end sessions or mint more keys."""

    message = "This operation needs a session access token, not an API key"

    def has_permission(self, request: Request, view: object) -> bool:
        return isinstance(request.auth, AuthContext) and request.auth.session_id is not None
