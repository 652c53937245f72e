"""signaling.servers.held_writes on the production worker's WebSocket protocol.

Within a ``with held_writes:`` block (a read of a socket, the hub's handling
of a batch from another worker) a socket's frames go out in one write when the block ends,
in order with anything uvicorn writes itself; past HOLD_AT_MOST they go at
once. The protocol runs here on a transport that records its writes: a real
server adds nothing to which bytes go in which write, and order across
workers is every cluster test's (tests/test_cluster.py).
"""
import asyncio

import pytest
from uvicorn.config import Config
from uvicorn.server import ServerState
from websockets.frames import Frame, Opcode

from signaling.hub import Hub
from signaling.servers import IMMEDIATE, held_writes
from signaling.servers.uvicorn import HOLD_AT_MOST, WebSocketProtocol

pytestmark = pytest.mark.fast  # the first tier: no server (tests/test_consumer.py)

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


@pytest.fixture
async def sockets():
    """Open sockets on WebSocketProtocol: (transport, send_text, the ASGI send) each, the 101 already written."""
    opened, tasks = [], []

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


async def test_a_sockets_frames_within_a_block_go_out_in_one_write_in_order(sockets):
    transport, send_text, _ = await sockets()
    with held_writes:
        assert all(send_text(f"frame {n}") for n in range(5))
        assert transport.writes == []  # held until the block ends
    assert [texts(w) for w in transport.writes] == [[f"frame {n}" for n in range(5)]]
    # Outside a block, each frame at once, as before.
    transport.writes.clear()
    assert send_text("a") and send_text("b")
    assert [texts(w) for w in transport.writes] == [["a"], ["b"]]


async def test_each_socket_gets_one_write_and_only_the_outermost_block_flushes(sockets):
    (one, send_one, _), (two, send_two, _) = await sockets(), await sockets()
    with held_writes:
        send_one("1a")
        with held_writes:
            send_two("2a")
            send_one("1b")
        assert one.writes == two.writes == []
        send_two("2b")
    assert [texts(w) for w in one.writes] == [["1a", "1b"]]
    assert [texts(w) for w in two.writes] == [["2a", "2b"]]


async def test_uvicorns_own_writes_in_a_block_take_the_held_frames_along_first(sockets):
    transport, send_text, send = await sockets()
    with held_writes:
        send_text("held")
        await send({"type": "websocket.send", "text": "uvicorn's"})
        send_text("after")
    assert [texts(w) for w in transport.writes] == [["held", "uvicorn's"], ["after"]]


async def test_frames_past_the_cap_are_written_within_the_block(sockets):
    # So that the transport's flow control, and the app's outbox behind it,
    # see a client that does not read as they did before.
    transport, send_text, _ = await sockets()
    frame = "x" * (HOLD_AT_MOST // 4)
    with held_writes:
        for _ in range(4):
            send_text(frame)
        assert [len(texts(w)) for w in transport.writes] == [4]
        send_text("next")
    assert [len(texts(w)) for w in transport.writes] == [4, 1]


async def test_a_socket_closed_before_the_block_ends_writes_nothing_more(sockets):
    transport, send_text, _ = await sockets()
    with held_writes:
        send_text("too late")
        transport.close()
    assert transport.writes == []


async def test_what_the_frames_of_one_read_send_a_socket_goes_out_in_one_write(sockets):
    # A sender's frames arrive several to a read; relayed to a peer on the
    # same worker, they reach it together (the app's receive_text callback
    # runs within the read).
    *_, receive_text, sender = await sockets(with_reader=True)
    receiver, send_to_receiver, _ = await sockets()
    receive_text(send_to_receiver)
    read = b"".join(Frame(Opcode.TEXT, f"frame {n}".encode()).serialize(mask=True) for n in range(3))
    sender.data_received(read)
    assert [texts(w) for w in receiver.writes] == [["frame 0", "frame 1", "frame 2"]]


async def test_the_hub_holds_a_batch_from_another_worker_until_it_has_handled_all_of_it():
    class Connection:
        def __init__(self):
            self.delivered = []

        def deliver(self, frame, src, kind):
            self.delivered.append((frame, held_writes.flushes is not None))

    hub, connection = Hub(), Connection()
    hub.local["peerjs", "b"] = connection
    relay = {"type": "peerjs.relay", "key": "peerjs", "src": "a", "dst": "b", "kind": "CANDIDATE", "hops": 1}
    hub.handle([{**relay, "frame": "1"}, {**relay, "frame": "2"}])
    assert connection.delivered == [("1", True), ("2", True)]
    assert held_writes.flushes is None
