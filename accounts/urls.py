from django.urls import path

from accounts import jwks, views

urlpatterns = [
    path("signup", views.SignupView.as_view(), name="auth-signup"),
    path("login", views.LoginView.as_view(), name="auth-login"),
    path("refresh", views.RefreshView.as_view(), name="auth-refresh"),
    path("logout", views.LogoutView.as_view(), name="auth-logout"),
    path("me", views.MeView.as_view(), name="auth-me"),
    path("password", views.PasswordChangeView.as_view(), name="auth-password"),
    path("api-keys", views.ApiKeyListView.as_view(), name="auth-api-keys"),
    path("api-keys/<uuid:key_id>", views.ApiKeyDetailView.as_view(), name="auth-api-key"),
    path(".well-known/jwks.json", jwks.JwksView.as_view(), name="auth-jwks"),
]
