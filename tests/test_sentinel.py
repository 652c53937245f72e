"""Redis Sentinel: workers find the master through the sentinels and follow a failover without losing a frame silently.

Real redis-servers (a master, a replica, a sentinel) and two real uvicorn
workers configured as the Helm chart configures them
(PEERJS_REDIS_SENTINELS, PEERJS_REDIS_SENTINEL_MASTER); REDIS_URL's host is
one that does not resolve, so nothing may reach Redis except through the
sentinels. The failover test SIGKILLs the master: the module's tests ask the
sentinel for the master of the moment, whatever ran before them.
"""
import asyncio
import contextlib
import itertools
import json
import time

import pytest
import websockets
from channels_redis.core import RedisChannelLayer

from signaling import conf, sentinel
from signaling.bus.layer import RedisBatchLayer
from signaling.bus.transport import inbox_name
from tests.client import connect, roundtrip
from tests.servers import BASE, Certificates, RedisSentinelSet, free_port
from tests.test_cluster import Cluster, assert_accounted, collect

pytestmark = [pytest.mark.cluster, pytest.mark.servers]  # servers of the module's own (tests/conftest.py)

GAP_TIMEOUT = 30  # seconds a failover may take on a busy machine before the test gives up (about 4 s here)
_addresses = itertools.count(1)


def address():
    """A client address no other request of the module uses (198.18.0.0/15: benchmarks, never a real client)."""
    n = next(_addresses)
    return f"198.18.{n // 250}.{n % 250 + 1}"


@pytest.fixture(scope="module")
def sentinel_set():
    redis = RedisSentinelSet()
    yield redis
    redis.stop()


@pytest.fixture(scope="module")
def cluster(sentinel_set):
    """Two uvicorn workers on the sentinels; X-Forwarded-For believed from the tests, for the rate limits."""
    env = {
        "PEERJS_REDIS_SENTINELS": sentinel_set.sentinels,
        "PEERJS_REDIS_SENTINEL_MASTER": sentinel_set.NAME,
        "REDIS_ACK_TIMEOUT": "2000",
        "PEERJS_PROXIED": "1",
        "PEERJS_RATE_LIMIT_IDS": "3",
    }
    cluster = Cluster(sentinel_set, server="uvicorn", env=env)
    yield cluster
    cluster.stop()


def readyz(worker):
    status, _headers, body = worker.get("/readyz")
    return status, json.loads(body)


async def test_workers_reach_each_other_through_the_master_the_sentinels_name(cluster, sentinel_set):
    w1, w2 = cluster.workers
    a, b = await connect(w1), await connect(w2)
    await roundtrip(a, b)
    await roundtrip(b, a)
    master = sentinel_set.master_port()
    names = dict(cluster.database.query("SELECT pid, name FROM signaling_worker"))
    for worker in (w1, w2):  # each inbox is subscribed on the master
        channel = "{" + inbox_name(names[worker.proc.pid]) + "}"
        assert _subscribers(sentinel_set, master, channel) == 1
        assert readyz(worker) == (200, {"ready": True, "database": "ok", "redis": "ok", "draining": False})


async def test_the_sites_default_layer_finds_the_master_through_the_sentinels(sentinel_set):
    """channels-redis (the site's groups) gets the sentinels in its own form from channel_layers()."""
    peerjs = conf.from_environ({
        "REDIS_URL": sentinel_set.url,
        "PEERJS_REDIS_SENTINELS": sentinel_set.sentinels,
        "PEERJS_REDIS_SENTINEL_MASTER": sentinel_set.NAME,
    })
    layer = RedisChannelLayer(**conf.channel_layers(peerjs)["default"]["CONFIG"])
    try:
        channel = await layer.new_channel()
        await layer.group_add("stage", channel)
        await layer.group_send("stage", {"type": "cue", "n": 1})
        assert await asyncio.wait_for(layer.receive(channel), 10) == {"type": "cue", "n": 1}
    finally:
        await layer.flush()
        await layer.close_pools()


