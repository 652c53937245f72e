"""signaling.asgi.wrap, the one line of a site's asgi.py: what reaches the app, what reaches the site.

In-process (Channels' communicators): the routing is the app's, no server
adds to it. Served for real, by uvicorn in a site generated from scratch:
tests/browser/test_reusable_app_site.py.
"""
import json

import pytest
from asgiref.sync import sync_to_async
from channels.generic.websocket import WebsocketConsumer
from channels.routing import ProtocolTypeRouter, URLRouter
from channels.testing import ApplicationCommunicator, HttpCommunicator, WebsocketCommunicator
from django.core.asgi import get_asgi_application
from django.urls import path

import signaling.asgi
from signaling.hub import current_hub
from signaling.models import Worker

pytestmark = [pytest.mark.fast, pytest.mark.django_db(transaction=True)]

BASE = "/peerjs/myapp"
SOCKET = f"{BASE}/peerjs?key=peerjs&id=wrapped&token=t1"


class Echo(WebsocketConsumer):
    """A site's own consumer."""

    def receive(self, text_data=None, bytes_data=None):
        self.send(text_data=f"echo: {text_data}")


def site_with_sockets(lifespan=None):
    routes = {
        "http": get_asgi_application(),
        "websocket": URLRouter([path("ws/echo/", Echo.as_asgi())]),
    }
    if lifespan is not None:
        routes["lifespan"] = lifespan
    return ProtocolTypeRouter(routes)


async def opens(application, url):
    communicator = WebsocketCommunicator(application, url)
    connected, _ = await communicator.connect(timeout=5)
    return communicator, connected


async def test_the_peerjs_socket_is_the_app_s_and_the_site_keeps_its_own_sockets_and_pages():
    application = signaling.asgi.wrap(site_with_sockets())

    peer, connected = await opens(application, SOCKET)
    assert connected
    assert json.loads(await peer.receive_from(5)) == {"type": "OPEN"}
    await peer.disconnect()

    echo, connected = await opens(application, "/ws/echo/")
    assert connected
    await echo.send_to(text_data="hello")
    assert await echo.receive_from(5) == "echo: hello"
    await echo.disconnect()

    # Another socket path under PEERJS["PATH"] is the app's: refused (404 where the server can say so).
    _, connected = await opens(application, f"{BASE}/socket")
    assert not connected

    # HTTP is the site's: Django serves the app's API there through the site's URLconf.
    http = HttpCommunicator(application, "GET", f"{BASE}/", headers=[(b"host", b"localhost")])
    response = await http.get_response(timeout=5)
    assert response["status"] == 200


async def test_with_a_site_that_serves_no_sockets_every_socket_path_is_refused_by_the_app():
    """Django's own handler takes HTTP alone: a socket it were given would fail with a 500 and a traceback."""
    application = signaling.asgi.wrap(get_asgi_application())
    _, connected = await opens(application, "/ws/echo/")
    assert not connected
    peer, connected = await opens(application, SOCKET)
    assert connected
    await peer.disconnect()


async def test_the_worker_starts_before_the_site_s_own_lifespan():
    seen = {}

    async def site_lifespan(scope, receive, send):
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                hub = current_hub()
                seen["hub registered"] = hub is not None and await sync_to_async(
                    Worker.objects.filter(name=hub.name).exists
                )()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    communicator = ApplicationCommunicator(signaling.asgi.wrap(site_with_sockets(site_lifespan)), {"type": "lifespan"})
    await communicator.send_input({"type": "lifespan.startup"})
    assert await communicator.receive_output(10) == {"type": "lifespan.startup.complete"}
    assert seen == {"hub registered": True}
    await communicator.send_input({"type": "lifespan.shutdown"})
    assert await communicator.receive_output(5) == {"type": "lifespan.shutdown.complete"}


async def test_without_a_lifespan_of_the_site_s_the_app_answers_it():
    communicator = ApplicationCommunicator(signaling.asgi.wrap(get_asgi_application()), {"type": "lifespan"})
    await communicator.send_input({"type": "lifespan.startup"})
    assert await communicator.receive_output(10) == {"type": "lifespan.startup.complete"}
    hub = current_hub()
    assert hub is not None and await sync_to_async(Worker.objects.filter(name=hub.name).exists)()
    await communicator.send_input({"type": "lifespan.shutdown"})
    assert await communicator.receive_output(5) == {"type": "lifespan.shutdown.complete"}
