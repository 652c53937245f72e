"""Several daphne workers sharing one Redis and one database behave as one PeerServer."""
import asyncio
import contextlib
import json
import os
import signal
import time
import urllib.parse
import urllib.request

import pytest
import websockets

from tests.admin_http import AdminSession, create_superuser
from tests.client import connect, roundtrip, uid
from tests.conftest import TEST_ENV
from signaling.bus.transport import inbox_name
from tests.servers import BASE, Database, RedisCluster, RedisServer, Worker, wait_until

pytestmark = pytest.mark.cluster
XDIST_GROUPS = "fixture:cluster"  # the rest start, stop or kill clusters of their own (tests/conftest.py)


class Cluster:
    def __init__(self, redis, count=2, env=None, server="daphne"):
        self.database = Database()
        self.env = {**TEST_ENV, "REDIS_URL": redis.url, **(env or {})}
        self.workers = [Worker(self.database, self.env, server=server, name=f"w{n}") for n in range(count)]

    def stop(self):
        for worker in self.workers:
            worker.stop()
        self.database.drop()

    def rows(self, peer_id):
        return self.database.query("SELECT worker FROM signaling_peer WHERE peer_id = ?", (peer_id,))


@pytest.fixture(scope="module")
def cluster(redis_server):
    """Two daphne workers shared by the module's tests, which keep apart by their ids."""
    cluster = Cluster(redis_server)
    yield cluster
    cluster.stop()


async def test_signaling_crosses_workers_both_ways(cluster):
    w1, w2 = cluster.workers
    a, b = await connect(w1), await connect(w2)
    await a.relay("OFFER", b.peer_id, {"sdp": "offer"})
    assert await b.recv() == {"type": "OFFER", "src": a.peer_id, "dst": b.peer_id, "payload": {"sdp": "offer"}}
    await b.relay("ANSWER", a.peer_id, {"sdp": "answer"})
    assert (await a.expect("ANSWER"))["payload"] == {"sdp": "answer"}
    for n in range(20):  # candidates keep their order across the hop
        await a.relay("CANDIDATE", b.peer_id, n)
    assert [(await b.expect("CANDIDATE"))["payload"] for _ in range(20)] == list(range(20))


async def test_under_load_every_frame_crosses_both_ways_once_and_in_order(redis_server):
    """Ten pairs split over two production workers stream at once, both ways, as fast as
    they can: what each peer gets from its partner is everything, once, in order."""
    cluster = Cluster(redis_server, server="uvicorn")
    try:
        w1, w2 = cluster.workers
        pairs = [(await connect(w1), await connect(w2)) for _ in range(10)]
        count, candidate = 200, "candidate:1 1 UDP 2122252543 192.0.2.1 54321 typ host " + "x" * 1400

        async def stream_to(sender, receiver):
            for n in range(count):
                await sender.relay("CANDIDATE", receiver.peer_id, [n, candidate])

        async def take(receiver, sender):
            got = []
            while len(got) < count:
                frame = await receiver.expect("CANDIDATE")
                assert frame["src"] == sender.peer_id
                got.append(frame["payload"][0])
            return got

        flows = [(a, b) for a, b in pairs] + [(b, a) for a, b in pairs]
        results = await asyncio.gather(
            *(stream_to(s, r) for s, r in flows), *(take(r, s) for s, r in flows)
        )
        for got in results[len(flows):]:
            assert got == list(range(count))
    finally:
        cluster.stop()


async def test_id_held_on_another_worker_is_taken(cluster):
    w1, w2 = cluster.workers
    holder = await connect(w1)
    thief = await connect(w2, peer_id=holder.peer_id, token="other", expect_open=False)
    assert (await thief.recv())["type"] == "ID-TAKEN"


@pytest.mark.postgres
async def test_the_same_id_claimed_on_two_workers_at_once_gets_one_open(cluster):
    w1, w2 = cluster.workers
    for _round in range(5):
        peer_id = uid()
        clients = await asyncio.gather(
            *(connect(w, peer_id=peer_id, token=f"t{n}", expect_open=False) for n, w in enumerate([w1, w2, w1, w2]))
        )
        assert sorted([(await c.recv())["type"] for c in clients]) == ["ID-TAKEN"] * 3 + ["OPEN"]