async def test_the_bus_skips_a_sentinel_that_is_away_and_refuses_a_server_that_is_no_master(sentinel_set):
    """signaling.sentinel, the bus's resolver, against the real sentinel."""
    away = ("127.0.0.1", free_port())
    here = ("127.0.0.1", sentinel_set.sentinel_port)
    assert await sentinel.master_address([away, here], sentinel_set.NAME) == ("127.0.0.1", sentinel_set.master_port())
    with pytest.raises(ConnectionError, match=f"no sentinel gave the master of 'elsewhere': 127.0.0.1:{away[1]}: .*; "
                       f"127.0.0.1:{here[1]}: .*elsewhere"):
        await sentinel.master_address([away, here], "elsewhere")
    # A sentinel that names a replica (the old master, for a moment after a planned failover): refused.
    replica = next(port for port in sentinel_set.procs if port != sentinel_set.master_port())
    sentinel_set.cli(here[1], "SENTINEL", "MONITOR", "stale", "127.0.0.1", str(replica), "1")
    try:
        with pytest.raises(ConnectionError, match=f"Redis at 127.0.0.1:{replica}, named master of 'stale', says slave"):
            await sentinel.MasterConnection([here], "stale").open()
    finally:
        sentinel_set.cli(here[1], "SENTINEL", "REMOVE", "stale")
    connection = await sentinel.MasterConnection([away, here], sentinel_set.NAME).open()
    try:
        assert await connection.call([("PING",)], 5) == [b"PONG"]
    finally:
        connection.close()


async def test_sentinels_that_ask_for_a_password_get_redis_urls_with_sentinel_auth():
    """PEERJS_REDIS_SENTINEL_AUTH: the bus, redis-py's clients and channels-redis ask the sentinels with
    REDIS_URL's password (one with "@" and "/", percent-encoded in the URL, as redis-py reads it)."""
    protected = RedisSentinelSet(password="pass@word/1")
    try:
        here = [("127.0.0.1", protected.sentinel_port)]
        with pytest.raises(ConnectionError, match="NOAUTH"):
            await sentinel.master_address(here, protected.NAME)
        peerjs = conf.from_environ({
            "REDIS_URL": protected.url,
            "PEERJS_REDIS_SENTINELS": protected.sentinels,
            "PEERJS_REDIS_SENTINEL_MASTER": protected.NAME,
            "PEERJS_REDIS_SENTINEL_AUTH": "1",
        })
        await _every_client_answers(peerjs)
        # Without sentinels too: the bus reads the URL's password as redis-py does.
        direct = protected.url.replace("master.invalid:6379", f"127.0.0.1:{protected.master_port()}")
        await _every_client_answers(conf.from_environ({"REDIS_URL": direct}))
    finally:
        protected.stop()


async def test_sentinels_over_tls_get_redis_urls_with_sentinel_tls(tmp_path, monkeypatch):
    """PEERJS_REDIS_SENTINEL_TLS: sentinels and servers that speak TLS only (rediss:// for the master):
    the bus, redis-py's clients and channels-redis ask the sentinels over TLS, trusting the CA that
    SSL_CERT_FILE names, and two workers relay across through the master they name."""
    certificates = Certificates(tmp_path / "certificates")
    secure = RedisSentinelSet(tls=certificates)
    try:
        monkeypatch.setenv("SSL_CERT_FILE", str(certificates.ca))
        here = [("127.0.0.1", secure.sentinel_port)]
        with pytest.raises(ConnectionError):  # a sentinel asked in plain text answers nothing
            await sentinel.master_address(here, secure.NAME)
        assert await sentinel.master_address(here, secure.NAME, tls=True) == ("127.0.0.1", secure.master_port())
        env = {
            "REDIS_URL": secure.url,
            "PEERJS_REDIS_SENTINELS": secure.sentinels,
            "PEERJS_REDIS_SENTINEL_MASTER": secure.NAME,
            "PEERJS_REDIS_SENTINEL_TLS": "1",
        }
        await _every_client_answers(conf.from_environ(env))
        cluster = Cluster(secure, server="uvicorn", env={**env, "SSL_CERT_FILE": str(certificates.ca)})
        try:
            a, b = await connect(cluster.workers[0]), await connect(cluster.workers[1])
            await roundtrip(a, b)
            await roundtrip(b, a)
            for worker in cluster.workers:
                status, _headers, body = worker.get("/readyz")
                assert status == 200 and json.loads(body)["redis"] == "ok", body
        finally:
            cluster.stop()
    finally:
        secure.stop()


