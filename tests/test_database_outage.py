"""The database goes away under a cluster of production workers (uvicorn), and comes back.

Real processes throughout: a private PostgreSQL server that the tests stop
and start (never the machine's own), a private redis-server, and workers
started as production starts them (deploy/worker-entrypoint.sh). The tests
assert outcomes; how long anything takes is the benchmark's business.

What must hold (docs/cluster.md, "When the database is away"): sockets that
are open stay open and keep relaying across workers (the directory is in
memory); what needs the registry or the queue is answered plainly (a new
socket hears ERROR "try again" and 1013, /id and /peers 503 with
Retry-After, a frame for an offline peer EXPIRE); each worker logs the
outage once and its end once; no worker is reaped and no socket closed
because the database was away for everyone; everything recovers on its own.
"""
import asyncio
import contextlib
import os
import re
import signal
import socket
import threading
import time
import urllib.request
from pathlib import Path

import psycopg
import pytest

from tests.client import connect, roundtrip, uid
from tests.conftest import TEST_ENV
from tests.servers import BASE, Database, RedisServer, Worker, wait_until

# These tests bring their own PostgreSQL (the one they stop): the PostgreSQL
# pass of scripts/test.sh leaves them out (own_postgres) rather than run them twice.
pytestmark = [pytest.mark.cluster, pytest.mark.own_postgres]

TRY_AGAIN = 1013  # uvicorn sends the standard code (daphne: 4013)
UNREACHABLE = "database unreachable"
REACHABLE = "database reachable again"
WORKER_TIMEOUT = int(TEST_ENV["PEERJS_WORKER_TIMEOUT"]) / 1000
WORKER_BEAT = int(TEST_ENV["PEERJS_WORKER_BEAT"]) / 1000


class OutageCluster:
    """Production workers on a database of the private PostgreSQL server, sharing ``redis``."""

    def __init__(self, postgres, redis, count, env=None):
        self.postgres = postgres
        self.database = Database(postgres.admin_url)
        env = {**TEST_ENV, "REDIS_URL": redis.url, "PEERJS_ALLOW_DISCOVERY": "1", **(env or {})}
        self.workers = []
        try:
            for n in range(count):
                self.workers.append(Worker(self.database, env, server="uvicorn", name=f"w{n}"))
        except BaseException:
            self.stop()
            raise

    def stop(self):
        for worker in self.workers:
            worker.stop()
        self.database.drop()

    @contextlib.contextmanager
    def database_down(self):
        """PostgreSQL stopped: connections are refused at once."""
        self.postgres.stop()
        try:
            yield
        finally:
            self.postgres.start()

    @contextlib.contextmanager
    def database_frozen(self):
        """PostgreSQL frozen (every process of it stopped): queries hang, as behind a dead link."""
        # The postmaster first, so that it forks nothing after its children
        # are listed; a backend may still exit (its client gone) before its turn.
        postmaster, *_ = postgres_pids(self.postgres)
        os.kill(postmaster, signal.SIGSTOP)
        pids = postgres_pids(self.postgres)
        for pid in pids[1:]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
        try:
            yield
        finally:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)

    def worker_names(self):
        return sorted(name for (name,) in self.database.query("SELECT name FROM signaling_worker"))

    def registered(self):
        return dict(self.database.query("SELECT peer_id, worker FROM signaling_peer"))


def postgres_pids(pg):
    """The postmaster of the private server and every process it started."""
    postmaster = int(Path(pg.dir, "data", "postmaster.pid").read_text().split()[0])
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == postmaster:
                children.append(int(stat.parent.name))
    return [postmaster, *children]


@pytest.fixture
def outage_cluster(private_postgres, redis_server):
    clusters = []

    def make(count, redis=None, env=None):
        cluster = OutageCluster(private_postgres, redis or redis_server, count, env)
        clusters.append(cluster)
        return cluster

    yield make
    for cluster in clusters:
        cluster.stop()


