"""A load generator that speaks the PeerJS server protocol over real WebSockets.

It plays many PeerJS clients at once: it opens signaling sockets the way the
browser client does (``/peerjs/myapp/peerjs?key=&id=&token=&version=``, then
waits for ``OPEN``), pairs them up and sends OFFER and CANDIDATE frames whose
payload carries a sequence number and a send time, so that every receiver can
tell its one-way latency and whether a message was lost, delivered twice or
overtaken by a later one. Idle peers send a HEARTBEAT every 5 s like the
client, and the generator counts the ones the server drops.

Two ways to run it:

``loadgen.py serve``
    A worker of ``bench/run.py``: reads one JSON command per line on stdin,
    answers one JSON line on stdout. ``run.py`` starts several so that the
    load is not capped by one Python process, and measures the servers' CPU
    between the commands.

``loadgen.py smoke --url ws://127.0.0.1:PORT --pairs 2 --messages 200``
    One process, a short run against one server (or two: ``--url`` twice puts
    each pair's peers on different servers); prints the figures as JSON.
    The smoke test of the suite runs this.

Every frame sent is well-formed JSON (the reference server dies on one that
is not), every loop is bounded by a count or a deadline, and only loopback
addresses are accepted as targets.
"""
import argparse
import asyncio
import base64
import collections
import gc
import hashlib
import ipaddress
import itertools
import json
import math
import os
import resource
import struct
import sys
import time
import urllib.parse

import orjson
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

HEARTBEAT_PERIOD = 5.0  # the PeerJS client's pingInterval
HEARTBEAT_FRAME = '{"type":"HEARTBEAT"}'
DRAIN_TIMEOUT = 5.0  # how long a phase waits for messages still in flight
RELAYED_TYPES = ("OFFER", "CANDIDATE")
# A realistic trickled ICE candidate, as the PeerJS client relays it.
CANDIDATE = {
    "candidate": "candidate:3401736125 1 udp 2122260223 192.0.2.10 54321 typ host generation 0 ufrag Zx9q network-id 1",
    "sdpMid": "0",
    "sdpMLineIndex": 0,
    "usernameFragment": "Zx9q",
}
# A short data-channel SDP offer, of the size PeerJS sends.
SDP = (
    "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
    "a=group:BUNDLE 0\r\na=extmap-allow-mixed\r\na=msid-semantic: WMS\r\n"
    "m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 0.0.0.0\r\n"
    "a=ice-ufrag:Zx9q\r\na=ice-pwd:7Jm1pbQ1uN0bW3b1iY1w0Fq2\r\na=ice-options:trickle\r\n"
    "a=fingerprint:sha-256 3C:4A:9F:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:01:23:45:67:89:AB:CD:EF:10:32:54:76:98\r\n"
    "a=setup:actpass\r\na=mid:0\r\na=sctp-port:5000\r\na=max-message-size:262144\r\n"
)


class LoadError(Exception):
    """The generator cannot do what it was asked (bad target, nothing opened)."""


def check_loopback(url):
    """Refuse any target that is not on this machine's loopback."""
    host = urllib.parse.urlsplit(url).hostname or ""
    if host == "localhost":
        return
    try:
        if ipaddress.ip_address(host).is_loopback:
            return
    except ValueError:
        pass
    raise LoadError(f"refusing to load {url!r}: the benchmark targets loopback addresses only")


def socket_url(base, peer_id, token, key="peerjs", path="/peerjs/myapp"):
    """The signaling socket URL the PeerJS client opens for ``peer_id``."""
    query = urllib.parse.urlencode({"key": key, "id": peer_id, "token": token, "version": "1.5.5"})
    return f"{base.rstrip('/')}{path}/peerjs?{query}"


