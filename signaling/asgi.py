"""The app's ASGI wiring: one line in a site's asgi.py.

    application = signaling.asgi.wrap(get_asgi_application())

(or around the site's own ProtocolTypeRouter). The application it returns

- routes WebSockets under PEERJS["PATH"] to the app: the PeerJS socket
  (``{PATH}/peerjs``) to its consumer, behind the readiness gate
  (signaling.readiness), any other path there to the app's 404. When the
  site's application serves no sockets (Django's own handler, or a router
  without "websocket"), every socket path is the app's, so that a wrong one
  is answered 404 rather than 500;
- runs the worker's lifespan, which starts its hub (under uvicorn; daphne has
  no lifespan, and the hub starts with the first socket), and then the
  site's own lifespan, if it has one;
- passes everything else (HTTP, the site's sockets) to the site's application.

Importable before Django is set up (a site's asgi.py imports it first): what
uses models is imported once the site's application exists.
"""
from channels.routing import ProtocolTypeRouter
from django.core.handlers.asgi import ASGIHandler


def wrap(site_application):
    """The site's ASGI application with the PeerServer's socket and lifespan (see the module)."""
    return Application(site_application)


def _serves(application, scope_type):
    """Whether ``application`` takes scopes of ``scope_type``: Django's handler takes HTTP alone, a router what it maps.

    Any other application is taken at its word that it does (ASGI has an
    application raise for a scope type it does not serve).
    """
    if isinstance(application, ASGIHandler):
        return scope_type == "http"
    if isinstance(application, ProtocolTypeRouter):
        return scope_type in application.application_mapping
    return True


async def start_worker():
    """Start this worker's hub (its services: beats, sweeps, the inbox between workers)."""
    from signaling.servers import raise_open_files_limit
    from signaling.services import running_hub

    raise_open_files_limit()
    await running_hub()


class Application:
    def __init__(self, site):
        from signaling.readiness import refuse_sockets_when_unready
        from signaling.routing import route

        self.site = site
        # A worker that drains, or cannot register peers now, answers new
        # sockets with 503, which nginx retries on another worker.
        self.sockets = refuse_sockets_when_unready(route)
        self.site_sockets = _serves(site, "websocket")
        self.site_lifespan = _serves(site, "lifespan")

    def owns(self, path):
        """Whether a WebSocket to ``path`` is the app's (the site's, if it serves sockets, are not)."""
        from signaling.conf import options

        if not self.site_sockets:
            return True
        base = options().path  # "" when mounted at the root
        return path.startswith(f"{base}/") if base else path == "/peerjs"

    async def __call__(self, scope, receive, send):
        if scope["type"] == "websocket" and self.owns(scope["path"]):
            socket = self.sockets(scope, receive, send)
            # This frame waits as long as the socket lives: it lets go of the
            # handshake's scope (headers and all), as the socket's consumer
            # does once the socket is open.
            del scope, receive, send
            return await socket
        if scope["type"] == "lifespan":
            return await self.lifespan(scope, receive, send)
        return await self.site(scope, receive, send)

    async def lifespan(self, scope, receive, send):
        if self.site_lifespan:
            # The worker starts first; the site's lifespan then runs as if alone.
            async def receive_after_start():
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await start_worker()
                return message

            return await self.site(scope, receive_after_start, send)
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await start_worker()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                # The hub drains on SIGTERM, before the server's own shutdown.
                await send({"type": "lifespan.shutdown.complete"})
                return
