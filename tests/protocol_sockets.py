"""The production worker's WebSocket protocol on a transport that records its writes, for the first tier.

``open_sockets()`` opens sockets on signaling.servers.uvicorn.WebSocketProtocol
as uvicorn would (the handshake fed to it, an ASGI app that accepts), with
no server and no network: tests/test_held_writes.py and
tests/test_frame_reading.py use it to see which bytes go in which write and
which reader takes which bytes.
"""
import asyncio
import contextlib

from uvicorn.config import Config
from uvicorn.server import ServerState

from signaling.servers import IMMEDIATE
from signaling.servers.uvicorn import WebSocketProtocol

HANDSHAKE = (
    b"GET /peerjs/myapp/peerjs?key=peerjs&id=a&token=t HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


class Transport(asyncio.Transport):
    """What the protocol writes, one entry per write."""

    def __init__(self):
        super().__init__()
        self.writes = []
        self.closing = False

    def write(self, data):
        if data:  # asyncio's transports ignore an empty write
            self.writes.append(bytes(data))

    def is_closing(self):
        return self.closing

    def close(self):
        self.closing = True

    def get_extra_info(self, name, default=None):
        return {"sockname": ("127.0.0.1", 8080), "peername": ("127.0.0.1", 50000)}.get(name, default)

    def pause_reading(self):
        pass

    def resume_reading(self):
        pass


def texts(data):
    """The text frames (unmasked, as a server sends them) in ``data``."""
    found, i = [], 0
    while i < len(data):
        assert data[i] == 0x81, data[i:]
        size, i = data[i + 1], i + 2
        if size == 126:
            size, i = int.from_bytes(data[i : i + 2], "big"), i + 2
        elif size == 127:
            size, i = int.from_bytes(data[i : i + 8], "big"), i + 8
        found.append(data[i : i + size].decode())
        i += size
    return found


@contextlib.asynccontextmanager
async def open_sockets():
    """Open sockets on WebSocketProtocol: (transport, send_text, the ASGI send) each, the 101 already written."""
    opened = []

    async def open_one(with_reader=False):
        loop = asyncio.get_running_loop()
        ready = loop.create_future()

        async def app(scope, receive, send):
            await receive()
            await send({"type": "websocket.accept"})
            immediate = scope["extensions"][IMMEDIATE]
            ready.set_result((immediate["send_text"], send, immediate["receive_text"]))
            while (await receive())["type"] != "websocket.disconnect":
                pass

        config = Config(app, ws_per_message_deflate=False, lifespan="off")
        config.load()
        protocol = WebSocketProtocol(config=config, server_state=ServerState(), app_state={})
        transport = Transport()
        protocol.connection_made(transport)
        protocol.data_received(HANDSHAKE)
        send_text, send, receive_text = await ready
        assert transport.writes.pop(0).startswith(b"HTTP/1.1 101 ")
        opened.append(protocol)
        if with_reader:
            return transport, send_text, send, receive_text, protocol
        return transport, send_text, send

    yield open_one
    for protocol in opened:
        protocol.connection_lost(None)
    await asyncio.sleep(0)
