from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

handler400 = "velro.errors.json_400"
handler403 = "velro.errors.json_403"
handler404 = "velro.errors.json_404"
handler500 = "velro.errors.json_500"

# Apps are included by name: velro imports no app.
urlpatterns = [
    # health, __version, metrics, api/v1/auth/ping, api/v1/auth/middleware-status, admin/slo/
    path("", include("monitoring.urls")),
    path("admin/", admin.site.urls),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="docs"),
    path("api/v1/auth/", include("accounts.urls")),
    path("api/v1/referrals/", include("referrals.urls")),
    path("auth/v1/", include("accounts.gotrue.urls")),  # Supabase Auth (GoTrue) compatible
    path("passkeys/demo/", include("accounts.demo_urls")),  # PASSKEY_DEMO_PAGE
]
