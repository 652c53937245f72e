from django.urls import path

from signaling import views
from signaling.conf import options

base = options().path.lstrip("/")
prefix = f"{base}/" if base else ""

urlpatterns = [
    path(prefix, views.info, name="peerjs-info"),
    path(f"{prefix}<str:key>/id", views.new_id, name="peerjs-id"),
    path(f"{prefix}<str:key>/peers", views.peers, name="peerjs-peers"),
    path(f"{prefix}<str:key>/ice-servers", views.ice_servers, name="peerjs-ice-servers"),
]