@pytest.mark.postgres
async def test_queued_messages_reach_a_peer_that_connects_to_another_worker(cluster):
    w1, w2 = cluster.workers
    a, later = await connect(w1), uid()
    await a.relay("OFFER", later, "first")
    await a.relay("CANDIDATE", later, "second")
    await roundtrip(a, await connect(w1))
    b = await connect(w2, peer_id=later)
    assert [(await b.recv())["payload"] for _ in range(2)] == ["first", "second"]
    await roundtrip(b, a)


@pytest.mark.postgres
async def test_expiry_sends_one_expire_whichever_worker_sweeps(cluster):
    w1, w2 = cluster.workers
    a, c, nobody = await connect(w1), await connect(w2), uid()
    for n in range(3):
        await a.relay("CANDIDATE", nobody, n)
    await c.relay("OFFER", nobody, "c")
    assert await a.recv(timeout=5) == {"type": "EXPIRE", "src": nobody, "dst": a.peer_id}
    assert await c.recv(timeout=5) == {"type": "EXPIRE", "src": nobody, "dst": c.peer_id}
    await roundtrip(c, a)  # the next frame each gets is fresh: no second EXPIRE
    await roundtrip(a, c)


@pytest.mark.postgres
async def test_discovery_and_concurrent_limit_count_the_whole_cluster(redis_server):
    cluster = Cluster(redis_server, env={"PEERJS_CONCURRENT_LIMIT": "2", "PEERJS_ALLOW_DISCOVERY": "1"})
    try:
        w1, w2 = cluster.workers
        a, b = await connect(w1), await connect(w2)
        for worker in (w1, w2):
            with urllib.request.urlopen(f"{worker.http}{BASE}/peerjs/peers", timeout=5) as response:
                assert sorted(json.load(response)) == sorted([a.peer_id, b.peer_id])
        c = await connect(w1, expect_open=False)
        assert (await c.recv())["payload"]["msg"] == "Server has reached its concurrent user limit"
    finally:
        cluster.stop()


@pytest.mark.postgres
async def test_relay_to_a_peer_that_left_another_worker_ends_in_expire(cluster):
    w1, w2 = cluster.workers
    for _round in range(5):
        a, b = await connect(w1), await connect(w2)
        await b.close()
        await a.relay("OFFER", b.peer_id, "too late")
        assert await a.recv(timeout=5) == {"type": "EXPIRE", "src": b.peer_id, "dst": a.peer_id}


@pytest.mark.postgres
async def test_sigkill_rows_are_reaped_and_ids_come_back_with_their_tokens(redis_server):
    cluster = Cluster(redis_server, count=3, env={"PEERJS_WORKER_TIMEOUT": "6000"})
    try:
        w1, w2, w3 = cluster.workers
        returning, vanished = await connect(w2), await connect(w2)
        sender, bystander = await connect(w1), await connect(w3)
        w2_ports = redis_server.ports_of(w2.proc.pid)
        w2.proc.kill()
        killed_at = time.monotonic()
        # A stranger cannot take an id whose owner may come back...
        thief = await connect(w1, peer_id=vanished.peer_id, token="stranger", expect_open=False)
        assert (await thief.recv())["type"] == "ID-TAKEN"
        # ...but the owner, reconnecting (PeerJS does on 'disconnected') to
        # another worker with its id and token, gets it back at once.
        back = await connect(w3, peer_id=returning.peer_id, token=returning.token)
        await roundtrip(bystander, back)
        # Sent while the dead worker still looks alive to the registry: its
        # inbox has no reader any more, so the frame comes back undelivered.
        wait_until(lambda: not w2_ports & redis_server.client_ports(), 10, "Redis to drop the dead worker's connections")
        await sender.relay("OFFER", vanished.peer_id, "into the void?")
        # The dead worker's rows are reaped within the worker timeout...
        wait_until(lambda: not cluster.rows(vanished.peer_id), 20, "the dead worker's rows to be reaped")
        reaped_after = time.monotonic() - killed_at
        print(f"rows reaped {reaped_after:.2f}s after SIGKILL (PEERJS_WORKER_TIMEOUT=6000, beat 500)")
        assert reaped_after < 6.0 + 2 * 0.5 + 2  # timeout + two beats + slack
        # ...and the message for the vanished peer ends as an EXPIRE to its sender.
        assert await sender.recv(timeout=10) == {"type": "EXPIRE", "src": vanished.peer_id, "dst": sender.peer_id}
        await connect(w1, peer_id=vanished.peer_id, token="stranger")  # the id is free now
        await roundtrip(bystander, sender)  # the other workers carried on throughout
    finally:
        cluster.stop()


