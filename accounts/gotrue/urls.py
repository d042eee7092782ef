from django.urls import path, re_path

from accounts import jwks
from accounts.gotrue import admin_views, external_views, onetime_views, views
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
    # Everything else GoTrue serves (authorize, factors, sso...) is not
    # implemented: a 404 in GoTrue's error shape.
    re_path(r"^(?P<path>.*)$", gotrue_not_found, name="gotrue-not-found"),
]
