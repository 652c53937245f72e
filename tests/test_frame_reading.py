"""The production worker reads a client's whole text frames itself, and leaves websockets everything else.

signaling.servers.uvicorn.WebSocketProtocol.take_frames: short, whole,
unfragmented text frames are read without websockets' parser; anything else
goes to websockets from where they ended, which answers it as ever. Each
test checks what the application and the client see, and which bytes each
reader took, on a transport that records what the protocol writes (as
tests/protocol_sockets.py). Every socket test runs through it on a real worker.
"""
from unittest import mock

import pytest
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.frames import Frame, Opcode

from tests.protocol_sockets import open_sockets

pytestmark = pytest.mark.fast  # the first tier: no server (tests/test_consumer.py)


def frame(text, opcode=Opcode.TEXT, fin=True, mask=True):
    data = text.encode() if isinstance(text, str) else text
    return Frame(opcode, data, fin=fin).serialize(mask=mask)


class Reader:
    """An open socket whose application takes each message in the read callback (as the consumer does)."""

    def __init__(self, transport, protocol):
        self.transport, self.protocol = transport, protocol
        self.taken = []
        self.accept = True

    def take(self, text):
        if self.accept:
            self.taken.append(text)
        return self.accept

    def read(self, data):
        """Feed ``data`` as one read; the bytes websockets was given, per call."""
        with mock.patch.object(WebSocketsSansIOProtocol, "data_received", autospec=True,
                               side_effect=WebSocketsSansIOProtocol.data_received) as parsed:
            self.protocol.data_received(data)
        return [call.args[1] for call in parsed.call_args_list]

    def close_code(self):
        """The code of the close frame the server wrote last."""
        last = self.transport.writes[-1]
        assert last[0] == 0x88, last
        return int.from_bytes(last[2:4], "big")


@pytest.fixture
async def reader():
    async with open_sockets() as open_one:
        transport, _send_text, _send, receive_text, protocol = await open_one(with_reader=True)
        reader = Reader(transport, protocol)
        receive_text(reader.take)
        yield reader


async def test_whole_text_frames_are_read_without_websockets_in_order(reader):
    long = "x" * 300  # a 16-bit length
    assert reader.read(frame("a") + frame(long) + frame("ü ok")) == []
    assert reader.taken == ["a", long, "ü ok"]


async def test_a_ping_between_them_goes_to_websockets_and_what_follows_keeps_its_order(reader):
    data = frame("a") + frame(b"p", Opcode.PING) + frame("b")
    assert reader.read(data) == [data[len(frame("a")):]]
    assert reader.taken == ["a", "b"]
    assert reader.transport.writes[-1][:1] == b"\x8a"  # the pong
    assert reader.read(frame("c")) == []  # websockets waits at a frame's start again
    assert reader.taken == ["a", "b", "c"]


async def test_a_frame_cut_by_the_read_is_websockets_until_it_ends(reader):
    data = frame("whole") + frame("cut in two")
    first, second = data[:-4], data[-4:]
    assert reader.read(first) == [first[len(frame("whole")):]]
    assert reader.read(second) == [second]  # websockets holds the frame's start
    assert reader.read(frame("next")) == []
    assert reader.taken == ["whole", "cut in two", "next"]


async def test_a_text_frame_inside_a_fragmented_message_is_websockets_protocol_error(reader):
    start = frame("frag", fin=False)
    assert reader.read(start) == [start]
    inside = frame("x")
    assert reader.read(inside) == [inside]
    assert reader.close_code() == 1002
    assert reader.taken == []


async def test_a_fragmented_message_then_whole_frames(reader):
    start, end = frame("frag", fin=False), frame("ment", Opcode.CONT)
    assert reader.read(start + end) == [start + end]
    assert reader.read(frame("whole")) == []
    assert reader.taken == ["fragment", "whole"]


@pytest.mark.parametrize("make, code", [
    (lambda: frame("not masked", mask=False), 1002),
    (lambda: frame(b"\xff\xfe not UTF-8"), 1007),
    (lambda: frame("y" * 2_000), 1009),  # over the limit (set to 1 000 bytes below)
], ids=["not masked", "not UTF-8", "too long"])
async def test_what_websockets_refuses_it_still_refuses(reader, make, code):
    reader.protocol.conn.max_size = 1_000
    bad = make()  # a masked frame's bytes differ each time: made here, not at collection
    assert reader.read(frame("before") + bad) == [bad]
    assert reader.taken == ["before"]
    assert reader.close_code() == code


async def test_a_64_bit_length_is_websockets(reader):
    big = frame("z" * 70_000)
    assert reader.read(frame("a") + big + frame("b"))[0][: len(big)] == big
    assert reader.taken == ["a", "z" * 70_000, "b"]


async def test_messages_the_application_leaves_to_its_queue_keep_their_order(reader):
    reader.accept = False  # its task is busy: the read callback declines
    reader.read(frame("1") + frame("2"))
    reader.accept = True
    reader.read(frame("3"))  # behind the two queued: not taken ahead of them
    queued = [reader.protocol.queue.get_nowait()["text"] for _ in range(3)]
    assert queued == ["1", "2", "3"] and reader.taken == []