async def told_to_try_again(worker):
    """A new socket on ``worker`` hears ERROR 'try again' and is closed with 1013."""
    client = await connect(worker, expect_open=False)
    code, frames = await client.closed()
    assert [frame["type"] for frame in frames] == ["ERROR"], frames
    assert "try again" in frames[0]["payload"]["msg"]
    assert code == TRY_AGAIN
    return True


async def opens_again(worker, timeout=30):
    """Once the database is back, a new socket on ``worker`` gets OPEN (until then, 'try again')."""
    deadline = time.monotonic() + timeout
    while True:
        client = await connect(worker, expect_open=False)
        frame = await client.recv()
        if frame["type"] == "OPEN":
            return client
        assert frame["type"] == "ERROR" and "try again" in frame["payload"]["msg"], frame
        assert time.monotonic() < deadline, f"{worker.http} did not open sockets again"
        await client.closed()
        await asyncio.sleep(0.2)


def assert_unavailable(worker, path):
    status, headers, body = worker.get(path)
    assert status == 503, (path, status, body)
    assert int(headers["Retry-After"]) > 0
    assert "try again" in body


def assert_outage_logged_once(worker):
    log = worker.read_log()
    assert log.count(UNREACHABLE) == 1, log
    assert log.count(REACHABLE) == 1, log
    assert "Traceback" not in log, log


async def test_with_the_database_down_every_path_answers_and_each_worker_logs_it_once(outage_cluster):
    cluster = outage_cluster(3)
    w1, w2, w3 = cluster.workers
    a, a2, b, c = await connect(w1), await connect(w1), await connect(w2), await connect(w3)
    await roundtrip(a, b)
    with cluster.database_down():
        # Sockets that need the registry: a plain 'try again', on every worker.
        for worker in cluster.workers:
            assert await told_to_try_again(worker)
        # HTTP that needs it: 503 with Retry-After (an app never read before too).
        for worker in cluster.workers:
            assert_unavailable(worker, f"{BASE}/peerjs/id")
            assert_unavailable(worker, f"{BASE}/peerjs/peers")
            assert_unavailable(worker, f"{BASE}/never-read-before/peers")
            assert worker.get(f"{BASE}/")[0] == 200  # what needs no database still answers
        # Relaying needs no database, across workers and on one.
        await roundtrip(a, b)
        await roundtrip(b, a)
        await roundtrip(c, a2)
        await roundtrip(a, a2)
        # A frame for a peer nobody holds needs the queue: its sender hears EXPIRE.
        nobody = uid()
        await a.relay("OFFER", nobody, "into the queue?")
        assert await a.recv() == {"type": "EXPIRE", "src": nobody, "dst": a.peer_id}
        await b.relay("CANDIDATE", nobody, "from another worker")
        assert await b.recv() == {"type": "EXPIRE", "src": nobody, "dst": b.peer_id}
        # Every worker has met the outage (its beats fail) before it ends.
        for worker in cluster.workers:
            wait_until(lambda worker=worker: UNREACHABLE in worker.read_log(), 10, "the outage to be logged")
    # Everything comes back on its own.
    for worker in cluster.workers:
        await opens_again(worker)
        # Every registry thread and the HTTP thread meet the database again:
        # connections the outage broke must not count as a second outage.
        clients = await asyncio.gather(*(connect(worker) for _ in range(12)))
        await roundtrip(clients[0], a)
        assert worker.get(f"{BASE}/peerjs/id")[0] == 200
        assert worker.get(f"{BASE}/peerjs/peers")[0] == 200
    later = uid()
    await a.relay("OFFER", later, "queued again")
    await roundtrip(a, a2)
    late = await connect(w2, peer_id=later)
    assert (await late.recv())["payload"] == "queued again"
    for worker in cluster.workers:
        wait_until(lambda worker=worker: REACHABLE in worker.read_log(), 10, "the recovery to be logged")
        assert_outage_logged_once(worker)


