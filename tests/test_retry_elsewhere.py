"""A worker that cannot register peers now leaves new sockets to the others, through nginx.

Open-source nginx learns a worker's health only from its answers. So a
worker whose database or Redis is away answers the handshake of a socket
nginx may send elsewhere (X-PeerJS-Retry-Elsewhere: 1, from a trusted
proxy, under uvicorn) with HTTP 503: nginx asks the next worker and takes
this one out for its fail_timeout. When every worker is unready, nginx's
last try leaves the header off and a worker answers as it always did:
ERROR "try again" and close 1013 (docs/cluster.md, "What nginx knows about the
workers' health").

Real processes throughout: uvicorn and daphne workers started as production
starts them, a private PostgreSQL server and redis-server, Debian's nginx
with the deployment's template, and tests/forwarder.py, a TCP forwarder
process between one worker and its database or Redis that the tests kill
(SIGKILL) so that this worker alone loses it.
"""
import asyncio
import time

import pytest
import websockets

from tests.client import connect, roundtrip
from tests.conftest import TEST_ENV
from tests.servers import BASE, Database, Forwarder, Nginx, Worker, wait_until
from tests.test_database_outage import REACHABLE, UNREACHABLE, assert_unavailable, told_to_try_again
from tests.test_metrics import samples, scrape, value

pytestmark = pytest.mark.cluster

RETRY_ELSEWHERE = {"X-PeerJS-Retry-Elsewhere": "1"}
PROXIED = {"PEERJS_PROXIED": "1"}  # behind a proxy on 127.0.0.1, the default trusted proxy
# Hardly anything but the sockets asks the database: no beat, sweep or bans'
# re-read comes between the outage and the first claim (only the directory's
# re-read every 10 s could), and the default app stays cached.
QUIET = {
    "PEERJS_WORKER_BEAT": "60000",
    "PEERJS_WORKER_TIMEOUT": "240000",
    "PEERJS_CLEANUP_OUT_MSGS": "60000",
    "PEERJS_BAN_REFRESH": "60000",
    "PEERJS_APP_CACHE": "600000",
}


def opened(worker, outcome):
    """peerjs_sockets_opened_total{outcome} on ``worker``'s own /metrics."""
    return value(samples(scrape(worker)), "peerjs_sockets_opened_total", outcome=outcome)


def database_errors(worker):
    return value(samples(scrape(worker)), "peerjs_database_errors_total")


async def turned_away(target, headers=RETRY_ELSEWHERE):
    """A new socket's handshake is answered 503 with Retry-After: the socket never opens."""
    with pytest.raises(websockets.InvalidStatus) as refused:
        await connect(target, expect_open=False, additional_headers=headers)
    response = refused.value.response
    assert response.status_code == 503, response
    assert int(response.headers["Retry-After"]) > 0
    return response.body.decode()


async def told_to_try_again_with(target, code, headers=RETRY_ELSEWHERE):
    """The socket opens (101), then hears ERROR 'try again' and is closed with ``code``."""
    client = await connect(target, expect_open=False, additional_headers=headers)
    closed_with, frames = await client.closed()
    assert [frame["type"] for frame in frames] == ["ERROR"], frames
    assert "try again" in frames[0]["payload"]["msg"]
    assert closed_with == code
    return True


@pytest.fixture
def worker_alone(private_postgres):
    """Start a worker whose database, on the private PostgreSQL server, it reaches through a
    Forwarder: kill the forwarder and this worker alone has lost its database."""
    databases, forwarders, workers = [], [], []

    def make(env=None, server="uvicorn"):
        databases.append(Database(private_postgres.admin_url))
        forwarders.append(Forwarder(private_postgres.port))
        env = {**TEST_ENV, **(env or {}), "DATABASE_URL": forwarders[-1].through(databases[-1].url)}
        workers.append(Worker(databases[-1], env, server=server, name="alone"))
        return workers[-1], forwarders[-1]

    yield make
    for worker in workers:
        worker.stop()
    for forwarder in forwarders:
        forwarder.kill()
    for database in databases:
        database.drop()


# --- one worker: who is turned away, and when ---------------------------------------


