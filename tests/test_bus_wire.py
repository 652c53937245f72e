"""signaling.bus.wire, Redis's protocol by hand: replies however the bytes arrive, in order, to whom they belong.

The connection is an asyncio protocol: these feed it bytes as the event loop
would, cut wherever TCP may cut them, with no server (a server could not
choose where its replies are split). The layer's tests (tests/test_layer.py)
run it against a real redis-server.
"""
import hiredis
import pytest

from signaling.bus import wire

pytestmark = pytest.mark.fast  # the first tier: no server (tests/test_consumer.py)


class Transport:
    """What the event loop gives a protocol: writes are kept, close reports the loss as asyncio does."""

    def __init__(self, protocol):
        self.protocol = protocol
        self.written = b""
        self.closing = False

    def write(self, data):
        self.written += data

    def is_closing(self):
        return self.closing

    def close(self):
        if not self.closing:
            self.closing = True
            self.protocol.connection_lost(None)

    def get_extra_info(self, name):
        return None


@pytest.fixture
def connection():
    connection = wire.Connection("127.0.0.1", 6379)
    connection.connection_made(Transport(connection))
    return connection


class Replies:
    """An on_replies callback that keeps what it was called with."""

    def __init__(self):
        self.calls = []

    def __call__(self, replies):
        self.calls.append(replies)


def feed(connection, data, cuts):
    """Hand ``data`` to the connection in pieces, cut at ``cuts``."""
    start = 0
    for cut in [*cuts, len(data)]:
        connection.data_received(data[start:cut])
        start = cut


def test_commands_are_written_as_arrays_of_bulk_strings(connection):
    connection.send([("SPUBLISH", "{inbox}", b"\x00\xff"), ("PING",)])
    assert connection.transport.written == b"*3\r\n$8\r\nSPUBLISH\r\n$7\r\n{inbox}\r\n$2\r\n\x00\xff\r\n*1\r\n$4\r\nPING\r\n"


REPLIES = b":1\r\n$12\r\nhello\r\nworld\r\n"  # a bulk string that holds a CRLF of its own


@pytest.mark.parametrize("cut", range(1, len(REPLIES)))
def test_replies_cut_anywhere_arrive_whole_and_once(connection, cut):
    replies = Replies()
    connection.request([("SPUBLISH", "a", "x"), ("GET", "b")], replies)
    feed(connection, REPLIES, [cut])
    assert replies.calls == [[1, b"hello\r\nworld"]]


def test_a_bulk_string_split_over_many_reads_is_one_reply(connection):
    payload = bytes(range(256)) * 64  # 16 KB, every byte value
    data = b"$%d\r\n%s\r\n" % (len(payload), payload)
    replies = Replies()
    connection.request([("GET", "big")], replies)
    feed(connection, data, range(1, len(data), 1000))
    assert replies.calls == [[payload]]


def test_an_error_reply_takes_its_place_among_the_replies(connection):
    replies = Replies()
    connection.request([("SPUBLISH", "a", "x"), ("SPUBLISH", "b", "y"), ("SPUBLISH", "c", "z")], replies)
    connection.data_received(b":1\r\n-MOVED 3999 127.0.0.1:6381\r\n:0\r\n")
    ((first, error, last),) = replies.calls
    assert (first, last) == (1, 0)
    assert isinstance(error, hiredis.ReplyError) and str(error) == "MOVED 3999 127.0.0.1:6381"
    assert not connection.closed  # an error reply is an answer, not a broken connection


def test_nested_arrays_and_nulls_keep_their_shape(connection):
    replies = Replies()
    connection.request([("CLUSTER", "SLOTS")], replies)
    feed(connection, b"*2\r\n*3\r\n:0\r\n:5460\r\n*2\r\n$9\r\n127.0.0.1\r\n:7000\r\n$-1\r\n", [7, 20, 41])
    assert replies.calls == [[[[0, 5460, [b"127.0.0.1", 7000]], None]]]


def test_overlapping_requests_are_answered_in_order(connection):
    first, second = Replies(), Replies()
    connection.request([("SPUBLISH", "a", "x"), ("SPUBLISH", "a", "y")], first)
    connection.request([("SPUBLISH", "b", "z")], second)
    connection.data_received(b":1\r\n")
    assert first.calls == second.calls == []  # half of the first request's answer
    connection.data_received(b":2\r\n:3\r\n")
    assert first.calls == [[1, 2]] and second.calls == [[3]]


def test_what_no_request_waits_for_is_a_push(connection):
    pushes = []
    connection.on_push = pushes.append
    connection.data_received(b"*3\r\n$8\r\nsmessage\r\n$7\r\n{inbox}\r\n$3\r\nabc\r\n*3\r\n$8\r\nsmess")
    assert pushes == [[b"smessage", b"{inbox}", b"abc"]]
    connection.data_received(b"age\r\n$7\r\n{inbox}\r\n$3\r\ndef\r\n")
    assert pushes[1] == [b"smessage", b"{inbox}", b"def"]


def test_bytes_that_are_not_resp_end_the_connection_and_fail_who_waits(connection):
    replies = Replies()
    connection.request([("PING",)], replies)
    connection.data_received(b"?garbage\r\n")
    assert connection.closed
    (reason,) = replies.calls
    assert isinstance(reason, ConnectionError) and "not RESP" in str(reason)


def test_a_lost_connection_fails_every_request_still_waiting(connection):
    first, second = Replies(), Replies()
    connection.request([("SPUBLISH", "a", "x")], first)
    connection.request([("SPUBLISH", "b", "y")], second)
    connection.transport.close()
    assert [type(call) for call in first.calls + second.calls] == [ConnectionError, ConnectionError]
    with pytest.raises(ConnectionError):
        connection.send([("PING",)])