async def _every_client_answers(peerjs):
    """The bus, the redis-py client of the rate limits and /readyz, and channels-redis each round-trip through Redis."""
    bus = RedisBatchLayer(**conf.bus_layer(peerjs)["peerjs"]["CONFIG"])
    try:
        channel = await bus.new_channel()
        await asyncio.wait_for(bus.listen(channel), 10)  # it subscribes again and again if it cannot
        await asyncio.wait_for(bus.send(channel, {"n": 1}), 10)  # returns once a subscriber took it
        assert await asyncio.wait_for(bus.receive(channel), 10) == {"n": 1}
    finally:
        await bus.flush()
    client = sentinel.client(conf._validated(peerjs))
    try:
        assert await client.ping()
    finally:
        await client.aclose()
    groups = RedisChannelLayer(**conf.channel_layers(peerjs)["default"]["CONFIG"])
    try:
        channel = await groups.new_channel()
        await groups.send(channel, {"type": "cue"})
        assert await asyncio.wait_for(groups.receive(channel), 10) == {"type": "cue"}
    finally:
        await groups.flush()
        await groups.close_pools()


class Stream:
    """``a`` streams numbered CANDIDATEs to ``b`` (on another worker) until :meth:`finish`; what ``b`` gets and
    the EXPIREs ``a`` hears are kept, as in tests/test_cluster.py's Redis restart."""

    def __init__(self, a, b):
        self.a, self.b = a, b
        self.received, self.expired, self.sent = [], [], 0
        self.stop = asyncio.Event()
        self.tasks = [asyncio.create_task(job) for job in (collect(b, self.received), self._expires(), self._stream())]

    async def _expires(self):
        with contextlib.suppress(websockets.ConnectionClosed):
            while True:
                frame = json.loads(await self.a.ws.recv())
                assert frame == {"type": "EXPIRE", "src": self.b.peer_id, "dst": self.a.peer_id}, frame
                self.expired.append(frame)

    async def _stream(self):
        while not self.stop.is_set():
            await self.a.relay("CANDIDATE", self.b.peer_id, self.sent)
            self.sent += 1
            await asyncio.sleep(0.005)  # pacing the traffic, not synchronising

    async def resumed(self):
        """Return once frames sent from now on arrive (the workers reconnected on their own)."""
        now = self.sent
        await _until(lambda: any(n > now for n in self.received), GAP_TIMEOUT)

    async def finish(self):
        """Stop; assert every frame arrived, once and in order, or its sender heard EXPIRE; the frames neither arrived."""
        self.stop.set()
        await self.tasks[2]
        # The last frame's arrival says everything before it was handled.
        await self.a.relay("CANDIDATE", self.b.peer_id, "end")
        await _until(lambda: "end" in self.received)
        self.received.remove("end")
        if set(range(self.sent)) - set(self.received):
            # What was lost with the master is answered at once, or after ack_timeout (2 s).
            await _until(lambda: self.expired)
        for job in self.tasks[:2]:
            if job.done():
                job.result()  # what failed in it (a frame to a that was no EXPIRE about b)
            job.cancel()
        return assert_accounted(self.sent, [self.received], self.expired)


async def test_master_killed_mid_stream_every_frame_arrives_or_its_sender_hears_expire_and_readiness_shows_the_gap(
    cluster, sentinel_set
):
    sentinel_set.replace_killed()  # a replica to promote, whatever ran before
    w1, w2 = cluster.workers
    a, b = await connect(w1), await connect(w2)
    await roundtrip(b, a)
    probes = {w1: [], w2: []}  # worker -> [(seconds since the kill or None before it, status, body)]
    killed_at = None

    async def probe(worker):
        while not stream.stop.is_set():
            status, body = await asyncio.to_thread(readyz, worker)
            probes[worker].append((None if killed_at is None else time.monotonic() - killed_at, status, body))
            await asyncio.sleep(0.1)  # pacing the probes, as an orchestrator's period

    stream = Stream(a, b)
    probing = [asyncio.create_task(probe(worker)) for worker in probes]
    try:
        await _until(lambda: len(stream.received) >= 100)
        old = sentinel_set.kill_master()
        killed_at = time.monotonic()
        await _until(lambda: sentinel_set.master_port() != old, GAP_TIMEOUT, interval=0.1)
        promoted = time.monotonic() - killed_at
        await stream.resumed()
        # And both workers say they are ready again.
        await _until(lambda: all(p and p[-1][0] is not None and p[-1][1] == 200 for p in probes.values()), GAP_TIMEOUT)
    finally:
        missing = await stream.finish()
        await asyncio.gather(*probing)

    for worker, seen in probes.items():
        assert all(status == 200 for since, status, _ in seen if since is None), f"{worker.log_path.name} unready before the kill"
        gap = [(since, body) for since, status, body in seen if status == 503]
        assert gap, f"{worker.log_path.name}'s /readyz never showed the failover"
        assert all(body["redis"].startswith("unreachable") and body["database"] == "ok" for _, body in gap), gap
        assert seen[-1][1] == 200 and seen[-1][2]["redis"] == "ok"
    print(
        f"Sentinel failover mid-stream: promoted after {promoted:.1f} s; {stream.sent} sent, "
        f"{len(stream.received)} arrived, {len(missing)} answered with EXPIRE ({len(stream.expired)} EXPIREs); "
        "/readyz 503 until " + ", ".join(f"{max(s for s, st, _ in seen if st == 503):.1f} s" for seen in probes.values())
    )

    # The rate limits count on the new master again, across both workers.
    new_master = sentinel_set.master_port()
    for worker in (w1, w2):
        await _counting_on(worker, sentinel_set, new_master)
    crowded = address()
    for worker in (w1, w2, w1):
        assert _fetch_id(worker, crowded)[0] == 200
    assert _fetch_id(w2, crowded)[0] == 429
    assert sentinel_set.cli(new_master, "GET", f"peerjs:rate:id:{crowded}").strip() == "4"


