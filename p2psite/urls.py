from django.contrib import admin
from django.urls import include, path

from signaling import health, overview

urlpatterns = [
    # Also answered by signaling.health.ProbeMiddleware, ahead of host checks;
    # listed here so that they resolve and reverse like every other URL.
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", health.metrics, name="metrics"),
    # The cluster overview, in the admin's look; before admin.site.urls, whose
    # catch-all answers every other path under admin/.
    path("admin/overview/", overview.page_view, name="signaling-overview"),
    path("admin/overview/data/", overview.data_view, name="signaling-overview-data"),
    path("admin/", admin.site.urls),
    path("", include("signaling.urls")),
    path("", include("cuepages.urls")),
]