def cpu_seconds():
    """CPU time (user + system) this process has used."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# Latency histograms: values in µs rounded down to 3 significant digits, so
# that the workers' histograms merge by adding counts (error under 1 %).


def bucket(us):
    if us < 1000:
        return int(us)
    scale = 10 ** (int(math.log10(us)) - 2)
    return int(us) // scale * scale


def merge_histograms(histograms):
    total = collections.Counter()
    for histogram in histograms:
        for value, count in histogram.items():
            total[int(value)] += count
    return total


def percentiles(histogram, wanted=(50, 95, 99)):
    """{"p50": µs, ...} of a histogram {µs: count}; None where it is empty."""
    count = sum(histogram.values())
    result = {}
    for p in wanted:
        if not count:
            result[f"p{p}"] = None
            continue
        rank = max(1, math.ceil(count * p / 100))
        seen = 0
        for value in sorted(histogram):
            seen += histogram[value]
            if seen >= rank:
                result[f"p{p}"] = value
                break
    if count:
        result["max"] = max(histogram)
    return result


def missing(ranges):
    """Messages of ``ranges`` [(stream, first seq, end seq)] that have not arrived."""
    return sum(sum(1 for seq in range(first, end) if seq not in s.seen) for s, first, end in ranges)


class Stream:
    """Messages from one peer to another: what was sent and what arrived."""

    __slots__ = ("src", "dst", "sent", "seen", "highest", "duplicated", "reordered", "arrived", "connection_id")

    def __init__(self, src, dst):
        self.src = src
        self.dst = dst
        self.sent = 0
        self.seen = set()
        self.highest = -1
        self.duplicated = 0
        self.reordered = 0
        self.arrived = asyncio.Event()
        self.connection_id = f"dc_{src.peer_id[-8:]}"

    def outstanding(self):
        return self.sent - len(self.seen)


class Phase:
    """Counts and latencies of one measured phase."""

    def __init__(self, number):
        self.number = number
        self.latency = collections.Counter()
        self.received = 0


class Peer:
    """One PeerJS client: a signaling socket and what it has received."""

    def __init__(self, generator, peer_id, base):
        self.generator = generator
        self.peer_id = peer_id
        self.token = f"t{peer_id}"
        self.url = socket_url(base, peer_id, self.token)
        self.lost_at = None  # monotonic time the server's side went away while we held it
        self.ws = None
        self.reader = None
        self.open = False
        self.dropped = False  # closed by the server while we held it
        self.close_code = None
        self.inbound = {}  # src peer id -> Stream

    async def connect(self, timeout):
        self.ws = await connect(
            self.url,
            open_timeout=timeout,
            close_timeout=2,
            ping_interval=None,  # the PeerJS client sends no pings, only HEARTBEAT frames
            max_size=1 << 20,
            proxy=None,
            compression=self.generator.compression,
        )
        first = orjson.loads(await asyncio.wait_for(self.ws.recv(), timeout))
        if first.get("type") != "OPEN":
            await self.ws.close()
            raise LoadError(f"server answered {first!r} instead of OPEN")
        self.open = True
        self.generator.extensions[",".join(e.name for e in self.ws.protocol.extensions) or "none"] += 1
        self.reader = asyncio.create_task(self._read())

    async def connect_lean(self, timeout):
        """As :meth:`connect`, with a :class:`LeanSocket` (the storm's reconnects)."""
        loop = asyncio.get_running_loop()
        opened = loop.create_future()
        parts = urllib.parse.urlsplit(self.url)
        transport = None
        try:
            async with asyncio.timeout(timeout):
                transport, self.ws = await loop.create_connection(
                    lambda: LeanSocket(self, self.url, opened), parts.hostname, parts.port,
                    local_addr=self.generator.local_addr,
                )
                await opened
        except BaseException:
            if transport is not None:
                transport.close()
            raise
        self.open = True
        self.reader = None
        self.generator.extensions["none"] += 1

    async def _read(self):
        generator = self.generator
        try:
            async for raw in self.ws:
                generator.on_frame(self, raw)
        except ConnectionClosed:
            pass
        finally:
            self.ended(self.ws.close_code)

    def ended(self, close_code):
        """The server's side went away (or we closed it)."""
        generator = self.generator
        if self.open and not generator.closing:
            self.dropped = True
            self.lost_at = time.monotonic()
            if generator.on_drop is not None:
                generator.on_drop(self)
        self.open = False
        if close_code is not None:
            self.close_code = close_code

    async def close(self):
        self.open = False
        if self.ws is not None:
            await self.ws.close()
        if self.reader is not None:
            await self.reader


class LeanSocket(asyncio.Protocol):
    """The storm's reconnect: a WebSocket client written for the storm, a few times
    cheaper in CPU than the websockets library's.

    The 5 000 browsers that reconnect in a storm live elsewhere in reality; here
    their load generator shares the two cores with the survivors, and with the
    library's client it took a core to itself at the storm's peak (a scheduler
    probe). This one does what they do on the wire and no more: a TCP connection,
    the HTTP upgrade with the peer's id and token and a fresh key (checked against
    the answer), permessage-deflate offered as browsers do (a server that accepts
    it fails the reconnect: this client cannot read compressed frames), then text
    frames; pings are answered, a close is noticed.
    """

    MAGIC = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

    def __init__(self, peer, url, opened):
        parts = urllib.parse.urlsplit(url)
        self.peer = peer
        self.opened = opened  # resolved with OPEN, or the reason there was none
        key = base64.b64encode(os.urandom(16))
        self.accept = base64.b64encode(hashlib.sha1(key + self.MAGIC).digest())
        self.request = (
            f"GET {parts.path}?{parts.query} HTTP/1.1\r\nHost: {parts.netloc}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key.decode()}\r\nSec-WebSocket-Version: 13\r\n"
            "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n"
        ).encode()
        self.transport = None
        self.buffer = b""
        self.upgraded = False
        self.close_code = None
        self.ended = asyncio.get_running_loop().create_future()

    def connection_made(self, transport):
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data):
        self.buffer += data
        if not self.upgraded:
            head, separator, rest = self.buffer.partition(b"\r\n\r\n")
            if not separator:
                return
            problem = self._check_upgrade(head)
            if problem:
                self._fail(problem)
                return
            self.upgraded, self.buffer = True, rest
        while len(self.buffer) >= 2:
            first, second = self.buffer[0], self.buffer[1]
            length, start = second & 0x7F, 2
            if length == 126:
                if len(self.buffer) < 4:
                    return
                length, start = struct.unpack_from("!H", self.buffer, 2)[0], 4
            elif length == 127:
                if len(self.buffer) < 10:
                    return
                length, start = struct.unpack_from("!Q", self.buffer, 2)[0], 10
            if len(self.buffer) < start + length:
                return
            payload, self.buffer = self.buffer[start : start + length], self.buffer[start + length :]
            self._frame(first & 0x0F, payload)

    def _check_upgrade(self, head):
        lines = head.split(b"\r\n")
        if b" 101 " not in lines[0] + b" ":
            return f"server answered {lines[0].decode(errors='replace')!r} instead of 101"
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        if headers.get(b"sec-websocket-accept") != self.accept:
            return "server answered the upgrade with the wrong Sec-WebSocket-Accept"
        if headers.get(b"sec-websocket-extensions"):
            return "server negotiated permessage-deflate, which this client cannot read"
        return None

    def _frame(self, opcode, payload):
        if opcode == 0x1:
            if not self.opened.done():
                first = orjson.loads(payload)
                if first.get("type") == "OPEN":
                    self.opened.set_result(None)
                else:
                    self._fail(f"server answered {first!r} instead of OPEN")
                return
            self.peer.generator.on_frame(self.peer, payload)
        elif opcode == 0x8:
            self.close_code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
            self._write(0x8, payload[:2])
            self.transport.close()
        elif opcode == 0x9:
            self._write(0xA, payload)

    def _write(self, opcode, payload):
        """A masked frame (zero mask: the payload goes as it is); payloads under 64 KiB."""
        if self.transport.is_closing():
            return
        if len(payload) < 126:
            length = bytes([0x80 | len(payload)])
        else:
            length = bytes([0x80 | 126]) + struct.pack("!H", len(payload))
        self.transport.write(bytes([0x80 | opcode]) + length + b"\0\0\0\0" + payload)

    def _fail(self, why):
        if not self.opened.done():
            self.opened.set_exception(LoadError(why))
        self.transport.close()

    def connection_lost(self, exc):
        if not self.opened.done():
            self.opened.set_exception(ConnectionError("connection closed before OPEN"))
        if not self.ended.done():
            self.ended.set_result(None)
        self.peer.ended(self.close_code)

    # What Peer uses of a connection.

    async def send(self, text):
        if self.transport.is_closing():
            raise ConnectionClosed(None, None)
        self._write(0x1, text.encode())

    async def close(self):
        if not self.transport.is_closing():
            self._write(0x8, struct.pack("!H", 1000))
            self.transport.close()
        await self.ended


