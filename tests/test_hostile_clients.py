"""Hostile clients: what one client can do must not hurt anyone else (issue 12).

Real production workers (uvicorn through deploy/worker-entrypoint.sh) unless a
test says otherwise, real sockets, and raw TCP where a WebSocket library
would refuse to misbehave (half a frame, a client that never reads).
"""
import asyncio
import base64
import collections
import contextlib
import json
import os
import socket
import struct
import urllib.request
from pathlib import Path

import pytest

from tests.client import connect, roundtrip, socket_url, uid
from tests.servers import BASE, wait_until
from tests.test_cluster import Cluster

pytestmark = pytest.mark.db


class RawSocket:
    """A WebSocket client written by hand: it sends what it likes and reads only when told."""

    def __init__(self, reader, writer):
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, worker, peer_id, token="t", read_open=True, receive_buffer=None):
        sock = socket.socket()
        if receive_buffer is not None:  # before connecting: the window it offers the server
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", worker.port))
        reader, writer = await asyncio.open_connection(sock=sock)
        path = socket_url(worker, peer_id, token).split(str(worker.port), 1)[1]
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{worker.port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert b" 101 " in head.split(b"\r\n", 1)[0], head
        raw = cls(reader, writer)
        if read_open:
            assert json.loads(await raw.frame())["type"] == "OPEN"
        return raw

    async def frame(self, timeout=10):
        """The next frame's payload (server frames are not masked); raises EOFError at the end."""
        first, second = await asyncio.wait_for(self.reader.readexactly(2), timeout)
        length = second & 0x7F
        if length == 126:
            length = struct.unpack("!H", await self.reader.readexactly(2))[0]
        elif length == 127:
            length = struct.unpack("!Q", await self.reader.readexactly(8))[0]
        payload = await self.reader.readexactly(length)
        if first & 0x0F == 0x8:  # close
            raise EOFError(struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None)
        return payload

    async def close_code(self, timeout=10):
        """Read until the server's close frame; its code."""
        while True:
            try:
                await self.frame(timeout)
            except EOFError as closed:
                return closed.args[0]

    def start_message(self, announced, sent, mask=None):
        """A masked text frame that announces ``announced`` bytes; ``sent`` of them follow.

        A random mask makes the payload random bytes; a zero mask keeps it
        valid UTF-8 (daphne checks a text frame's UTF-8 as it arrives).
        """
        mask = os.urandom(4) if mask is None else mask
        self.writer.write(bytes([0x81, 0x80 | 127]) + struct.pack("!Q", announced) + mask + b"x" * sent)

    def send_text(self, text):
        """A whole masked text frame; the mask is zero, so the payload goes as it is."""
        data = text.encode()
        if len(data) < 126:
            length = bytes([0x80 | len(data)])
        else:
            length = bytes([0x80 | 126]) + struct.pack("!H", len(data))
        self.writer.write(b"\x81" + length + b"\0\0\0\0" + data)

    async def closed_by_server(self, timeout):
        """True once the server has closed the TCP connection (EOF or reset); reads and discards until then."""
        try:
            while await asyncio.wait_for(self.reader.read(65536), timeout):
                pass
        except ConnectionError:
            pass
        return True

    def close(self):
        self.writer.close()


def scrape(worker):
    with urllib.request.urlopen(f"{worker.http}/metrics", timeout=10) as response:
        return response.read().decode()


def counter(text, name):
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} is not in the metrics")


@pytest.fixture
def production(make_server):
    return make_server(server="uvicorn")


# --- what one socket can make a worker hold -------------------------------------------


async def test_a_message_over_the_cap_is_refused_at_its_header(production):
    """The production worker closes with 1009 on a frame that announces more than
    PEERJS_MAX_FRAME_BYTES, before it has buffered it: the client sent 1 KiB of 15 MB."""
    raw = await RawSocket.open(production, uid())
    raw.start_message(15 * 1024 * 1024, 1024)
    assert await raw.close_code() == 1009
    raw.close()
    await roundtrip(await connect(production), await connect(production))


