from django.urls import path

from accounts import jwks, passkey_views, recovery_views, totp_views, views

urlpatterns = [
    path("signup", views.SignupView.as_view(), name="auth-signup"),
    path("login", views.LoginView.as_view(), name="auth-login"),
    path("refresh", views.RefreshView.as_view(), name="auth-refresh"),
    path("logout", views.LogoutView.as_view(), name="auth-logout"),
    path("me", views.MeView.as_view(), name="auth-me"),
    path("password", views.PasswordChangeView.as_view(), name="auth-password"),
    path("password/forgot", views.PasswordForgotView.as_view(), name="auth-password-forgot"),
    path("password/reset", views.PasswordResetView.as_view(), name="auth-password-reset"),
    path("email-code", views.EmailCodeRequestView.as_view(), name="auth-email-code"),
    path("email-code/verify", views.EmailCodeVerifyView.as_view(), name="auth-email-code-verify"),
    path("email/confirm", views.EmailConfirmView.as_view(), name="auth-email-confirm"),
    path("email/confirm/resend", views.EmailConfirmResendView.as_view(), name="auth-email-confirm-resend"),
    path("email/change", views.EmailChangeView.as_view(), name="auth-email-change"),
    path("email/change/confirm", views.EmailChangeConfirmView.as_view(), name="auth-email-change-confirm"),
    path("api-keys", views.ApiKeyListView.as_view(), name="auth-api-keys"),
    path("api-keys/<uuid:key_id>", views.ApiKeyDetailView.as_view(), name="auth-api-key"),
    path("mfa/factors", totp_views.FactorsView.as_view(), name="auth-mfa-factors"),
    path("mfa/factors/<str:factor_id>", totp_views.FactorView.as_view(), name="auth-mfa-factor"),
    path("mfa/factors/<str:factor_id>/challenge", totp_views.FactorChallengeView.as_view(), name="auth-mfa-challenge"),
    path("mfa/factors/<str:factor_id>/verify", totp_views.FactorVerifyView.as_view(), name="auth-mfa-verify"),
    path("mfa/recovery-codes", recovery_views.RecoveryCodesView.as_view(), name="auth-mfa-recovery-codes"),
    path(
        "mfa/recovery-codes/verify",
        recovery_views.RecoveryCodeVerifyView.as_view(),
        name="auth-mfa-recovery-codes-verify",
    ),
    path(
        "passkeys/registration/options",
        passkey_views.PasskeyRegistrationOptionsView.as_view(),
        name="auth-passkey-registration-options",
    ),
    path(
        "passkeys/registration/verify",
        passkey_views.PasskeyRegistrationVerifyView.as_view(),
        name="auth-passkey-registration-verify",
    ),
    path(
        "passkeys/authentication/options",
        passkey_views.PasskeyAuthenticationOptionsView.as_view(),
        name="auth-passkey-authentication-options",
    ),
    path(
        "passkeys/authentication/verify",
        passkey_views.PasskeyAuthenticationVerifyView.as_view(),
        name="auth-passkey-authentication-verify",
    ),
    path("passkeys/mfa/options", passkey_views.PasskeyMfaOptionsView.as_view(), name="auth-passkey-mfa-options"),
    path("passkeys/mfa/verify", passkey_views.PasskeyMfaVerifyView.as_view(), name="auth-passkey-mfa-verify"),
    path("passkeys", passkey_views.PasskeyListView.as_view(), name="auth-passkeys"),
    path("passkeys/<uuid:passkey_id>", passkey_views.PasskeyDetailView.as_view(), name="auth-passkey"),
    path(".well-known/jwks.json", jwks.JwksView.as_view(), name="auth-jwks"),
]
