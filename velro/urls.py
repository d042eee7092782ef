from django.contrib import admin
from django.urls import include, path

from monitoring.views import health

handler400 = "velro.errors.json_400"
handler403 = "velro.errors.json_403"
handler404 = "velro.errors.json_404"
handler500 = "velro.errors.json_500"

urlpatterns = [
    path("admin/", admin.site.urls),
    path("health", health, name="health"),
    path("api/v1/auth/", include("accounts.urls")),
    path("api/v1/referrals/", include("referrals.urls")),
]
