"""The Django admin's login form, with the second step of users who have a second factor."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth import authenticate


class AdminLoginForm(AdminAuthenticationForm):
    """Email, password and, for an account with a second factor, its code (an
    authenticator app's code or a recovery code): one form, checked in that
    order by accounts.backends.ThrottledModelBackend, which tells the operator
    when a code is needed or wrong."""

    otp_code = forms.CharField(
        label="Authenticator or recovery code",
        required=False,
        max_length=32,
        strip=True,
        help_text="Only if your account has a second factor.",
        widget=forms.TextInput(attrs={"autocomplete": "one-time-code", "inputmode": "text"}),
    )

    def clean(self) -> dict[str, Any]:
        # AuthenticationForm.clean, passing the code to the backend too.
        username = self.cleaned_data.get("username")
        password = self.cleaned_data.get("password")
        if username is not None and password:
            self.user_cache = authenticate(
                self.request, username=username, password=password, otp_code=self.cleaned_data.get("otp_code") or ""
            )
            if self.user_cache is None:
                raise self.get_invalid_login_error()
            self.confirm_login_allowed(self.user_cache)
        return self.cleaned_data