@pytest.mark.parametrize("server", ["uvicorn", "daphne"])
async def test_an_unfinished_message_is_bounded_by_the_alive_timeout_and_its_id_comes_free(make_server, server):
    """A frame header announces 100 KB (under the cap), 10 KB follow, then nothing:
    the frame never completes, so the socket shows no sign of life. It is closed
    within the alive timeout (4101), the TCP connection goes, and its id is free."""
    alive = 1.0
    worker = make_server(server=server, env={"PEERJS_ALIVE_TIMEOUT": str(int(alive * 1000))})
    peer_id = uid("unfinished")
    raw = await RawSocket.open(worker, peer_id)
    raw.start_message(100_000, 10_000, mask=b"\0\0\0\0")
    await raw.writer.drain()
    started = asyncio.get_running_loop().time()
    assert await raw.close_code(timeout=alive + 5) == 4101  # ours on both servers (no 4000+ mapping)
    assert await raw.closed_by_server(timeout=15)
    assert asyncio.get_running_loop().time() - started < alive + 15
    raw.close()
    # Its id is free, for anyone, and the worker serves others as ever.
    stranger = await connect(worker, peer_id=peer_id, token="someone-else")
    await roundtrip(stranger, await connect(worker))
    log = worker.read_log()
    assert "Traceback" not in log and "Unexpected ASGI message" not in log, log


async def test_a_socket_closed_for_flooding_that_keeps_sending_hurts_nobody(production_flood):
    """After its close for flooding (1008), a raw client keeps sending frames: the
    worker logs no traceback and writes nothing to the closed socket, and the
    other peers on that worker relay as ever."""
    worker = production_flood
    a, b = await connect(worker), await connect(worker)
    raw = await RawSocket.open(worker, uid("flooder"))
    heartbeat = json.dumps({"type": "HEARTBEAT"})
    frames, sending = [], True

    async def read_until_close():
        try:
            while True:
                frames.append(json.loads(await raw.frame(timeout=15)))
        except EOFError as closed:
            return closed.args[0]

    async def flood():
        # Before the close and long after it; the server may cut TCP meanwhile.
        with contextlib.suppress(ConnectionError):
            while sending:
                for _ in range(50):
                    raw.send_text(heartbeat)
                await raw.writer.drain()
                await asyncio.sleep(0.001)
            for _ in range(200):
                raw.send_text(json.dumps({"type": "CANDIDATE", "dst": a.peer_id, "payload": "after the close"}))
                await raw.writer.drain()

    flooding = asyncio.create_task(flood())
    code = await read_until_close()
    sending = False
    await asyncio.wait_for(flooding, 15)
    assert code == 1008
    assert frames == [{"type": "ERROR", "payload": {"msg": "Too many messages: slow down"}}]
    raw.close()
    # Others on the worker relay as ever; nothing the flooder sent reached a.
    await roundtrip(a, b)
    await roundtrip(b, a)
    wait_until(lambda: counter(scrape(worker), "peerjs_floods_total") == 1, 10, "the flood to be counted")
    log = worker.read_log()
    assert "Traceback" not in log and "Unexpected ASGI message" not in log, log


@pytest.fixture
def production_flood(make_server):
    return make_server(server="uvicorn", env={
        "PEERJS_FLOOD_LIMIT": "50", "PEERJS_FLOOD_BURST": "20", "PEERJS_FLOOD_CUTOFF": "300",
    })


