from django.urls import path

from accounts import jwks, oidc_views, views

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
    # Sign in with a provider, identities: accounts/oidc_views.py.
    path("oauth/providers", oidc_views.ProvidersView.as_view(), name="auth-oauth-providers"),
    path("oauth/authorize", oidc_views.OAuthAuthorizeView.as_view(), name="auth-oauth-authorize"),
    path("oauth/token", oidc_views.OAuthTokenView.as_view(), name="auth-oauth-token"),
    path("oauth/id-token", oidc_views.OAuthIdTokenView.as_view(), name="auth-oauth-id-token"),
    path("identities", oidc_views.IdentityListView.as_view(), name="auth-identities"),
    path("identities/link", oidc_views.IdentityLinkView.as_view(), name="auth-identity-link"),
    path("identities/<uuid:identity_id>", oidc_views.IdentityDetailView.as_view(), name="auth-identity"),
    path(".well-known/jwks.json", jwks.JwksView.as_view(), name="auth-jwks"),
]