@pytest.mark.parametrize("server, code", [("uvicorn", 1001), ("daphne", 4001)])
async def test_sigterm_closes_sockets_with_going_away_and_frees_rows_at_once(redis_server, server, code):
    cluster = Cluster(redis_server, server=server)
    try:
        w1, w2 = cluster.workers
        leaving, staying = await connect(w1), await connect(w2)
        w1.signal(signal.SIGTERM)
        closed_code, _ = await leaving.closed(timeout=10)
        # daphne (autobahn) lets applications send 1000 and 3000-4999 only: 4001 there.
        assert closed_code == code
        assert w1.proc.wait(15) is not None
        assert not cluster.rows(leaving.peer_id)  # removed before the worker exited
        back = await connect(w2, peer_id=leaving.peer_id, token=leaving.token)
        await roundtrip(staying, back)
    finally:
        cluster.stop()


async def test_redis_outage_keeps_what_does_not_need_it_and_recovers():
    redis_server = RedisServer()  # its own: it is stopped mid-test
    cluster = Cluster(redis_server)
    try:
        w1, w2 = cluster.workers
        a, a2, b = await connect(w1), await connect(w1), await connect(w2)
        await roundtrip(a, b)
        redis_server.stop()
        try:
            # Same worker: no Redis needed.
            await roundtrip(a, a2)
            # HTTP answers.
            with urllib.request.urlopen(f"{w1.http}{BASE}/peerjs/id", timeout=5) as response:
                assert response.status == 200
            # Across workers: a clear EXPIRE instead of silence or a hang.
            await a.relay("OFFER", b.peer_id, "during the outage")
            assert await a.recv(timeout=10) == {"type": "EXPIRE", "src": b.peer_id, "dst": a.peer_id}
        finally:
            redis_server.start()
        # Signaling resumes without restarting any worker.
        deadline = time.monotonic() + 20
        while True:
            await a.relay("CANDIDATE", b.peer_id, "back?")
            try:
                frame = await b.recv(timeout=1)
                break
            except asyncio.TimeoutError:
                assert time.monotonic() < deadline, "cross-worker signaling did not resume"
                # The attempt that failed was answered with EXPIRE; drain it.
                assert (await a.recv(timeout=5))["type"] == "EXPIRE"
        assert frame["payload"] == "back?"
        await roundtrip(b, a)
    finally:
        cluster.stop()
        redis_server.stop()


async def disconnect_in_the_admin(worker, database, client):
    """An operator of ``worker`` disconnects ``client`` (wherever it is): its socket closes with 4102."""
    admin = AdminSession(worker)
    assert admin.login(create_superuser(worker, "stage-manager-pw"), "stage-manager-pw").status == 200
    page = await asyncio.to_thread(
        admin.post, "/admin/signaling/peer/", {"action": "disconnect", "_selected_action": [database.peer_row(client.peer_id)]}
    )
    assert "Asked to disconnect 1 peer" in page.body
    code, _ = await client.closed(timeout=10)
    assert code == 4102