@pytest.mark.parametrize("how", ["stopped", "frozen", "stalled"])
async def test_an_outage_twice_the_worker_timeout_closes_no_socket_and_reaps_no_worker(outage_cluster, how):
    """Stopped, the database refuses every beat; frozen, beats hang until their deadline, then fail
    alike; stalled (frozen for less than the deadline), beats hang and end late, all at once."""
    timeout = "20000" if how == "stalled" else "2000"
    cluster = outage_cluster(3, env={"PEERJS_DATABASE_TIMEOUT": timeout})
    names = cluster.worker_names()
    assert len(names) == 3
    peers = [await connect(worker) for worker in cluster.workers for _ in range(2)]
    leaver = await connect(cluster.workers[1])
    with cluster.database_down() if how == "stopped" else cluster.database_frozen():
        await leaver.close()  # its row cannot go now: it goes once the database is back
        await asyncio.sleep(2 * WORKER_TIMEOUT)
        await roundtrip(peers[0], peers[2])
    for worker in cluster.workers:
        await opens_again(worker)
    # Long enough for any worker to reap: its beats have run without a gap
    # for longer than the worker timeout.
    await asyncio.sleep(WORKER_TIMEOUT + 4 * WORKER_BEAT)
    # No socket was closed: every old peer relays to every other, both ways, across workers.
    for sender in peers:
        for receiver in peers:
            if sender is not receiver:
                await roundtrip(sender, receiver)
    # No worker was reaped, nor believed it was; every row is still there.
    assert cluster.worker_names() == names
    registered = cluster.registered()
    assert all(peer.peer_id in registered for peer in peers)
    wait_until(lambda: leaver.peer_id not in cluster.registered(), 10, "the release missed in the outage")
    for worker in cluster.workers:
        log = worker.read_log()
        assert "reaped" not in log and "Traceback" not in log, log
        if how == "stalled":  # nothing failed: the beats stalled, and the worker said so
            assert UNREACHABLE not in log and "between beats (the database stalled)" in log, log
            continue
        # Frozen, the database is not waited on: its calls fail at their deadline.
        assert log.count(UNREACHABLE) == 1 and log.count(REACHABLE) == 1, log
        if how == "frozen":
            assert "no answer within 2 s" in log, log
    # The id the leaver held is free again, for anyone.
    await connect(cluster.workers[2], peer_id=leaver.peer_id, token="someone-else")


async def test_a_lock_held_on_its_peers_rows_does_not_stop_a_worker_s_beat(outage_cluster):
    """Another transaction (an operator's, a migration's) holds a lock on the row of a worker's peer:
    the worker's last-seen write of it waits, up to the database deadline. Its beat goes on beside it,
    so the other worker does not take it for dead, and its sockets stay open."""
    cluster = outage_cluster(2, env={"PEERJS_DATABASE_TIMEOUT": "20000", "PEERJS_LAST_SEEN_INTERVAL": "500"})
    names = cluster.worker_names()
    held, other = await connect(cluster.workers[1]), await connect(cluster.workers[0])

    async def heartbeats():  # heard from at every beat: its last-seen time is due at every beat
        while True:
            await held.send({"type": "HEARTBEAT"})
            await asyncio.sleep(WORKER_BEAT / 5)

    beating = asyncio.create_task(heartbeats())
    try:
        with psycopg.connect(cluster.database.url) as lock:
            lock.execute("SELECT 1 FROM signaling_peer WHERE peer_id = %s FOR UPDATE", (held.peer_id,))
            waiting = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
            for _ in range(200):
                if cluster.database.query(waiting)[0][0]:
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("the worker's last-seen write never waited on the lock")
            await asyncio.sleep(2 * WORKER_TIMEOUT)  # longer than any worker may stay silent
            await roundtrip(held, other)
            await roundtrip(other, held)
            lock.rollback()
    finally:
        beating.cancel()
    assert cluster.worker_names() == names
    for worker in cluster.workers:
        log = worker.read_log()
        assert "reaped" not in log and "Traceback" not in log, log


