"""The probes and operator endpoints, included at the root by velro/urls.py
(before the admin, so /admin/slo/ is not taken for an admin page)."""

from django.urls import path

from monitoring import views

urlpatterns = [
    path("admin/slo/", views.slo_status, name="slo-status"),
    path("health", views.health, name="health"),
    path("__version", views.version, name="version"),
    path("metrics", views.metrics_view, name="metrics"),
    path("api/v1/auth/ping", views.PingView.as_view(), name="auth-ping"),
    path("api/v1/auth/middleware-status", views.MiddlewareStatusView.as_view(), name="middleware-status"),
]