async def test_payloads_nested_deeper_than_any_parser_follows_get_an_error_and_every_socket_cleans_up(make_server):
    worker = make_server(own=True, env={"PEERJS_CONCURRENT_LIMIT": "30"})
    receiver = await connect(worker)
    deep = "[" * 600 + "]" * 600  # deep, but JSON.stringify writes it: relayed as it is
    sender = await connect(worker)
    await sender.send('{"type":"CANDIDATE","dst":"%s","payload":%s}' % (receiver.peer_id, deep))
    assert (await receiver.recv())["src"] == sender.peer_id
    # 25 sockets each send a payload nested past any parser, and leave.
    abusers = [await connect(worker) for _ in range(25)]
    for abuser in abusers:
        await abuser.send('{"type":"OFFER","dst":"x","payload":' + "[" * 100_000 + "]" * 100_000 + "}")
        assert await abuser.recv() == {"type": "ERROR", "payload": {"msg": "Invalid message: nested too deeply"}}
        await abuser.close()
    # Their registrations went with them: the limit of 30 has room for 28 more.
    rows = lambda: worker.database.query("SELECT COUNT(*) FROM signaling_peer")[0][0]  # noqa: E731
    wait_until(lambda: rows() == 2, 10, "the abusers' rows to go")
    newcomers = [await connect(worker) for _ in range(28)]
    await roundtrip(newcomers[-1], receiver)


async def test_a_client_that_never_reads_is_closed_and_nobody_else_waits_for_it(redis_server):
    """A peer that stops reading: what is written to it piles up in its own outbox,
    not in any loop shared with others; past the cap it is closed as too slow and
    what it was sent goes back to the queue, whose senders hear EXPIRE."""
    cluster = Cluster(redis_server, server="uvicorn", env={"PEERJS_FLOOD_LIMIT": "0"})
    try:
        w1, w2 = cluster.workers
        stuck_id = uid("stuck")
        stuck = await RawSocket.open(w2, stuck_id, read_open=False)  # it reads nothing, not even OPEN
        sender, b1, b2 = await connect(w1), await connect(w1), await connect(w2)
        await roundtrip(b2, b1)  # the workers know each other's peers
        slow_before = counter(scrape(w2), "peerjs_slow_consumers_total")
        # Many small frames: they cross between workers in batches, so that
        # several arrive in one go once the outbox passes its cap.
        small = "x" * 2_000

        async def bystanders():
            for n in range(50):
                await b1.relay("CANDIDATE", b2.peer_id, n)
                assert (await b2.expect("CANDIDATE"))["payload"] == n
                await b2.relay("CANDIDATE", b1.peer_id, n)
                assert (await b1.expect("CANDIDATE"))["payload"] == n

        async def flood_the_stuck_peer():
            for _ in range(4000):  # 8 MB: more than the kernel's buffers and the outbox's cap
                await sender.relay("CANDIDATE", stuck_id, small)

        await asyncio.gather(bystanders(), flood_the_stuck_peer())
        assert await sender.recv(timeout=15) == {"type": "EXPIRE", "src": stuck_id, "dst": sender.peer_id}
        wait_until(lambda: not cluster.rows(stuck_id), 10, "the stuck peer's registration to go")
        # One slow socket, counted (and dropped) once, however many frames
        # arrived for it after it passed the cap.
        assert counter(scrape(w2), "peerjs_slow_consumers_total") == slow_before + 1
        await roundtrip(b1, b2)
        stuck.close()
    finally:
        cluster.stop()


async def test_a_peer_that_reads_late_gets_every_frame_in_order(make_server):
    """Frames a production worker writes at once while the socket takes data, and the
    ones that wait in the socket's outbox once it does not, reach the client in the
    order they were sent."""
    worker = make_server(server="uvicorn", env={"PEERJS_FLOOD_LIMIT": "0", "PEERJS_OUTBOX_MAX_BYTES": str(64 * 1024 * 1024)})
    late_id = uid("late")
    late = await RawSocket.open(worker, late_id, receive_buffer=4096)
    sender = await connect(worker)
    small = "x" * 2_000

    async def send(numbers):
        for n in numbers:
            await sender.relay("CANDIDATE", late_id, {"n": n, "pad": small})

    await send(range(3000))  # 6 MB: more than the kernel's buffers hold, so the rest waits in the outbox
    await roundtrip(sender, sender)  # the worker has taken them all before the client reads any
    # The client reads while more come: each time the socket takes data again,
    # what waited goes first.
    sending = asyncio.create_task(send(range(3000, 6000)))
    received = []
    while len(received) < 6000:
        frame = json.loads(await late.frame())
        assert frame["type"] == "CANDIDATE", frame
        received.append(frame["payload"]["n"])
    await sending
    assert received == list(range(6000))
    late.close()


