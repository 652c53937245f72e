"""A site made from scratch with the app's wheel, served by uvicorn: the real PeerJS client in Chromium and the site's own consumer.

The site follows README.md's "Add it to your Django site" (tests/reusable_site.py),
adds a consumer of its own that uses Channels groups on ``default``, and wraps
its ProtocolTypeRouter as the README says. Two workers share a private
redis-server: the peers are on different workers, and so are the members of
the site's group, so both the app's bus and channels-redis carry what they
exchange.
"""
import pytest
from websockets.sync.client import connect

from tests.browser.test_peerjs_client import START_PEER, wait_open
from tests.reusable_site import SITE, FreshSite, readme_commands
from tests.servers import BASE, ROOT

pytestmark = pytest.mark.browser

PEERJS_CLIENT = ROOT / "node_modules" / "peerjs" / "dist" / "peerjs.min.js"

# The site's own consumer: everyone in a room hears what anyone in it says.
ROOMS = '''
from channels.generic.websocket import AsyncWebsocketConsumer


class Room(AsyncWebsocketConsumer):
    async def connect(self):
        self.room = "room." + self.scope["url_route"]["kwargs"]["name"]
        await self.channel_layer.group_add(self.room, self.channel_name)
        await self.accept()

    async def disconnect(self, code):
        await self.channel_layer.group_discard(self.room, self.channel_name)

    async def receive(self, text_data=None, bytes_data=None):
        await self.channel_layer.group_send(self.room, {"type": "room.said", "text": text_data})

    async def room_said(self, event):
        await self.send(text_data=event["text"])
'''
WRAPPED = "signaling.asgi.wrap(get_asgi_application())"
# The site's router with the consumer, wrapped as the README says a site with consumers of its own does.
SITE_IMPORTS = """from channels.routing import ProtocolTypeRouter, URLRouter
from django.urls import path

from mysite.rooms import Room
"""
SITE_ROUTER = """signaling.asgi.wrap(ProtocolTypeRouter({
    "http": get_asgi_application(),
    "websocket": URLRouter([path("rooms/<name>/", Room.as_asgi())]),
}))"""


@pytest.fixture(scope="module")
def workers(tmp_path_factory, request, redis_server):
    """Two uvicorn workers of the generated site, as the README starts one, on one database and one Redis."""
    site = FreshSite(tmp_path_factory.mktemp("reusable-site"), request.config.cache.mkdir("reusable-app"))
    try:
        site.follow_readme()
        (site.site / SITE / "rooms.py").write_text(ROOMS)
        asgi = site.site / SITE / "asgi.py"
        text = asgi.read_text()
        assert text.count(WRAPPED) == 1 and text.count("import signaling.asgi\n") == 1, text
        asgi.write_text(text.replace("import signaling.asgi\n", "import signaling.asgi\n" + SITE_IMPORTS).replace(WRAPPED, SITE_ROUTER))
        install, migrate, serve = readme_commands()
        env = {"REDIS_URL": redis_server.url}
        site.run_readme_command(migrate, **env)
        yield [site.serve(serve, **env), site.serve(serve, **env)]
    finally:
        site.stop()


def load_client(machine, worker):
    page = machine.page
    page.goto(f"{worker.http}{BASE}/")
    page.add_script_tag(path=str(PEERJS_CLIENT))
    page.evaluate(START_PEER, [None, BASE, "peerjs"])
    return page


def test_two_peers_on_two_workers_exchange_data_while_the_site_s_group_consumer_works(workers, machines):
    first, second = workers
    with connect(f"{first.ws}/rooms/lobby/", open_timeout=10) as one, connect(f"{second.ws}/rooms/lobby/", open_timeout=10) as two:
        one.send("before the peers")
        assert two.recv(timeout=10) == "before the peers" and one.recv(timeout=10) == "before the peers"

        alice = load_client(machines("alice"), first)
        bob = load_client(machines("bob"), second)
        alice_id = wait_open(alice)
        wait_open(bob)
        bob.evaluate(
            """(dst) => {
              const conn = window.peer.connect(dst, {reliable: true});
              conn.on("open", () => conn.send("ping from bob"));
              conn.on("data", (data) => window.probe.received.push(data));
            }""",
            alice_id,
        )
        bob.wait_for_function("() => window.probe.received.length > 0")
        assert alice.evaluate("window.probe.received") == ["ping from bob"]
        assert bob.evaluate("window.probe.received") == ["pong: ping from bob"]

        two.send("beside the peers")
        assert one.recv(timeout=10) == "beside the peers" and two.recv(timeout=10) == "beside the peers"

    # A socket path under the PeerJS path that is not the socket is the app's: 404, not the site's router.
    with pytest.raises(Exception, match="404"):
        connect(f"{first.ws}{BASE}/rooms/lobby/", open_timeout=10)