class Generator:
    """The peers of one load-generator process and the phases it runs."""

    def __init__(self, prefix, compression="deflate", source=None):
        self.prefix = prefix  # makes peer ids unique across worker processes
        self.compression = compression  # "deflate" offers permessage-deflate, as browsers do
        # The lean sockets' own address (127.0.0.2, ...): one source address
        # reaches a server's port from at most ~28 000 ephemeral ports
        # (bench/scale.py opens 100 000 peers from several).
        self.local_addr = (source, 0) if source else None
        self.counter = itertools.count()
        self.idle = []
        self.pairs = []  # (Peer, Peer)
        self.streams = []
        self.phases = {}
        self.ranges = {}  # phase number -> [(stream, first seq, end seq)]
        self.unexpected = collections.Counter()  # frames of other types (EXPIRE, LEAVE, ERROR...)
        self.extensions = collections.Counter()  # what the server negotiated (permessage-deflate or none)
        self.closing = False
        self.heartbeat_task = None
        self.on_drop = None  # called with a peer the server dropped (the storm reconnects it)

    def new_peer(self, base):
        return Peer(self, f"{self.prefix}n{next(self.counter)}", base)

    # Receiving.

    def on_frame(self, peer, raw):
        now = time.monotonic_ns()
        try:
            message = orjson.loads(raw)
            kind = message["type"]
        except (orjson.JSONDecodeError, TypeError, KeyError):
            self.unexpected["not-a-frame"] += 1
            return
        if kind not in RELAYED_TYPES:
            self.unexpected[kind] += 1
            return
        stream = peer.inbound.get(message.get("src"))
        payload = message.get("payload") or {}
        phase = self.phases.get(payload.get("ph"))
        if stream is None or phase is None or message.get("dst") != peer.peer_id:
            self.unexpected["misaddressed"] += 1
            return
        seq = payload["seq"]
        phase.received += 1
        phase.latency[bucket((now - payload["sent"]) / 1000)] += 1
        if seq in stream.seen:
            stream.duplicated += 1
            return
        if seq < stream.highest:
            stream.reordered += 1
        else:
            stream.highest = seq
        stream.seen.add(seq)
        stream.arrived.set()

    # Opening and holding sockets.

    async def open_peers(self, bases, count, concurrency, timeout=20.0, seconds=None, on_open=None, lean=False):
        """Open ``count`` peers spread over ``bases``; returns (peers, failures, open latencies).

        ``lean`` opens them with :class:`LeanSocket` (bench/perpeer.py: thousands
        of opens whose client must not take the cores the server is measured on).

        With ``seconds``, no open starts after that long: a slow server gets
        fewer peers (counted under "not attempted") instead of a run without end.
        ``on_open(peer)`` is called as each one opens (idle peers start their
        heartbeats at once, as the client does, not when the last one opened).
        """
        semaphore = asyncio.Semaphore(concurrency)
        failures = collections.Counter()
        latency = collections.Counter()
        peers = [self.new_peer(bases[i % len(bases)]) for i in range(count)]
        stop_at = None if seconds is None else time.monotonic() + seconds

        async def one(peer):
            async with semaphore:
                if stop_at is not None and time.monotonic() > stop_at:
                    failures["not attempted (time cap)"] += 1
                    return
                started = time.monotonic_ns()
                try:
                    await (peer.connect_lean(timeout) if lean else peer.connect(timeout))
                except Exception as exc:  # counted and reported: a refused or failed open
                    failures[type(exc).__name__ + (f": {exc}"[:120] if isinstance(exc, LoadError) else "")] += 1
                    return
                latency[bucket((time.monotonic_ns() - started) / 1000)] += 1
                if on_open is not None:
                    on_open(peer)

        await asyncio.gather(*(one(peer) for peer in peers))
        return [peer for peer in peers if peer.open], failures, latency

    async def close_peers(self, peers, concurrency=200):
        self.closing = True
        semaphore = asyncio.Semaphore(concurrency)

        async def one(peer):
            async with semaphore:
                try:
                    await asyncio.wait_for(peer.close(), 10)
                except Exception:
                    pass

        try:
            await asyncio.gather(*(one(peer) for peer in peers))
        finally:
            self.closing = False

    def start_heartbeats(self):
        if self.heartbeat_task is None:
            self.heartbeat_task = asyncio.create_task(self._heartbeats())

    async def stop_heartbeats(self):
        if self.heartbeat_task is not None:
            self.heartbeat_task.cancel()
            try:
                await self.heartbeat_task
            except asyncio.CancelledError:
                pass
            self.heartbeat_task = None

    async def _heartbeats(self):
        """Every peer sends HEARTBEAT every 5 s, spread evenly over the period."""
        while True:
            peers = self.idle + [peer for pair in self.pairs for peer in pair]
            if not peers:
                await asyncio.sleep(HEARTBEAT_PERIOD)
                continue
            slices = min(50, len(peers))
            chunk = math.ceil(len(peers) / slices)
            for start in range(0, len(peers), chunk):
                for peer in peers[start : start + chunk]:
                    if peer.open:
                        try:
                            await peer.ws.send(HEARTBEAT_FRAME)
                        except ConnectionClosed:
                            pass
                await asyncio.sleep(HEARTBEAT_PERIOD / slices)

    # Reconnect storms, bursts and first frames.

    async def storm(self, bases, timeout, concurrency=1000):
        """When the server drops the idle peers (their worker died), reconnect each at once
        with its id and token to ``bases``, as PeerJS apps do on 'disconnected'.

        Returns when every idle peer (all on the doomed worker) has dropped
        and is open again or refused, or ``timeout`` s after the first drop:
        seconds from the first drop to the last OPEN, peers refused (ERROR,
        ID-TAKEN) or failed, and reconnect latencies.
        """
        expected = len(self.idle)
        for base in bases:
            check_loopback(base)
        pending, tasks = set(), []
        semaphore = asyncio.Semaphore(concurrency)
        refused, latency = collections.Counter(), collections.Counter()
        first_drop = []
        done = asyncio.Event()
        rotation = itertools.count()

        async def reconnect(peer):
            async with semaphore:
                peer.url = socket_url(bases[next(rotation) % len(bases)], peer.peer_id, peer.token)
                started = time.monotonic_ns()
                try:
                    await peer.connect_lean(timeout)
                except Exception as exc:
                    refused[type(exc).__name__ + (f": {exc}"[:120] if isinstance(exc, LoadError) else "")] += 1
                else:
                    peer.dropped = False
                    latency[bucket((time.monotonic_ns() - started) / 1000)] += 1
                finally:
                    pending.discard(peer.peer_id)
                    # Not merely "nothing pending": drops are noticed one by
                    # one, and a lull between them is not the end.
                    if not pending and len(tasks) >= expected:
                        done.set()

        def on_drop(peer):
            if not first_drop:
                first_drop.append(peer.lost_at)
            pending.add(peer.peer_id)
            tasks.append(asyncio.create_task(reconnect(peer)))

        self.on_drop = on_drop
        try:
            deadline = time.monotonic() + timeout
            while not first_drop and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            if first_drop:
                try:
                    await asyncio.wait_for(done.wait(), max(0.0, deadline - time.monotonic()))
                except asyncio.TimeoutError:
                    pass
            finished = time.monotonic()
        finally:
            self.on_drop = None
        for task in tasks:
            task.cancel()
        return {
            "dropped": len(tasks),
            "reopened": sum(latency.values()),
            "refused": dict(refused),
            "still_closed": len(pending),
            "seconds": finished - first_drop[0] if first_drop else None,
            "reconnect_latency_us": {str(k): v for k, v in latency.items()},
        }

    async def burst(self, base, frames):
        """One peer sends ``frames`` CANDIDATEs to an id nobody holds, as fast as it can."""
        check_loopback(base)
        opened, failures, _ = await self.open_peers([base], 1, 1)
        if not opened:
            raise LoadError(f"could not open the bursting peer: {dict(failures)}")
        (peer,) = opened
        nobody = f"{self.prefix}nobody"
        frame = orjson.dumps({"type": "CANDIDATE", "dst": nobody, "payload": {"candidate": CANDIDATE}}).decode()
        t0 = time.monotonic()
        for _ in range(frames):
            await peer.ws.send(frame)
        sent_seconds = time.monotonic() - t0
        expired = self.unexpected["EXPIRE"]
        await self.close_peers([peer])
        return {"sent": frames, "send_seconds": sent_seconds, "expires_heard": expired, "dropped": peer.dropped}

    async def first_frames(self, bases, count, timeout=10.0):
        """The first frame of a new pair: a receiver opens on ``bases[-1]`` and at once a
        sender on ``bases[0]`` (open all along) sends it an OFFER; one-way latency of each."""
        for base in bases:
            check_loopback(base)
        senders, failures, _ = await self.open_peers(bases[:1], 1, 1)
        if not senders:
            raise LoadError(f"could not open the sender: {dict(failures)}")
        (sender,) = senders
        latency = collections.Counter()
        missed = 0
        phase = self.phases["first"] = Phase("first")
        for _ in range(count):
            receiver = self.new_peer(bases[-1])
            await receiver.connect(timeout)
            stream = Stream(sender, receiver)
            receiver.inbound[sender.peer_id] = stream
            await sender.ws.send(self.frame(stream, "first"))
            try:
                await asyncio.wait_for(stream.arrived.wait(), timeout)
            except asyncio.TimeoutError:
                missed += 1
            await self.close_peers([receiver])
        await self.close_peers([sender])
        latency.update(phase.latency)
        return {"pairs": count, "missed": missed, "latency_us": {str(k): v for k, v in latency.items()}}

    async def unfinished(self, base, count, size):
        """Open ``count`` sockets that each start a ``size``-byte message and never finish it.

        Raw TCP: a WebSocket client library would not send half a frame. What
        the server holds for them is what the benchmark reads off its RSS.
        """
        check_loopback(base)
        parts = urllib.parse.urlsplit(base)
        self.raw = getattr(self, "raw", [])
        opened = closed_at_once = 0
        for n in range(count):
            reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
            key = base64.b64encode(os.urandom(16)).decode()
            peer_id = f"{self.prefix}u{n}"
            path = urllib.parse.urlsplit(socket_url(base, peer_id, "t" + peer_id))
            writer.write(
                (
                    f"GET {path.path}?{path.query} HTTP/1.1\r\nHost: {parts.netloc}\r\nUpgrade: websocket\r\n"
                    f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
                ).encode()
            )
            status = await asyncio.wait_for(reader.readline(), 10)
            if b" 101 " not in status:
                raise LoadError(f"handshake refused: {status!r}")
            await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            # A masked text frame announcing ``size`` bytes, all but the last sent.
            writer.write(bytes([0x81, 0x80 | 127]) + size.to_bytes(8, "big") + os.urandom(4))
            chunk = b"x" * 65536
            try:
                for start in range(0, size - 1, len(chunk)):
                    writer.write(chunk[: min(len(chunk), size - 1 - start)])
                    await asyncio.wait_for(writer.drain(), 10)
            except (ConnectionError, asyncio.TimeoutError):
                pass  # the server stopped reading or closed: it refused the message
            self.raw.append((reader, writer))
            opened += 1
        # Whatever the server closed at once (a frame over its cap) reads EOF.
        for reader, _writer in self.raw:
            try:
                while await asyncio.wait_for(reader.read(65536), 0.2):
                    pass
                closed_at_once += 1
            except ConnectionError:
                closed_at_once += 1
            except asyncio.TimeoutError:
                pass  # still open: the server holds it
        return {"opened": opened, "closed_by_server": closed_at_once}

    async def close_unfinished(self):
        for _reader, writer in getattr(self, "raw", []):
            writer.close()
        self.raw = []
        return {}

    # Relaying.

    async def never_delivered(self, wait):
        """Per phase, the messages still missing after waiting up to ``wait`` s more.

        A phase's "lost" counts what had not arrived when its drain ended
        (late or lost); this counts what never arrived before the sockets closed.
        """
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and any(s.outstanding() > 0 for s in self.streams):
            await asyncio.sleep(0.05)
        return {str(number): missing(ranges) for number, ranges in self.ranges.items()}

    def make_pairs(self, opened):
        """Pair peers (a, b) and set up a stream each way."""
        self.pairs = list(zip(opened[0::2], opened[1::2]))
        self.streams = []
        for a, b in self.pairs:
            for src, dst in ((a, b), (b, a)):
                stream = Stream(src, dst)
                dst.inbound[src.peer_id] = stream
                self.streams.append(stream)

    def frame(self, stream, phase):
        seq = stream.sent
        stream.sent += 1
        kind = "OFFER" if seq % 50 == 0 else "CANDIDATE"
        payload = {"seq": seq, "ph": phase, "sent": time.monotonic_ns(), "type": "data", "connectionId": stream.connection_id}
        if kind == "OFFER":
            payload["sdp"] = {"type": "offer", "sdp": SDP}
        else:
            payload["candidate"] = CANDIDATE
        return orjson.dumps({"type": kind, "dst": stream.dst.peer_id, "payload": payload}).decode()

    async def relay(self, number, mode, seconds, rate=None, window=32, max_messages=1_000_000, drain=DRAIN_TIMEOUT):
        """Run one relay phase; returns its figures.

        ``paced``: ``rate`` messages/s in all, spread round-robin over the
        streams at evenly scheduled times. ``full``: every stream sends as
        fast as it can with at most ``window`` messages in flight.
        """
        streams = [s for s in self.streams if s.src.open and s.dst.open]
        if not streams:
            # Every pair lost a peer (the server closed them): a figure of its own, not a crash.
            return {
                "mode": mode, "rate": rate, "streams": 0, "sent": 0, "received": 0, "lost": 0,
                "duplicated": 0, "reordered": 0, "send_seconds": 0.0, "wall_seconds": 0.0,
                "client_cpu_seconds": 0.0, "max_schedule_lag_ms": 0.0, "latency_us": {},
                "no_pairs": "no open pair left to relay between",
            }
        phase = self.phases[number] = Phase(number)
        sent_before = {id(s): (s.sent, len(s.seen), s.duplicated, s.reordered) for s in streams}
        cpu0, wall0 = cpu_seconds(), time.monotonic()
        late = 0.0
        deadline = wall0 + seconds
        budget = max_messages
        if mode == "paced":
            total = min(int(rate * seconds), max_messages)
            interval = 1.0 / rate
            for i in range(total):
                due = wall0 + i * interval
                lag = due - time.monotonic()
                if lag > 0.0005:
                    await asyncio.sleep(lag)
                else:
                    late = max(late, -lag)
                stream = streams[i % len(streams)]
                try:
                    await stream.src.ws.send(self.frame(stream, number))
                except ConnectionClosed:
                    stream.sent -= 1
        else:
            per_stream = max(1, budget // len(streams))

            async def pump(stream):
                for _ in range(per_stream):
                    if time.monotonic() >= deadline:
                        return
                    while stream.outstanding() >= window:
                        stream.arrived.clear()
                        try:
                            await asyncio.wait_for(stream.arrived.wait(), 0.25)
                        except asyncio.TimeoutError:
                            if time.monotonic() >= deadline:
                                return
                    try:
                        await stream.src.ws.send(self.frame(stream, number))
                    except ConnectionClosed:
                        stream.sent -= 1
                        return

            await asyncio.gather(*(pump(s) for s in streams))
        send_wall = time.monotonic() - wall0
        # Wait (bounded) for what is still in flight.
        ranges = [(s, sent_before[id(s)][0], s.sent) for s in streams]
        drain_deadline = time.monotonic() + drain
        while time.monotonic() < drain_deadline and missing(ranges):
            await asyncio.sleep(0.01)
        wall = time.monotonic() - wall0
        cpu = cpu_seconds() - cpu0
        sent = lost = duplicated = reordered = 0
        for s in streams:
            s0, seen0, dup0, reord0 = sent_before[id(s)]
            sent += s.sent - s0
            duplicated += s.duplicated - dup0
            reordered += s.reordered - reord0
        lost = missing(ranges)
        self.ranges[number] = ranges
        return {
            "mode": mode,
            "rate": rate,
            "streams": len(streams),
            "sent": sent,
            "received": phase.received,
            "lost": lost,
            "duplicated": duplicated,
            "reordered": reordered,
            "send_seconds": send_wall,
            "wall_seconds": wall,
            "client_cpu_seconds": cpu,
            "max_schedule_lag_ms": late * 1000,
            "latency_us": {str(k): v for k, v in phase.latency.items()},
        }


# The worker protocol: one JSON command per line in, one JSON answer per line out.


class Worker:
    def __init__(self, prefix, compression, source=None):
        self.generator = Generator(prefix, compression, source)

    async def handle(self, command):
        g = self.generator
        op = command["op"]
        cpu0, wall0 = cpu_seconds(), time.monotonic()
        answer = {}
        if op == "ping":
            pass
        elif op == "open_idle":
            bases = command["bases"]
            for base in bases:
                check_loopback(base)
            g.start_heartbeats()
            opened, failures, latency = await g.open_peers(
                bases, command["count"], command.get("concurrency", 64), timeout=command.get("timeout", 20.0),
                seconds=command.get("seconds"),
                on_open=g.idle.append, lean=command.get("lean", False),
            )
            answer = {"opened": len(opened), "failures": dict(failures), "open_latency_us": {str(k): v for k, v in latency.items()}}
        elif op == "hold":
            end = time.monotonic() + command["seconds"]
            while time.monotonic() < end:
                await asyncio.sleep(min(0.25, max(0.0, end - time.monotonic())))
            answer = self.idle_state()
        elif op == "close_idle":
            state = self.idle_state()
            await g.close_peers(g.idle)
            g.idle = []
            answer = state
        elif op == "open_pairs":
            bases = command["bases"]
            for base in bases:
                check_loopback(base)
            # Peer 2k and 2k+1 form a pair; alternating bases puts the two on different servers.
            opened, failures, _ = await g.open_peers(bases, 2 * command["pairs"], command.get("concurrency", 32))
            if failures or len(opened) != 2 * command["pairs"]:
                raise LoadError(f"could not open the relay peers: {dict(failures)}")
            g.make_pairs(opened)
            g.start_heartbeats()
            answer = {"pairs": len(g.pairs)}
        elif op == "relay":
            answer = await g.relay(
                command["phase"],
                command["mode"],
                command["seconds"],
                rate=command.get("rate"),
                window=command.get("window", 32),
                max_messages=command.get("max_messages", 1_000_000),
                drain=command.get("drain", DRAIN_TIMEOUT),
            )
        elif op == "close_pairs":
            never = await g.never_delivered(command.get("wait", 0))
            dropped = sum(p.dropped for pair in g.pairs for p in pair)
            codes = collections.Counter(str(p.close_code) for pair in g.pairs for p in pair if p.dropped)
            await g.close_peers([p for pair in g.pairs for p in pair])
            g.pairs, g.streams, g.ranges = [], [], {}
            answer = {"dropped": dropped, "never_delivered": never, "close_codes": dict(codes)}
        elif op == "storm":
            # The storm's 5 000 browsers live elsewhere in reality: this process's
            # own full collections over their sockets (half a second each, seen in
            # a probe) would count as the servers' time. A few seconds of garbage
            # can wait.
            gc.disable()
            try:
                answer = await g.storm(command["bases"], command.get("timeout", 60))
            finally:
                gc.enable()
        elif op == "burst":
            answer = await g.burst(command["base"], command["frames"])
        elif op == "unfinished":
            answer = await g.unfinished(command["base"], command["count"], command["size"])
        elif op == "close_unfinished":
            answer = await g.close_unfinished()
        elif op == "first_frames":
            answer = await g.first_frames(command["bases"], command["count"])
        elif op == "stats":
            answer = {"unexpected": dict(g.unexpected), "extensions": dict(g.extensions)}
        else:
            raise LoadError(f"unknown op {op!r}")
        answer["op"] = op
        answer["client_cpu_seconds"] = answer.get("client_cpu_seconds", cpu_seconds() - cpu0)
        answer["client_wall_seconds"] = time.monotonic() - wall0
        return answer

    def idle_state(self):
        peers = self.generator.idle
        codes = collections.Counter(str(p.close_code) for p in peers if p.dropped)
        return {"held": len(peers), "alive": sum(p.open for p in peers), "dropped": sum(p.dropped for p in peers), "close_codes": dict(codes)}


async def serve(prefix, compression, source=None):
    """Run commands from stdin until EOF or ``quit``; every answer is one JSON line."""
    if source is not None:
        check_loopback(f"ws://{source}/")
    worker = Worker(prefix, compression, source)
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            break
        command = json.loads(line)
        if command.get("op") == "quit":
            break
        try:
            answer = await worker.handle(command)
        except Exception as exc:
            answer = {"op": command.get("op"), "error": f"{type(exc).__name__}: {exc}"}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()
    g = worker.generator
    await g.stop_heartbeats()
    await g.close_peers(g.idle + [p for pair in g.pairs for p in pair])


async def smoke(urls, pairs, messages, rate, prefix, compression="deflate"):
    """A short complete run in one process: open, relay at ``rate`` then at full speed, close."""
    for url in urls:
        check_loopback(url)
    g = Generator(prefix, compression)
    opened, failures, open_latency = await g.open_peers(urls, 2 * pairs, 8)
    result = {"opened": len(opened), "open_failures": dict(failures), "open_latency_us": percentiles(open_latency)}
    if len(opened) != 2 * pairs:
        raise LoadError(f"opened {len(opened)} of {2 * pairs} peers: {dict(failures)}")
    g.make_pairs(opened)
    try:
        paced = await g.relay(1, "paced", messages / rate, rate=rate)
        full = await g.relay(2, "full", 10.0, window=16, max_messages=messages)
        never = await g.never_delivered(DRAIN_TIMEOUT)
    finally:
        await g.close_peers(opened)
    paced["never_delivered"], full["never_delivered"] = never.get("1"), never.get("2")
    for name, phase in (("paced", paced), ("full", full)):
        histogram = merge_histograms([phase.pop("latency_us")])
        phase["latency_us"] = percentiles(histogram)
        phase["messages_per_second"] = phase["received"] / phase["wall_seconds"] if phase["wall_seconds"] else None
        result[name] = phase
    result["unexpected"] = dict(g.unexpected)
    result["extensions"] = dict(g.extensions)
    result["dropped"] = sum(p.dropped for p in opened)
    result["close_codes"] = dict(collections.Counter(str(p.close_code) for p in opened if p.dropped))
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="a worker of bench/run.py (JSON lines on stdin/stdout)")
    s.add_argument("--prefix", required=True, help="peer id prefix, unique per worker (letters and digits)")
    s.add_argument("--no-compression", action="store_true", help="do not offer permessage-deflate")
    s.add_argument("--source", help="the loopback address the lean sockets open from (default: the kernel's choice)")
    m = sub.add_parser("smoke", help="a short run against one or two servers; prints JSON")
    m.add_argument("--url", action="append", required=True, help="ws://127.0.0.1:PORT (twice: pairs span both)")
    m.add_argument("--pairs", type=int, default=2)
    m.add_argument("--messages", type=int, default=200, help="messages per phase")
    m.add_argument("--rate", type=float, default=1000.0, help="messages/s of the paced phase")
    m.add_argument("--prefix", default="smoke")
    m.add_argument("--no-compression", action="store_true", help="do not offer permessage-deflate")
    args = parser.parse_args(argv)
    if args.command == "serve":
        asyncio.run(serve(args.prefix, None if args.no_compression else "deflate", args.source))
        return 0
    compression = None if args.no_compression else "deflate"
    result = asyncio.run(smoke(args.url, args.pairs, args.messages, args.rate, args.prefix, compression))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