@pytest.mark.own_postgres
async def test_without_its_database_a_worker_turns_away_what_our_proxy_may_send_elsewhere(worker_alone):
    worker, forwarder = worker_alone({**PROXIED, **QUIET})
    # Healthy, a socket nginx marked opens and relays as any other; what the
    # registry refuses is still answered with frames (it is accepted for them).
    a = await connect(worker, additional_headers=RETRY_ELSEWHERE)
    b = await connect(worker)
    await roundtrip(a, b)
    await roundtrip(b, a)
    taken = await connect(worker, peer_id=a.peer_id, expect_open=False, additional_headers=RETRY_ELSEWHERE)
    assert await taken.closed() == (1008, [{"type": "ID-TAKEN", "payload": {"msg": "ID is taken"}}])
    bad = await connect(worker, peer_id="bad--id", expect_open=False, additional_headers=RETRY_ELSEWHERE)
    code, frames = await bad.closed()
    assert code == 1008 and [frame["type"] for frame in frames] == ["ERROR"], frames
    assert database_errors(worker) == 0

    forwarder.kill()
    # The worker has not noticed yet (QUIET): the first socket's claim finds
    # the database away, and the socket, not accepted yet, is turned away.
    assert "database" in await turned_away(worker)
    assert database_errors(worker) >= 1
    # Now the worker knows: the next one is turned away before any query.
    assert "database" in await turned_away(worker)
    # Without the header (nginx's last try, or a client of its own) it is
    # accepted and told to try again, as in any outage.
    assert await told_to_try_again_with(worker, 1013, headers={})
    assert opened(worker, "elsewhere") == 2 and opened(worker, "retry") == 1
    # Open sockets live on: relaying needs no database.
    await roundtrip(a, b)
    assert UNREACHABLE in worker.read_log()

    forwarder.start()
    # Its first successful call ends the outage (here a claim; in production
    # the beat, every PEERJS_WORKER_BEAT); from then on it takes sockets again.
    back = await connect(worker)
    assert REACHABLE in worker.read_log()
    again = await connect(worker, additional_headers=RETRY_ELSEWHERE)
    await roundtrip(again, back)


@pytest.mark.own_postgres
@pytest.mark.parametrize(
    "server, env, code",
    [
        ("uvicorn", {"PEERJS_PROXIED": "1", "PEERJS_TRUSTED_PROXIES": "192.0.2.1"}, 1013),
        ("uvicorn", {"PEERJS_PROXIED": "0"}, 1013),
        ("daphne", PROXIED, 4013),
    ],
    ids=["untrusted-sender", "not-proxied", "daphne"],
)
async def test_the_header_counts_only_from_our_proxy_on_a_server_that_can_deny(worker_alone, server, env, code):
    """A client that reaches the worker past the proxy (or a worker told it has none) cannot
    have itself turned away with the header; daphne cannot answer a handshake with a status."""
    worker, forwarder = worker_alone(env, server=server)
    await connect(worker, additional_headers=RETRY_ELSEWHERE)
    forwarder.kill()
    assert await told_to_try_again_with(worker, code)
    assert await told_to_try_again_with(worker, code)  # also once the worker knows its database is away
    assert opened(worker, "elsewhere") == 0


@pytest.mark.db
async def test_a_worker_that_cannot_hear_redis_turns_away_what_nginx_may_send_elsewhere(redis_server):
    """Its new peer would not hear what other workers send it. Without the header (the last
    try) the socket opens: registering a peer needs only the database."""
    forwarder = Forwarder(redis_server.port)
    worker = Worker(Database(), {**TEST_ENV, **PROXIED, "REDIS_URL": forwarder.through(redis_server.url)},
                    server="uvicorn", name="redis-alone")
    try:
        await connect(worker, additional_headers=RETRY_ELSEWHERE)
        forwarder.kill()
        # The worker's subscription breaks with the connection and cannot be
        # made again while the path is gone: it logs that.
        wait_until(lambda: "Redis subscription" in worker.read_log(), 10, "the worker to lose its subscription")
        assert "Redis" in await turned_away(worker)
        await connect(worker)  # OPEN, as ever
        forwarder.start()
        # Subscribed again (after a back-off of at most 2 s), it takes them again.
        deadline = time.monotonic() + 20
        while True:
            try:
                await connect(worker, additional_headers=RETRY_ELSEWHERE)
                break
            except websockets.InvalidStatus as refused:
                assert refused.response.status_code == 503
                assert time.monotonic() < deadline, "the worker did not take sockets again once Redis was back"
                await asyncio.sleep(0.2)
    finally:
        worker.stop()
        worker.database.drop()
        forwarder.kill()