async def test_frames_read_in_one_burst_keep_their_order_when_some_must_wait(make_server):
    """A production worker relays a frame as it reads it, unless it must wait its
    turn: one answered with ERROR, or throttled by the flood limit. Frames read with
    them in one burst wait behind them, and reach the peer in the order sent."""
    worker = make_server(server="uvicorn", env={
        "PEERJS_FLOOD_LIMIT": "200", "PEERJS_FLOOD_BURST": "20", "PEERJS_FLOOD_CUTOFF": "60000",
    })
    receiver = await connect(worker)
    raw = await RawSocket.open(worker, uid("burst"))
    for n in range(100):  # past the burst of 20: the rest are throttled
        if n in (5, 50):
            raw.send_text("not JSON")
        raw.send_text(json.dumps({"type": "CANDIDATE", "dst": receiver.peer_id, "payload": {"n": n}}))
    await raw.writer.drain()
    received = [(await receiver.expect("CANDIDATE"))["payload"]["n"] for _ in range(100)]
    assert received == list(range(100))
    for _ in range(2):
        assert json.loads(await raw.frame())["type"] == "ERROR"
    raw.close()


async def test_a_frame_sent_before_open_by_a_socket_refused_its_id_is_not_relayed(make_server):
    """A frame that arrives while the worker still registers the socket's id waits
    for the outcome: the id is taken, so the frame goes nowhere."""
    worker = make_server(server="uvicorn", env={"PEERJS_FLOOD_LIMIT": "0"})
    holder, witness = await connect(worker), await connect(worker)
    impostor = await RawSocket.open(worker, holder.peer_id, token="not-the-holders", read_open=False)
    impostor.send_text(json.dumps({"type": "CANDIDATE", "dst": witness.peer_id, "payload": "from the impostor"}))
    await impostor.writer.drain()
    assert json.loads(await impostor.frame())["type"] == "ID-TAKEN"
    assert await impostor.close_code() == 1008
    # The witness hears the holder's frame, and nothing before it.
    await holder.relay("CANDIDATE", witness.peer_id, "from the holder")
    frame = await witness.recv()
    assert (frame["src"], frame["payload"]) == (holder.peer_id, "from the holder")


async def test_sockets_per_client_address_are_capped(make_server):
    worker = make_server(server="uvicorn", env={"PEERJS_MAX_SOCKETS_PER_ADDRESS": "3"})
    held = [await connect(worker) for _ in range(3)]
    fourth = await connect(worker, expect_open=False)
    code, frames = await fourth.closed()
    assert frames == [{"type": "ERROR", "payload": {"msg": "Too many connections from your address"}}]
    assert code == 1008
    # Another address is another client...
    elsewhere = await connect(worker, local_addr=("127.0.0.2", 0))
    await roundtrip(elsewhere, held[0])
    # ...and a socket that closes makes room.
    await held[0].close()
    wait_until(lambda: counter(scrape(worker), "peerjs_open_sockets") == 3, 10, "the closed socket to leave the books")
    again = await connect(worker)
    await roundtrip(again, held[1])


# --- the queue ------------------------------------------------------------------------


async def test_what_one_sender_may_queue_is_capped(make_server):
    worker = make_server(env={"PEERJS_QUEUE_SENDER_MAX_MESSAGES": "3", "PEERJS_EXPIRE_TIMEOUT": "60000"})
    sender, witness = await connect(worker), await connect(worker)
    offline = [uid("away") for _ in range(5)]
    for dst in offline:
        await sender.relay("OFFER", dst, "hello")
    refused = {(await sender.expect("EXPIRE"))["src"] for _ in range(2)}
    assert refused == set(offline[3:])
    # Another sender's frames still fit, and the first three wait for their peers.
    await witness.relay("OFFER", offline[0], "me too")
    late = await connect(worker, peer_id=offline[0])
    assert [(await late.expect("OFFER"))["payload"] for _ in range(2)] == ["hello", "me too"]