async def test_a_frozen_database_is_answered_within_the_deadline_and_what_it_did_late_is_undone(outage_cluster):
    """PostgreSQL frozen mid-test (SIGSTOP): its sockets accept and never answer, as behind a dead link.

    Every call a worker makes has a deadline (PEERJS_DATABASE_TIMEOUT), so
    nothing waits for ever: not the opening sockets (more than the registry
    has threads and a worker opens at once), not /id, not a frame for the
    queue. Once the server resumes (SIGCONT), the claims it carried out for
    sockets long told to try again are undone, and the frames they took from
    the queue reach their peer after all.
    """
    deadline = 1.5
    cluster = outage_cluster(2, env={
        "PEERJS_DATABASE_TIMEOUT": str(int(deadline * 1000)),
        # Queued frames must outlive the freeze: their fate is the test's point.
        "PEERJS_EXPIRE_TIMEOUT": "60000",
    })
    w1, w2 = cluster.workers
    a, a2, b, sender = await connect(w1), await connect(w1), await connect(w2), await connect(w1)
    await roundtrip(a, b)
    # A frame waits in the queue for x, who opens during the freeze.
    x = uid("x")
    await sender.relay("OFFER", x, "queued before the freeze")
    wait_until(lambda: cluster.database.query("SELECT count(*) FROM signaling_queuedmessage")[0][0] == 1,
               10, "the frame to be queued")
    opened_in_freeze = [x]
    with cluster.database_frozen():
        # x's claim reaches the database and hangs there: x hears 'try again'.
        started = time.monotonic()
        assert await told_to_try_again_as(w1, x)
        # An open waits at most for the app's settings and for its claim.
        assert time.monotonic() - started < 2 * deadline + 2
        # More sockets than the registry's threads and the opening slots
        # (16): each is answered, none waits for ever.
        wave = [uid("w") for _ in range(24)]
        opened_in_freeze += wave
        started = time.monotonic()
        assert all(await asyncio.gather(*(told_to_try_again_as(w1, peer_id) for peer_id in wave)))
        assert time.monotonic() - started < 2 * deadline + 3
        # Now the workers know their database hangs (w2 from a call of its
        # own, such as its expiry sweep, timing out): a socket is answered at
        # once, and so is one refused from memory (a bad id).
        wait_until(lambda: database_errors(w2) >= 1, 10, "w2 to find its database hung")
        started = time.monotonic()
        assert await told_to_try_again_as(w2, uid())
        assert await told_to_try_again_as(w1, uid())
        bad = await connect(w1, peer_id="bad--id", expect_open=False)
        code, frames = await bad.closed()
        assert code == 1008 and frames[0]["type"] == "ERROR" and "id" in frames[0]["payload"]["msg"].lower(), frames
        assert time.monotonic() - started < deadline, "sockets waited behind the hung database"
        # /id and /peers: 503 with Retry-After, once the connection timeout
        # (the deadline, 2 s at least) has passed.
        for worker, path in ((w1, "id"), (w2, "peers"), (w1, "peers"), (w2, "id")):
            started = time.monotonic()
            assert_unavailable(worker, f"{BASE}/peerjs/{path}")
            assert time.monotonic() - started < max(2, deadline) + 1.5
        # A frame for the queue: EXPIRE, not silence.
        nobody = uid()
        await a.relay("OFFER", nobody, "into a frozen queue?")
        assert await a.recv(timeout=deadline + 5) == {"type": "EXPIRE", "src": nobody, "dst": a.peer_id}
        # Relaying needs no database, on one worker and across workers.
        await roundtrip(a, a2)
        await roundtrip(a2, a)
        await roundtrip(a, b)
        await roundtrip(b, a)
    # Back by itself.
    for worker in cluster.workers:
        await opens_again(worker)
    # Every id opened in the freeze is free again, for anyone: the claims the
    # database carried out on resuming were let go. x gets the frame its late
    # claim took from the queue.
    for peer_id in opened_in_freeze:
        client = await claims_when_free(w2, peer_id)
        if peer_id == x:
            frame = await client.recv()
            assert frame == {"type": "OFFER", "src": sender.peer_id, "dst": x, "payload": "queued before the freeze"}
        await client.close()
    # Queued signaling works again.
    later = uid()
    await a.relay("OFFER", later, "queued after the freeze")
    await roundtrip(a, a2)
    late = await connect(w2, peer_id=later)
    assert (await late.recv())["payload"] == "queued after the freeze"
    # Every frame accounted for: nobody heard anything more.
    for client in (a, a2, b, sender):
        with pytest.raises(asyncio.TimeoutError):
            await client.recv(timeout=0.5)
    for worker in cluster.workers:
        wait_until(lambda worker=worker: REACHABLE in worker.read_log(), 10, "the recovery to be logged")
        log = worker.read_log()
        assert log.count(UNREACHABLE) == 1 and "no answer within" in log, log
        assert "Traceback" not in log and "reaped" not in log, log


