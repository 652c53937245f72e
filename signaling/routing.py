import re

from django.urls import re_path

from signaling.conf import options
from signaling.consumers import PeerConsumer

# The PeerJS client connects to ``{path}/peerjs?key=..&id=..&token=..``.
websocket_urlpatterns = [
    re_path(rf"^{re.escape(options().path.lstrip('/'))}/?peerjs$", PeerConsumer.as_asgi()),
]
