from django.urls import path, re_path

from accounts import jwks
from accounts.gotrue import (
    admin_mfa_views,
    admin_views,
    external_views,
    onetime_views,
    passkey_views,
    recovery_views,
    totp_views,
    views,
)
from accounts.gotrue.errors import gotrue_not_found

urlpatterns = [
    path("signup", views.SignupView.as_view(), name="gotrue-signup"),
    path("token", views.TokenView.as_view(), name="gotrue-token"),
    path("user", views.UserView.as_view(), name="gotrue-user"),
    path("logout", views.LogoutView.as_view(), name="gotrue-logout"),
    path("recover", onetime_views.RecoverView.as_view(), name="gotrue-recover"),
    path("otp", onetime_views.OtpView.as_view(), name="gotrue-otp"),
    path("magiclink", onetime_views.MagicLinkView.as_view(), name="gotrue-magiclink"),
    path("verify", onetime_views.VerifyView.as_view(), name="gotrue-verify"),
    path("resend", onetime_views.ResendView.as_view(), name="gotrue-resend"),
    path("reauthenticate", onetime_views.ReauthenticateView.as_view(), name="gotrue-reauthenticate"),
    path("invite", onetime_views.InviteView.as_view(), name="gotrue-invite"),
    path("admin/generate_link", onetime_views.GenerateLinkView.as_view(), name="gotrue-admin-generate-link"),
    path("settings", views.SettingsView.as_view(), name="gotrue-settings"),
    path("health", views.HealthView.as_view(), name="gotrue-health"),
    path(".well-known/jwks.json", jwks.GoTrueJwksView.as_view(), name="gotrue-jwks"),
    # The admin API (service role only): accounts/gotrue/admin_views.py.
    path("admin/users", admin_views.AdminUsersView.as_view(), name="gotrue-admin-users"),
    path("admin/audit", admin_views.AdminAuditView.as_view(), name="gotrue-admin-audit"),
    path("admin/users/<str:user_id>", admin_views.AdminUserView.as_view(), name="gotrue-admin-user"),
    # Sign in with a provider: accounts/gotrue/external_views.py.
    path("authorize", external_views.AuthorizeView.as_view(), name="gotrue-authorize"),
    path("callback", external_views.CallbackView.as_view(), name="gotrue-callback"),
    path("user/identities/authorize", external_views.IdentityAuthorizeView.as_view(), name="gotrue-identity-link"),
    path("user/identities/<str:identity_id>", external_views.IdentityView.as_view(), name="gotrue-identity"),
    path(
        "admin/users/<str:user_id>/factors", admin_mfa_views.AdminUserFactorsView.as_view(), name="gotrue-admin-factors"
    ),
    path(
        "admin/users/<str:user_id>/factors/<str:factor_id>",
        admin_mfa_views.AdminUserFactorView.as_view(),
        name="gotrue-admin-factor",
    ),
    path(
        "admin/users/<str:user_id>/passkeys",
        admin_mfa_views.AdminUserPasskeysView.as_view(),
        name="gotrue-admin-passkeys",
    ),
    path(
        "admin/users/<str:user_id>/passkeys/<str:passkey_id>",
        admin_mfa_views.AdminUserPasskeyView.as_view(),
        name="gotrue-admin-passkey",
    ),
    # Second factors (TOTP): accounts/gotrue/totp_views.py.
    path("factors", totp_views.FactorsView.as_view(), name="gotrue-factors"),
    path("factors/<str:factor_id>", totp_views.FactorView.as_view(), name="gotrue-factor"),
    path("factors/<str:factor_id>/challenge", totp_views.FactorChallengeView.as_view(), name="gotrue-factor-challenge"),
    path("factors/<str:factor_id>/verify", totp_views.FactorVerifyView.as_view(), name="gotrue-factor-verify"),
    # Recovery codes (beyond GoTrue): accounts/gotrue/recovery_views.py.
    path("mfa/recovery-codes", recovery_views.RecoveryCodesView.as_view(), name="gotrue-mfa-recovery-codes"),
    path(
        "mfa/recovery-codes/verify",
        recovery_views.RecoveryCodeVerifyView.as_view(),
        name="gotrue-mfa-recovery-codes-verify",
    ),
    # Passkeys (accounts/gotrue/passkey_views.py); mfa/*: a passkey as second factor (Velro's).
    path(
        "passkeys/registration/options",
        passkey_views.PasskeyRegistrationOptionsView.as_view(),
        name="gotrue-passkey-registration-options",
    ),
    path(
        "passkeys/registration/verify",
        passkey_views.PasskeyRegistrationVerifyView.as_view(),
        name="gotrue-passkey-registration-verify",
    ),
    path(
        "passkeys/authentication/options",
        passkey_views.PasskeyAuthenticationOptionsView.as_view(),
        name="gotrue-passkey-authentication-options",
    ),
    path(
        "passkeys/authentication/verify",
        passkey_views.PasskeyAuthenticationVerifyView.as_view(),
        name="gotrue-passkey-authentication-verify",
    ),
    path("passkeys/mfa/options", passkey_views.PasskeyMfaOptionsView.as_view(), name="gotrue-passkey-mfa-options"),
    path("passkeys/mfa/verify", passkey_views.PasskeyMfaVerifyView.as_view(), name="gotrue-passkey-mfa-verify"),
    path("passkeys", passkey_views.PasskeyListView.as_view(), name="gotrue-passkeys"),
    path("passkeys/<str:passkey_id>", passkey_views.PasskeyDetailView.as_view(), name="gotrue-passkey"),
    # Everything else GoTrue serves (authorize, sso...) is not
    # implemented: a 404 in GoTrue's error shape.
    re_path(r"^(?P<path>.*)$", gotrue_not_found, name="gotrue-not-found"),
]
