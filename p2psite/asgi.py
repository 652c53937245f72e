"""ASGI entry point: HTTP goes to Django, WebSockets to the signaling consumer."""
import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "p2psite.settings")
# Set Django up (and load the apps) before importing code that uses models.
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from p2psite import asgi_servers  # noqa: E402
from signaling.conf import options  # noqa: E402
from signaling.readiness import refuse_sockets_when_unready  # noqa: E402
from signaling.services import running_hub  # noqa: E402
from signaling.routing import websocket_urlpatterns  # noqa: E402

# Before the server builds any connection: no client is dropped without a
# word by the WebSocket layer of daphne or uvicorn (p2psite/asgi_servers.py).
asgi_servers.adapt(options())


async def lifespan(scope, receive, send):
    """Start the worker's hub with the server, where the server says when (uvicorn).

    Under daphne, which has no lifespan, the hub starts with the first socket.
    Either way it drains on SIGTERM, before the server's own shutdown.
    """
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await running_hub()
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        # A worker that drains, or cannot register peers now, answers new
        # sockets with 503, which nginx retries on another worker
        # (signaling/readiness.py).
        "websocket": refuse_sockets_when_unready(URLRouter(websocket_urlpatterns)),
        "lifespan": lifespan,
    }
)