async def test_admin_disconnect_reaches_a_peer_on_another_worker_after_a_redis_restart():
    """Redis restarted without persistence forgets every Channels group: each hub joins its groups
    again (every beat), and an operator's Disconnect reaches the peer's worker once more."""
    redis_server = RedisServer()  # its own: it is restarted mid-test
    cluster = Cluster(redis_server)
    try:
        w1, w2 = cluster.workers
        await connect(w1)  # daphne starts a worker's hub, and with it its groups, at its first socket
        await disconnect_in_the_admin(w1, cluster.database, await connect(w2))
        redis_server.stop()
        redis_server.start()
        # Both hubs back in every hub's group (channels-redis keeps a group in the key asgi:group:NAME).
        await asyncio.to_thread(
            wait_until, lambda: redis_server.cli("ZCARD", "asgi:group:peerjs.hubs") == "2", 10, "the hubs to join again"
        )
        target, other = await connect(w2), await connect(w2)
        await disconnect_in_the_admin(w1, cluster.database, target)
        await roundtrip(await connect(w2), other)  # the others stay
    finally:
        cluster.stop()
        redis_server.stop()


async def test_after_a_redis_restart_the_hubs_join_their_groups_again_before_their_next_beat():
    """The beat is a minute long here: the hubs must not wait for it to be in their groups again, or
    every operator's Disconnect of that minute would be lost.

    The workers are stopped while Redis restarts: they hear of it only once
    it is back, as a busy worker may (a CI run's did), when a read tried again
    at once on a fresh connection would succeed and hide it."""
    redis_server = RedisServer()  # its own: it is restarted mid-test
    cluster = Cluster(redis_server, server="uvicorn", env={"PEERJS_WORKER_BEAT": "60000", "PEERJS_WORKER_TIMEOUT": "240000"})
    try:
        w1, w2 = cluster.workers
        joined = lambda: redis_server.cli("ZCARD", "asgi:group:peerjs.hubs") == "2"  # noqa: E731
        await asyncio.to_thread(wait_until, joined, 10, "the hubs to join")
        for worker in cluster.workers:
            worker.signal(signal.SIGSTOP)
        try:
            redis_server.stop()
            redis_server.start()
        finally:
            for worker in cluster.workers:
                worker.signal(signal.SIGCONT)
        await asyncio.to_thread(wait_until, joined, 15, "the hubs to join again")
        await disconnect_in_the_admin(w1, cluster.database, await connect(w2))
    finally:
        cluster.stop()
        redis_server.stop()


async def test_admin_disconnect_reaches_a_peer_on_another_worker(cluster):
    w1, w2 = cluster.workers
    target, other = await connect(w2), await connect(w2)
    admin = AdminSession(w1)
    assert admin.login(create_superuser(w1, "stage-manager-pw"), "stage-manager-pw").status == 200
    listing = admin.get("/admin/signaling/peer/").body
    assert target.peer_id in listing and other.peer_id in listing
    page = await asyncio.to_thread(
        admin.post, "/admin/signaling/peer/", {"action": "disconnect", "_selected_action": [cluster.database.peer_row(target.peer_id)]}
    )
    assert "Asked to disconnect 1 peer" in page.body
    code, _ = await target.closed(timeout=10)
    assert code == 4102
    wait_until(lambda: not cluster.rows(target.peer_id), 10, "the disconnected peer's row to go")
    await roundtrip(await connect(w1), other)  # the others stay