def database_errors(worker):
    """The worker's count of failed database calls, from its /metrics."""
    with urllib.request.urlopen(f"{worker.http}/metrics", timeout=10) as response:
        text = response.read().decode()
    return float(re.search(r"^peerjs_database_errors_total (\S+)$", text, re.MULTILINE).group(1))


async def told_to_try_again_as(worker, peer_id):
    client = await connect(worker, peer_id=peer_id, expect_open=False)
    code, frames = await client.closed(timeout=30)
    assert [frame["type"] for frame in frames] == ["ERROR"], frames
    assert "try again" in frames[0]["payload"]["msg"]
    assert code == TRY_AGAIN
    return True


async def claims_when_free(worker, peer_id, timeout=15):
    """A stranger (a new token) opens ``peer_id`` once its row is gone; 'ID-TAKEN' until then."""
    deadline = time.monotonic() + timeout
    while True:
        client = await connect(worker, peer_id=peer_id, expect_open=False)
        frame = await client.recv()
        if frame["type"] == "OPEN":
            return client
        assert frame["type"] == "ID-TAKEN", frame
        assert time.monotonic() < deadline, f"{peer_id} stayed taken after the database came back"
        await client.closed()
        await asyncio.sleep(0.2)


class CuttableProxy:
    """A TCP proxy to the database for one worker: cut it, and that worker alone loses the database."""

    def __init__(self, port):
        self.target = port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.cut_off = False
        self.open = set()
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.cut_off:
                client.close()
                continue
            server = socket.create_connection(("127.0.0.1", self.target))
            with self.lock:
                self.open.update({client, server})
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, source, sink):
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def cut(self):
        self.cut_off = True
        with self.lock:
            for sock in self.open:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            self.open.clear()

    def restore(self):
        self.cut_off = False

    def close(self):
        self.cut()
        self.listener.close()


async def test_a_worker_that_alone_loses_the_database_is_reaped_and_its_peers_reconnect(outage_cluster, private_postgres):
    """What README says of it: it keeps relaying, the healthy workers reap it, and when it learns
    that it was reaped it closes its sockets (4103) so that its peers reconnect elsewhere."""
    proxy = CuttableProxy(private_postgres.port)
    try:
        cluster = outage_cluster(2)
        healthy = list(cluster.workers)
        url = cluster.database.url.replace(f":{private_postgres.port}/", f":{proxy.port}/")
        alone = Worker(cluster.database, {**TEST_ENV, "REDIS_URL": healthy[0].env["REDIS_URL"], "DATABASE_URL": url},
                       server="uvicorn", name="alone")
        cluster.workers.append(alone)
        ((alone_name,),) = cluster.database.query("SELECT name FROM signaling_worker WHERE pid = ?", (alone.proc.pid,))
        x, y, z = await connect(alone), await connect(healthy[0]), await connect(healthy[1])
        await roundtrip(x, y)
        await roundtrip(z, x)
        proxy.cut()
        # Alone without its database: it relays on, with every worker, but opens nothing.
        await roundtrip(x, y)
        await roundtrip(y, x)
        assert await told_to_try_again(alone)
        await connect(healthy[0])  # the others open sockets as ever
        # The healthy workers take its silence for death and free its peers' ids.
        wait_until(lambda: alone_name not in cluster.worker_names(), 5 * WORKER_TIMEOUT, "the lone worker to be reaped")
        assert x.peer_id not in cluster.registered()
        assert "reaped workers" in healthy[0].read_log() + healthy[1].read_log()
        proxy.restore()
        # Its database back, it finds itself reaped and closes its sockets: its peers reconnect elsewhere.
        code, _ = await x.closed(timeout=5 * WORKER_TIMEOUT)
        assert code == 4103
        assert "was reaped while alive" in alone.read_log()
        back = await connect(healthy[1], peer_id=x.peer_id, token=x.token)
        await roundtrip(back, y)
        await roundtrip(y, z)  # the healthy workers' sockets never closed
        await roundtrip(z, y)
    finally:
        proxy.close()


