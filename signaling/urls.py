"""The app's URLs, for a site's ``path("", include("signaling.urls"))``.

The PeerJS HTTP API under PEERJS["PATH"], and the worker's probes at the
site's root, where orchestrators and Prometheus look for them (also answered
by signaling.health.ProbeMiddleware, ahead of host checks; listed here so
that they resolve and reverse like every other URL). The cluster overview is
the admin's (signaling.admin).
"""
from django.urls import path

from signaling import health, views
from signaling.conf import options

base = options().path.lstrip("/")
prefix = f"{base}/" if base else ""

urlpatterns = [
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", health.metrics, name="metrics"),
    path(prefix, views.info, name="peerjs-info"),
    path(f"{prefix}<str:key>/id", views.new_id, name="peerjs-id"),
    path(f"{prefix}<str:key>/peers", views.peers, name="peerjs-peers"),
    path(f"{prefix}<str:key>/ice-servers", views.ice_servers, name="peerjs-ice-servers"),
]