async def test_a_stopped_worker_takes_what_fits_in_flight_and_the_rest_is_answered_with_expire(redis_server):
    # A worker that stops reading (SIGSTOP) acknowledges nothing: past the
    # capacity of frames in flight to it, sends to it are refused once the
    # oldest has waited a second (sooner past four times the capacity).
    cluster = Cluster(
        redis_server,
        env={"REDIS_INBOX_CAPACITY": "100", "REDIS_ACK_TIMEOUT": "30000", "PEERJS_WORKER_TIMEOUT": "60000"},
    )
    try:
        w1, w2 = cluster.workers
        a, b, c = await connect(w1), await connect(w2), await connect(w1)
        w2.signal(signal.SIGSTOP)
        try:
            # a sends until it hears EXPIRE; a marker from c after each frame
            # brings whatever w1 answered before it.
            sent = expired = 0
            while not expired:
                await a.relay("CANDIDATE", b.peer_id, sent)
                sent += 1
                await c.relay("CANDIDATE", a.peer_id, "marker")
                while (frame := await a.recv())["type"] == "EXPIRE":
                    assert frame == {"type": "EXPIRE", "src": b.peer_id, "dst": a.peer_id}
                    expired += 1
                assert frame["payload"] == "marker"
        finally:
            w2.signal(signal.SIGCONT)
        # What was in flight (the capacity, less anything else sent to that
        # worker and not yet acknowledged) arrives in order once it reads
        # again; a marker behind it may be refused until w2's acknowledgements
        # reach w1 (its sender hears EXPIRE), so it is sent until it arrives.
        async def frames_until_end():
            delivered = []
            while (frame := await b.expect("CANDIDATE"))["payload"] != "end":
                delivered.append(frame["payload"])
            return delivered

        reading = asyncio.create_task(frames_until_end())
        while True:
            await a.relay("CANDIDATE", b.peer_id, "end")
            refusal = asyncio.create_task(a.recv())
            done, _ = await asyncio.wait({reading, refusal}, return_when=asyncio.FIRST_COMPLETED)
            if reading in done:
                refusal.cancel()
                break
            assert refusal.result() == {"type": "EXPIRE", "src": b.peer_id, "dst": a.peer_id}
        delivered = reading.result()
        # What was taken arrives, in order: at least the capacity (less what
        # else w2 had not acknowledged when it stopped: the announcements of a
        # and c), more until the oldest frame in flight to w2 had waited a
        # second, never past four times the capacity. The sender heard of the
        # first frame refused: a hub sends its EXPIREs at the end of the event
        # loop's turn, so c's marker, read in that same turn, may overtake it
        # by one frame.
        assert delivered == list(range(len(delivered))) and 95 <= len(delivered) <= 4 * 100
        assert len(delivered) < sent <= len(delivered) + 2
        # Said once, not once per refused frame (thousands a second under overload).
        assert w1.read_log().count("inbox full") == 1
    finally:
        cluster.stop()


async def test_a_worker_stopped_until_redis_drops_its_subscription_recovers_and_every_frame_is_accounted_for():
    """Redis disconnects a subscriber whose output buffer passes its limit and
    drops what it had buffered; the senders hear EXPIRE, nothing hangs."""
    redis = RedisServer(extra=["--client-output-buffer-limit", "pubsub 256kb 128kb 1"])
    cluster = Cluster(
        redis,
        # b's client reads what w2 delivers once it wakes only after the test's
        # next steps: its outbox may hold all of it meanwhile.
        env={"REDIS_ACK_TIMEOUT": "3000", "PEERJS_WORKER_TIMEOUT": "60000", "PEERJS_FLOOD_LIMIT": "0",
             "PEERJS_OUTBOX_MAX_BYTES": str(64 * 1024 * 1024)},
    )
    try:
        w1, w2 = cluster.workers
        a, b, c = await connect(w1), await connect(w2), await connect(w1)
        bulk = "x" * 4000
        w2.signal(signal.SIGSTOP)
        try:
            # 20 MB for a reader that takes nothing: more than the kernel's
            # socket buffers and Redis's limit for what it holds for a subscriber.
            for n in range(5000):
                await a.relay("CANDIDATE", b.peer_id, [n, bulk])
            await roundtrip(a, c)
            wait_until(lambda: "not acknowledged" in w1.read_log(), 20, "the sender to give up on what it sent")
        finally:
            w2.signal(signal.SIGCONT)
        assert "overcoming of output buffer limits" in redis.log_path.read_text()  # Redis dropped w2's subscription
        # The sender heard EXPIRE about b (once per batch of frames that did not arrive)...
        await c.relay("CANDIDATE", a.peer_id, "marker")
        expired = 0
        while (frame := await a.recv())["type"] == "EXPIRE":
            assert frame == {"type": "EXPIRE", "src": b.peer_id, "dst": a.peer_id}
            expired += 1
        assert frame["payload"] == "marker" and expired >= 1
        # ...signaling between them works again, and b got nothing twice nor out of order.
        # What a sends now may still meet the cap on what one sender may have
        # queued (the burst filled it while w2 was away): then a hears EXPIRE
        # and sends again, as a PeerJS client would reconnect.
        received = []

        async def until_end():
            while (frame := await b.expect("CANDIDATE"))["payload"][0] != "end":
                received.append(frame["payload"][0])

        ending = asyncio.create_task(until_end())
        while True:
            await a.relay("CANDIDATE", b.peer_id, ["end", ""])
            told = asyncio.create_task(a.recv())
            done, _ = await asyncio.wait({ending, told}, return_when=asyncio.FIRST_COMPLETED)
            if ending in done:
                told.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await told  # an EXPIRE it took meanwhile is one of the tolerated below
                break
            assert told.result() == {"type": "EXPIRE", "src": b.peer_id, "dst": a.peer_id}
            await asyncio.sleep(0.2)  # pacing the retries, not synchronising
        assert received == sorted(set(received)) and len(received) < 5000
        await b.relay("CANDIDATE", a.peer_id, "back")
        while (frame := await a.recv())["type"] == "EXPIRE":  # the last batches' timeouts may still come
            assert frame == {"type": "EXPIRE", "src": b.peer_id, "dst": a.peer_id}
        assert frame["payload"] == "back"
    except BaseException:
        for worker in cluster.workers:
            print(f"----- log of {worker.log_path.name} -----\n{worker.read_log()[-4000:]}")
        raise
    finally:
        cluster.stop()
        redis.stop()


