"""The Django admin's sign-in, under the same limits and audit trail as the API's."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.backends import ModelBackend
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest

from accounts import flows
from accounts.models import User
from velro.errors import InvalidCredentials, RateLimited


class ThrottledModelBackend(ModelBackend):
    """ModelBackend, but every password check goes through flows.admin_login:
    rate limited per address and per account (owner-safe), timing-safe for
    unknown users, audited. A limit answers PermissionDenied, which stops
    django.contrib.auth.authenticate() from trying anything else. A sign-in
    shed by admission control (velro.errors.Overloaded: no hashing slot, or
    the client gone) is left to propagate: authenticate() does not catch it,
    and velro.errors.DatabaseUnavailableMiddleware answers 503 `overloaded` +
    Retry-After (a PermissionDenied would read as a wrong password)."""

    def authenticate(
        self, request: HttpRequest | None, username: str | None = None, password: str | None = None, **kwargs: Any
    ) -> User | None:
        email = username if username is not None else kwargs.get(User.USERNAME_FIELD)
        if email is None or password is None:
            return None
        if request is None:
            # No request (a script calling authenticate()): nothing to key limits on.
            return super().authenticate(request, username=email, password=password, **kwargs)
        try:
            user = flows.admin_login(request=request, email=email, password=password)
        except InvalidCredentials:
            return None
        except RateLimited:
            raise PermissionDenied("too many attempts") from None
        return user if self.user_can_authenticate(user) else None
