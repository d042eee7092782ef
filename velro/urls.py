from django.contrib import admin
from django.urls import include, path

from monitoring import views as monitoring

handler400 = "velro.errors.json_400"
handler403 = "velro.errors.json_403"
handler404 = "velro.errors.json_404"
handler500 = "velro.errors.json_500"

urlpatterns = [
    path("admin/slo/", monitoring.slo_status, name="slo-status"),
    path("admin/", admin.site.urls),
    path("health", monitoring.health, name="health"),
    path("__version", monitoring.version, name="version"),
    path("metrics", monitoring.metrics_view, name="metrics"),
    path("api/v1/auth/ping", monitoring.ping, name="auth-ping"),
    path("api/v1/auth/middleware-status", monitoring.middleware_status, name="middleware-status"),
    path("api/v1/auth/", include("accounts.urls")),
    path("api/v1/referrals/", include("referrals.urls")),
]