async def test_workers_on_a_redis_cluster_relay_across_shards():
    """REDIS_CLUSTER=1: each worker's inbox lives on the shard of its hash slot, and
    workers whose inboxes are on different shards signal each other."""
    redis_cluster = RedisCluster()
    cluster = None
    try:
        cluster = Cluster(redis_cluster, count=3, env={"REDIS_CLUSTER": "1"}, server="uvicorn")
        names = dict(cluster.database.query("SELECT pid, name FROM signaling_worker"))
        shard = {w: redis_cluster.shard_of("{" + inbox_name(names[w.proc.pid]) + "}") for w in cluster.workers}
        for w in cluster.workers:  # the inbox really is subscribed there, and there only
            assert redis_cluster.subscribers(shard[w], "{" + inbox_name(names[w.proc.pid]) + "}") == 1
        w1 = cluster.workers[0]
        w2 = next((w for w in cluster.workers[1:] if shard[w] != shard[w1]), None)
        while w2 is None:  # all hashed to one shard (1 chance in 9): one more worker until one differs
            assert len(cluster.workers) < 12, "no worker's inbox hashed to another shard"
            extra = Worker(cluster.database, cluster.env, server="uvicorn", name=f"w{len(cluster.workers)}")
            cluster.workers.append(extra)
            names = dict(cluster.database.query("SELECT pid, name FROM signaling_worker"))
            shard[extra] = redis_cluster.shard_of("{" + inbox_name(names[extra.proc.pid]) + "}")
            w2 = extra if shard[extra] != shard[w1] else None
        a, b = await connect(w1), await connect(w2)
        await b.relay("OFFER", a.peer_id, {"sdp": "offer"})
        assert (await a.expect("OFFER"))["payload"] == {"sdp": "offer"}
        for n in range(50):
            await a.relay("CANDIDATE", b.peer_id, n)
        assert [(await b.expect("CANDIDATE"))["payload"] for _ in range(50)] == list(range(50))
        later = uid()
        await a.relay("OFFER", later, "queued")  # the queue and the drain cross shards too
        c = await connect(w2, peer_id=later)
        assert (await c.expect("OFFER"))["payload"] == "queued"
        # An operator's Disconnect: a group message on the default layer, channels-redis' pub/sub on a Cluster.
        await disconnect_in_the_admin(w1, cluster.database, c)
    finally:
        if cluster is not None:
            cluster.stop()
        redis_cluster.stop()


async def stream(sender, receiver_id, count, pause=0.005):
    """``count`` numbered CANDIDATEs from ``sender`` to ``receiver_id``, paced."""
    for n in range(count):
        await sender.relay("CANDIDATE", receiver_id, n)
        await asyncio.sleep(pause)  # pacing the traffic, not synchronising


async def collect(client, into):
    """Every CANDIDATE payload ``client`` gets, until its socket closes."""
    with contextlib.suppress(websockets.ConnectionClosed):
        while True:
            frame = json.loads(await client.ws.recv())
            if frame["type"] == "CANDIDATE":
                into.append(frame["payload"])