async def test_a_planned_failover_with_the_old_master_alive_loses_no_frame_silently(cluster, sentinel_set):
    """SENTINEL FAILOVER (maintenance): the old master lives on, and the workers leave it.

    Until the sentinel turns the old master into a replica (seconds after the
    promotion) it still answers as a master, and a worker may still be on it:
    what it sends to a worker on the new master reaches nobody and is answered
    with EXPIRE. Then the sentinel closes its clients' connections, and they
    reconnect to the new master.
    """
    sentinel_set.replace_killed()
    w1, w2 = cluster.workers
    a, b = await connect(w1), await connect(w2)
    await roundtrip(b, a)
    old = sentinel_set.master_port()
    names = dict(cluster.database.query("SELECT pid, name FROM signaling_worker"))
    inboxes = ["{" + inbox_name(names[worker.proc.pid]) + "}" for worker in (w1, w2)]
    stream = Stream(a, b)
    try:
        await _until(lambda: len(stream.received) >= 100)
        assert sentinel_set.cli(sentinel_set.sentinel_port, "SENTINEL", "FAILOVER", sentinel_set.NAME).strip() == "OK"
        await _until(lambda: sentinel_set.master_port() != old, GAP_TIMEOUT, interval=0.1)
        new = sentinel_set.master_port()
        await _until(lambda: sentinel_set.cli(old, "ROLE").split()[0] == "slave", GAP_TIMEOUT, interval=0.1)
        # Both inboxes move to the new master, and frames cross there.
        await _until(lambda: all(_subscribers(sentinel_set, new, inbox) == 1 for inbox in inboxes), GAP_TIMEOUT, interval=0.1)
        await stream.resumed()
    finally:
        missing = await stream.finish()
    print(f"Planned failover mid-stream: {stream.sent} sent, {len(missing)} answered with EXPIRE")
    assert [_subscribers(sentinel_set, old, inbox) for inbox in inboxes] == [0, 0]
    for worker in (w1, w2):
        await _counting_on(worker, sentinel_set, new)


def _subscribers(sentinel_set, port, channel):
    return int(sentinel_set.cli(port, "PUBSUB", "SHARDNUMSUB", channel).split()[1])


def _fetch_id(worker, client):
    return worker.get(f"{BASE}/peerjs/id", headers={"X-Forwarded-For": client})


async def _counting_on(worker, sentinel_set, master):
    """Return once ``worker``'s rate limits count on ``master``: after an outage a worker counts alone for a moment."""
    deadline = time.monotonic() + GAP_TIMEOUT
    while True:
        client = address()
        assert _fetch_id(worker, client)[0] == 200
        if sentinel_set.cli(master, "EXISTS", f"peerjs:rate:id:{client}").strip() == "1":
            return
        assert time.monotonic() < deadline, f"{worker.log_path.name} does not count on the new master"
        await asyncio.sleep(0.1)  # pacing the polls


async def _until(predicate, timeout=20, interval=0.01):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(interval)
