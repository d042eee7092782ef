from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

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
    path("api/v1/auth/ping", monitoring.PingView.as_view(), name="auth-ping"),
    path("api/v1/auth/middleware-status", monitoring.MiddlewareStatusView.as_view(), name="middleware-status"),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="docs"),
    path("api/v1/auth/", include("accounts.urls")),
    path("api/v1/referrals/", include("referrals.urls")),
    path("auth/v1/", include("accounts.gotrue.urls")),  # Supabase Auth (GoTrue) compatible
]