def assert_accounted(sent, received_lists, expired):
    """Every frame arrived, once and in order on each socket, or its sender heard EXPIRE about the peer."""
    for received in received_lists:
        assert received == sorted(received) and len(received) == len(set(received)), received
    arrived = [n for received in received_lists for n in received]
    assert len(arrived) == len(set(arrived)), "a frame arrived twice"
    missing = set(range(sent)) - set(arrived)
    assert not missing or expired, f"{len(missing)} frames neither arrived nor were answered with EXPIRE"
    return missing


async def test_sigkill_of_the_receiving_worker_mid_stream_loses_no_frame_silently(redis_server):
    cluster = Cluster(
        redis_server, count=3, server="uvicorn", env={"PEERJS_WORKER_TIMEOUT": "3000", "REDIS_ACK_TIMEOUT": "2000"}
    )
    try:
        w1, w2, w3 = cluster.workers
        a, b = await connect(w1), await connect(w2)
        await roundtrip(b, a)
        before, after = [], []
        reading = asyncio.create_task(collect(b, before))
        sending = asyncio.create_task(stream(a, b.peer_id, 300))
        while len(before) < 100:
            await asyncio.sleep(0.01)  # pacing the check, not synchronising: frames keep flowing
        w2.proc.kill()
        await reading  # b's socket went with its worker
        # PeerJS reconnects on 'disconnected': b comes back on a survivor with its id and token.
        b_again = await connect(w3, peer_id=b.peer_id, token=b.token)
        reading_again = asyncio.create_task(collect(b_again, after))
        await sending
        await a.relay("CANDIDATE", b.peer_id, "end")
        while "end" not in after:
            await asyncio.sleep(0.01)
        after.remove("end")
        expired = []
        with contextlib.suppress(asyncio.TimeoutError):
            while True:  # EXPIREs about b for what w2 took and never acknowledged come after ack_timeout
                frame = await a.recv(timeout=5)
                assert frame == {"type": "EXPIRE", "src": b.peer_id, "dst": a.peer_id}
                expired.append(frame)
        missing = assert_accounted(300, [before, after], expired)
        print(f"SIGKILL mid-stream: {len(before)} before, {len(after)} after, {len(missing)} answered with EXPIRE")
        reading_again.cancel()
    finally:
        cluster.stop()


async def test_redis_restarted_mid_stream_loses_no_frame_silently():
    redis_server = RedisServer()  # its own: it is restarted mid-test
    cluster = Cluster(redis_server, server="uvicorn", env={"REDIS_ACK_TIMEOUT": "2000"})
    try:
        w1, w2 = cluster.workers
        a, b = await connect(w1), await connect(w2)
        await roundtrip(b, a)
        received, expired = [], []
        reading = asyncio.create_task(collect(b, received))

        async def expires():
            with contextlib.suppress(websockets.ConnectionClosed):
                while True:
                    frame = json.loads(await a.ws.recv())
                    assert frame == {"type": "EXPIRE", "src": b.peer_id, "dst": a.peer_id}, frame
                    expired.append(frame)

        hearing = asyncio.create_task(expires())
        sending = asyncio.create_task(stream(a, b.peer_id, 400))
        while len(received) < 100:
            await asyncio.sleep(0.01)
        redis_server.stop()
        await asyncio.sleep(2)  # an outage longer than the publisher's retries, while frames keep coming
        redis_server.start()
        await sending
        # Once Redis is back, frames cross again (the worker resubscribes on its own).
        while True:
            await a.relay("CANDIDATE", b.peer_id, "end")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(_until(lambda: "end" in received), 2)
                break
        received[:] = [n for n in received if n != "end"]
        if set(range(400)) - set(received):
            # What was lost in the outage is answered at once, or after ack_timeout (2 s).
            await asyncio.wait_for(_until(lambda: expired), 10)
        missing = assert_accounted(400, [received], expired)
        print(f"Redis restart mid-stream: {len(received)} arrived, {len(missing)} answered with EXPIRE ({len(expired)} EXPIREs)")
        reading.cancel()
        hearing.cancel()
    finally:
        cluster.stop()
        redis_server.stop()


async def _until(predicate):
    while not predicate():
        await asyncio.sleep(0.01)