async def test_the_queue_as_a_whole_is_capped_and_the_database_stops_growing(make_server):
    worker = make_server(
        own=True,
        env={"PEERJS_QUEUE_TOTAL_MAX_BYTES": str(2 * 1024 * 1024), "PEERJS_EXPIRE_TIMEOUT": "1000", "PEERJS_FLOOD_LIMIT": "0"},
    )
    files = [Path(worker.database.url.removeprefix("sqlite:///"))]
    files.append(files[0].with_name(files[0].name + "-wal"))
    size = lambda: sum(f.stat().st_size for f in files if f.exists())  # noqa: E731
    senders = [await connect(worker) for _ in range(3)]
    big = "y" * 200_000
    sizes = []
    for _round in range(3):
        # Three senders try to queue 12 MB for absent peers (each peer's own queue
        # takes 4 MB): 2 MB fit, the rest is refused.
        for n, sender in enumerate(senders):
            for _ in range(20):
                await sender.relay("CANDIDATE", f"away{n}", big)
        for sender in senders:
            # Each hears EXPIRE: refused at once, or when what fitted expired.
            assert (await sender.expect("EXPIRE", timeout=15))["src"].startswith("away")
        wait_until(lambda: not worker.database.query("SELECT 1 FROM signaling_queuedmessage"), 15, "the queue to empty")
        sizes.append(size())
    # What the database holds stays near the cap (the write-ahead log beside it
    # included), round after round: the space expired rows leave is used again.
    assert max(sizes) < 9 * 1024 * 1024, sizes


# --- slow requests, and many of them (issue 21) ----------------------------------------


async def read_all(reader, timeout=15):
    """Everything the server sends until it closes the connection."""
    data = b""
    with contextlib.suppress(ConnectionError):
        while chunk := await asyncio.wait_for(reader.read(65536), timeout):
            data += chunk
    return data


async def test_a_request_that_does_not_arrive_whole_in_time_is_answered_408_and_closed(make_server):
    worker = make_server(server="uvicorn", env={"PEERJS_REQUEST_TIMEOUT": "1000"})
    # Its headers never finish (a WebSocket handshake here)...
    reader, writer = await asyncio.open_connection("127.0.0.1", worker.port)
    writer.write(f"GET {BASE}/peerjs?key=peerjs&id=slow HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n".encode())
    assert (await read_all(reader)).startswith(b"HTTP/1.1 408 ")
    writer.close()
    # ...or its body never does: a byte of 100, then nothing.
    reader, writer = await asyncio.open_connection("127.0.0.1", worker.port)
    writer.write(f"POST {BASE}/peerjs/id HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\nx".encode())
    assert (await read_all(reader)).startswith(b"HTTP/1.1 408 ")
    writer.close()
    # A connection that says nothing at all is closed without a word.
    silent_reader, silent_writer = await asyncio.open_connection("127.0.0.1", worker.port)
    assert await read_all(silent_reader) == b""
    silent_writer.close()
    # A request that took its time but came whole, on a connection kept alive, is served.
    reader, writer = await asyncio.open_connection("127.0.0.1", worker.port)
    for _ in range(2):
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        await asyncio.sleep(0.3)
        writer.write(b"\r\n")
        response = await asyncio.wait_for(reader.readuntil(b"\r\n0\r\n\r\n"), 10)  # chunked: to its last chunk
        assert response.startswith(b"HTTP/1.1 200 "), response
    writer.close()
    await roundtrip(await connect(worker), await connect(worker))  # the others are served as ever
    assert "Traceback" not in worker.read_log()


async def slow_bodies(worker, count, source="127.0.0.1"):
    """``count`` connections from ``source``, each sending a POST's headers and the first byte of its body."""
    held = []
    for _ in range(count):
        reader, writer = await asyncio.open_connection("127.0.0.1", worker.port, local_addr=(source, 0))
        writer.write(f"POST {BASE}/peerjs/id HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000\r\n\r\nx".encode())
        held.append((reader, writer))
    return held