async def test_under_daphne_a_new_socket_is_told_to_try_again_with_4013(private_postgres):
    """daphne lets applications send only 1000 and 3000-4999: 1013 arrives as 4013 (manage.py runserver)."""
    database = Database(private_postgres.admin_url)
    worker = Worker(database, TEST_ENV, server="daphne", name="daphne-outage")
    try:
        a, b = await connect(worker), await connect(worker)
        private_postgres.stop()
        try:
            client = await connect(worker, expect_open=False)
            code, frames = await client.closed()
            assert [frame["type"] for frame in frames] == ["ERROR"] and "try again" in frames[0]["payload"]["msg"]
            assert code == 4013
            assert_unavailable(worker, f"{BASE}/peerjs/id")
            await roundtrip(a, b)
        finally:
            private_postgres.start()
        await opens_again(worker)
    finally:
        worker.stop()
        database.drop()


async def test_database_and_redis_down_together(outage_cluster):
    redis = RedisServer()
    try:
        cluster = outage_cluster(2, redis=redis)
        w1, w2 = cluster.workers
        a, a2, b = await connect(w1), await connect(w1), await connect(w2)
        await roundtrip(a, b)
        redis.stop()
        try:
            with cluster.database_down():
                # On one worker, signaling needs neither.
                await roundtrip(a, a2)
                await roundtrip(a2, a)
                # Across workers: EXPIRE to the sender, not silence.
                await a.relay("OFFER", b.peer_id, "across, during the outage")
                assert await a.recv() == {"type": "EXPIRE", "src": b.peer_id, "dst": a.peer_id}
                await b.relay("ANSWER", a.peer_id, "back, during the outage")
                assert await b.recv() == {"type": "EXPIRE", "src": a.peer_id, "dst": b.peer_id}
                # To nobody: EXPIRE too (the queue is in the database).
                nobody = uid()
                await a2.relay("CANDIDATE", nobody, "queued?")
                assert await a2.recv() == {"type": "EXPIRE", "src": nobody, "dst": a2.peer_id}
                assert await told_to_try_again(w2)
        finally:
            redis.start()
        # Both come back: new sockets open, and the old peers relay across workers again.
        for worker in cluster.workers:
            await opens_again(worker)
        deadline = time.monotonic() + 30
        while True:
            await a.relay("CANDIDATE", b.peer_id, "back?")
            try:
                frame = await b.recv(timeout=1)
                while frame == {"type": "EXPIRE", "src": a.peer_id, "dst": b.peer_id}:
                    # A late second notice about the ANSWER of the outage (its
                    # send was refused and its batch failed too): still no silence.
                    frame = await b.recv(timeout=1)
                break
            except asyncio.TimeoutError:
                assert time.monotonic() < deadline, "cross-worker signaling did not resume"
                assert (await a.recv())["type"] == "EXPIRE"  # the attempt that failed was answered
        assert frame == {"type": "CANDIDATE", "src": a.peer_id, "dst": b.peer_id, "payload": "back?"}
        await roundtrip(b, a)
        c = await connect(w2)
        await roundtrip(c, a)
        await roundtrip(a, c)
        for worker in cluster.workers:
            wait_until(lambda worker=worker: REACHABLE in worker.read_log(), 10, "the recovery to be logged")
            log = worker.read_log()
            assert log.count(UNREACHABLE) == 1 and "reaped" not in log, log
    finally:
        redis.stop()
