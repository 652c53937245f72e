from django.contrib import admin
from django.urls import include, path

from signaling import health

urlpatterns = [
    # Also answered by signaling.health.ProbeMiddleware, ahead of host checks;
    # listed here so that they resolve and reverse like every other URL.
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", health.metrics, name="metrics"),
    path("admin/", admin.site.urls),
    path("", include("signaling.urls")),
    path("", include("cuepages.urls")),
]