def get_from(worker, path, source):
    """(status, body) of a GET to ``worker`` from the local address ``source``."""
    with socket.create_connection(("127.0.0.1", worker.port), timeout=10, source_address=(source, 0)) as sock:
        sock.sendall(f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


async def test_slow_request_bodies_from_one_address_do_not_take_a_worker_down(make_server):
    """1 000 connections from one address send a body a byte at a time, to a worker
    started with a soft limit of 256 open files: it raises the limit to the hard one
    (512), serves at most PEERJS_MAX_HTTP_CONNECTIONS_PER_ADDRESS (256) of them and
    answers the rest 429, and another address is served as ever. The log says so in
    a few lines."""
    worker = make_server(server="uvicorn", nofile=(256, 512), env={"PEERJS_REQUEST_TIMEOUT": "600000"})
    assert "open files: raised the limit from 256 to 512 (the hard limit)" in worker.read_log()
    witness = await connect(worker, local_addr=("127.0.0.2", 0))
    held = await slow_bodies(worker, 1000)
    reads = [asyncio.ensure_future(read_all(reader, timeout=600)) for reader, _ in held]
    answered = []
    for read in asyncio.as_completed(reads, timeout=60):
        answered.append(await read)
        if len(answered) == 1000 - 256:
            break
    assert all(answer.startswith(b"HTTP/1.1 429 ") for answer in answered), collections.Counter(answered)
    # Another address: the health check and a new socket are served.
    assert get_from(worker, "/healthz", "127.0.0.2") == (200, b'{"status": "ok"}')
    await roundtrip(await connect(worker, local_addr=("127.0.0.2", 0)), witness)
    # The 256 held are still there (the deadline is far): the cap alone did it.
    assert sum(not read.done() for read in reads) == 256
    for read in reads:
        read.cancel()
    for _, writer in held:
        writer.close()
    log = worker.read_log()
    assert "Traceback" not in log and log.count("the most one address may") == 1, log
    assert len(log.splitlines()) < 20, log


async def test_a_worker_out_of_file_descriptors_says_so_once_a_minute_and_recovers(make_server):
    """Slow requests from many addresses (each under the cap) exhaust a worker's
    descriptors: asyncio fails every accept, and the log gets a line, not one per
    failure. The request deadline frees the descriptors and the worker serves again."""
    worker = make_server(server="uvicorn", nofile=(256, 256), env={"PEERJS_REQUEST_TIMEOUT": "3000"})
    assert "open files: limit 256 (the hard limit)" in worker.read_log()
    held = []
    for n in range(2, 8):  # 6 addresses x 60 connections: more than 256 descriptors
        held += await slow_bodies(worker, 60, source=f"127.0.0.{n}")
    wait_until(lambda: "Too many open files" in worker.read_log(), 30, "the worker to run out of descriptors")
    for _, writer in held:
        writer.close()
    wait_until(lambda: _answers(worker), 60, "the worker to serve again")
    log = worker.read_log()
    assert log.count("cannot accept connections: [Errno 24] Too many open files") == 1, log
    assert "Traceback" not in log and len(log.splitlines()) < 20, log


def _answers(worker):
    try:
        return get_from(worker, "/healthz", "127.0.0.9")[0] == 200
    except OSError:
        return False


async def test_trusted_proxies_may_hold_any_number_of_connections_and_websockets_leave_the_count(make_server):
    """Behind nginx every connection is nginx's: it is not capped. And a client's
    WebSockets count in the app's socket cap, not in the HTTP one."""
    capped = make_server(server="uvicorn", env={"PEERJS_MAX_HTTP_CONNECTIONS_PER_ADDRESS": "5"})
    sockets = [await connect(capped) for _ in range(10)]
    await roundtrip(sockets[0], sockets[-1])
    held = await slow_bodies(capped, 6)
    assert (await read_all(held[5][0])).startswith(b"HTTP/1.1 429 ")
    for _, writer in held:
        writer.close()
    proxied = make_server(server="uvicorn", env={
        "PEERJS_MAX_HTTP_CONNECTIONS_PER_ADDRESS": "5", "PEERJS_PROXIED": "1", "PEERJS_TRUSTED_PROXIES": "127.0.0.1",
    })
    held = await slow_bodies(proxied, 20)
    assert get_from(proxied, "/healthz", "127.0.0.1")[0] == 200
    for reader, writer in held:
        assert not reader.at_eof()
        writer.close()


# --- handshakes in bulk (issue 8's reconnect storm) ---------------------------------


async def test_with_one_handshake_at_a_time_every_way_a_handshake_ends_lets_the_next_one_in(make_server):
    """A worker works on PEERJS_HANDSHAKE_CONCURRENCY handshakes at once; the rest wait their turn.

    With one place, a handshake that ended without giving its place back would
    leave every later socket waiting for ever: each way one can end is tried,
    and sockets still open after it.
    """
    worker = make_server(server="uvicorn", env={"PEERJS_HANDSHAKE_CONCURRENCY": "1"})
    # Many at once: each waits its turn, none is lost.
    crowd = await asyncio.gather(*(connect(worker) for _ in range(30)))
    await roundtrip(crowd[0], crowd[-1])
    # Refused by the application (a wrong key): ERROR, then closed.
    code, frames = await (await connect(worker, key="nope", expect_open=False)).closed()
    assert frames[0]["type"] == "ERROR" and code is not None
    # Refused by the handshake's parser (a version it does not speak).
    reader, writer = await asyncio.open_connection("127.0.0.1", worker.port)
    writer.write(
        f"GET {BASE}/peerjs?key=peerjs&id={uid()}&token=t HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}\r\n"
        f"Sec-WebSocket-Version: 7\r\n\r\n".encode()
    )
    assert b" 101 " not in (await asyncio.wait_for(reader.read(), 10)).split(b"\r\n", 1)[0]
    writer.close()
    # Gone before its answer: a complete request, then the connection closed.
    for _ in range(3):
        _, writer = await asyncio.open_connection("127.0.0.1", worker.port)
        writer.write(
            f"GET {BASE}/peerjs?key=peerjs&id={uid()}&token=t HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}\r\n"
            f"Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        writer.close()
    # Accepted and then closed by its client, or taken over by its own peer
    # reconnecting (the old socket's handshake long over).
    first = await connect(worker)
    await first.close()
    again = await connect(worker, peer_id=crowd[1].peer_id, token=crowd[1].token, expect_open=False)
    assert (await again.recv())["type"] in ("OPEN", "ERROR")
    # After all of that, one place is still free: sockets open, one after another.
    for _ in range(5):
        late = await connect(worker)
        await roundtrip(late, crowd[2])
        await late.close()
    # Plain HTTP never waits for a place.
    with urllib.request.urlopen(f"{worker.http}{BASE}/peerjs/id", timeout=10) as response:
        assert response.status == 200


async def test_frames_written_behind_the_handshake_in_the_same_packet_are_read(production):
    """A client that does not wait for the 101 before its first frames (allowed
    once it has sent the handshake) loses none of them: the production worker
    hands the handshake's bytes, and what follows them, to the WebSocket
    protocol as they came (signaling.servers.uvicorn, HTTPProtocol._upgrade_raw)."""
    receiver = await connect(production)
    reader, writer = await asyncio.open_connection("127.0.0.1", production.port)
    sender = uid()
    path = socket_url(production, sender, "t").split(str(production.port), 1)[1]
    frames = b"".join(
        b"\x81" + bytes([0x80 | len(text)]) + b"\0\0\0\0" + text
        for text in (json.dumps({"type": "CANDIDATE", "dst": receiver.peer_id, "payload": n}).encode() for n in range(3))
    )
    writer.write(
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{production.port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        + frames
    )
    raw = RawSocket(reader, writer)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert b" 101 " in head.split(b"\r\n", 1)[0], head
    assert json.loads(await raw.frame())["type"] == "OPEN"
    assert [(await receiver.recv())["payload"] for _ in range(3)] == [0, 1, 2]
    raw.close()