# --- through nginx -----------------------------------------------------------------------


@pytest.mark.own_postgres
async def test_nginx_sends_new_sockets_to_workers_that_can_register_them(private_postgres, redis_server):
    """(a) worker A alone loses its database: every new socket opens, on B; (b) the database
    is away for both: a socket hears 'try again' and 1013, /id answers 503, pages load;
    (c) the database back, new sockets open on both workers again."""
    database = Database(private_postgres.admin_url)
    forwarder = Forwarder(private_postgres.port)
    env = {**TEST_ENV, **PROXIED, "REDIS_URL": redis_server.url}
    workers, nginx = [], None
    try:
        a = Worker(database, {**env, "DATABASE_URL": forwarder.through(database.url)}, server="uvicorn", name="a")
        workers.append(a)
        b = Worker(database, env, server="uvicorn", name="b")
        workers.append(b)
        nginx = Nginx([a, b])
        name = {
            worker: database.query("SELECT name FROM signaling_worker WHERE pid = ?", (worker.proc.pid,))[0][0]
            for worker in workers
        }

        # (a) A alone has lost its database.
        forwarder.kill()
        peers = [await connect(nginx) for _ in range(20)]  # each hears OPEN
        registered = dict(database.query("SELECT peer_id, worker FROM signaling_peer"))
        assert {registered[peer.peer_id] for peer in peers} == {name[b]}
        await roundtrip(peers[0], peers[-1])
        # A was asked (it holds the fewest sockets) and turned sockets away
        # with 503; it accepted none only to refuse it.
        assert opened(a, "elsewhere") >= 1
        assert opened(a, "retry") == 0 and opened(a, "open") == 0
        taken_out = [line for line in nginx.log("error.log").splitlines() if "temporarily disabled" in line]
        assert any(f"127.0.0.1:{a.port}" in line for line in taken_out), taken_out  # nginx took it out
        for peer in peers:
            await peer.close()

        # (b) The database is away for both workers. A fresh nginx, which
        # has taken no worker out yet, asks each in turn.
        nginx.stop()
        private_postgres.stop()
        try:
            nginx = Nginx([a, b])
            turned_away_before = {worker: opened(worker, "elsewhere") for worker in workers}
            # Every worker turns the socket away; nginx's last try, without
            # the header, has it accepted and answered.
            assert await told_to_try_again(nginx)
            for worker in workers:
                assert opened(worker, "elsewhere") == turned_away_before[worker] + 1
            # Every worker failed nginx's last request: nginx took them all
            # out, and pages and the API still answer.
            assert_unavailable(nginx, f"{BASE}/peerjs/id")
            status, _, page = nginx.get("/")
            assert status == 200 and "<html" in page.lower()
            assert nginx.get(f"{BASE}/")[0] == 200
            assert await told_to_try_again(nginx)
        finally:
            private_postgres.start()

        # (c) Back for both: once each worker's database calls succeed again,
        # new sockets open on both (on A once nginx's fail_timeout is over).
        forwarder.start()
        for worker in workers:
            wait_until(lambda worker=worker: REACHABLE in worker.read_log(), 20, "the database calls to succeed again")
        opened_after, where = [], set()
        deadline = time.monotonic() + 30
        while where != {name[a], name[b]}:
            assert time.monotonic() < deadline, f"new sockets opened only on {where}"
            peer = await connect(nginx)  # OPEN, each one
            opened_after.append(peer)
            where.add(dict(database.query("SELECT peer_id, worker FROM signaling_peer"))[peer.peer_id])
            await asyncio.sleep(0.2)
        await roundtrip(opened_after[0], opened_after[-1])
        await roundtrip(opened_after[-1], opened_after[0])
    finally:
        if nginx is not None:
            nginx.stop()
        for worker in workers:
            worker.stop()
        forwarder.kill()
        database.drop()
