"""The Django admin's sign-in, under the same limits and audit trail as the API's."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.backends import ModelBackend
from django.core.exceptions import PermissionDenied, ValidationError
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
    Retry-After (a PermissionDenied would read as a wrong password).

    A user with a second factor (a verified TOTP factor or a passkey) also
    gives a code (`otp_code`, the admin login form's extra field: a TOTP
    code or a recovery code): without it, or with a wrong one, the sign-in
    stops with a django ValidationError, which the login form shows (a
    wrong code counts as a failed login against the account)."""

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
            user = flows.admin_login(request=request, email=email, password=password, code=kwargs.get("otp_code"))
        except InvalidCredentials:
            return None
        except (flows.AdminSecondFactorRequired, flows.AdminSecondFactorInvalid) as exc:
            raise ValidationError(exc.detail, code=exc.code) from None
        except RateLimited:
            raise PermissionDenied("too many attempts") from None
        return user if self.user_can_authenticate(user) else None
