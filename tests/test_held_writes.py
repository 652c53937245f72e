"""signaling.servers.held_writes on the production worker's WebSocket protocol.

Within a ``with held_writes:`` block (a read of a socket, the hub's handling
of a batch from another worker) a socket's frames go out in one write when the block ends,
in order with anything uvicorn writes itself; past HOLD_AT_MOST they go at
once. The protocol runs here on a transport that records its writes: a real
server adds nothing to which bytes go in which write, and order across
workers is every cluster test's (tests/test_cluster.py).
"""
import pytest
from websockets.frames import Frame, Opcode

from signaling.hub import Hub
from signaling.servers import held_writes
from signaling.servers.uvicorn import HOLD_AT_MOST
from tests.protocol_sockets import open_sockets, texts

pytestmark = pytest.mark.fast  # the first tier: no server (tests/test_consumer.py)

@pytest.fixture
async def sockets():
    async with open_sockets() as open_one:
        yield open_one


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
