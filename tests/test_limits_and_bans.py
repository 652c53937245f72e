"""Rate limits per client address and bans, on real workers, Redis and the admin over HTTP.

Client addresses are played with X-Forwarded-For on workers with
PEERJS_PROXIED on (the rule the server uses for every address), so each test
has addresses of its own.
"""
import asyncio
import datetime
import itertools
import os
import re
import time

import pytest

from tests.admin_http import AdminSession, create_superuser
from tests.client import connect, roundtrip, uid
from tests.conftest import TEST_ENV
from tests.servers import BASE, Database, RedisServer, Worker

pytestmark = pytest.mark.cluster

PASSWORD = "stage-manager-pw"
WINDOW_MS = 2000
LIMITS = {
    "PEERJS_PROXIED": "1",
    "PEERJS_RATE_LIMIT_OPENS": "4",
    "PEERJS_RATE_LIMIT_IDS": "3",
    "PEERJS_RATE_LIMIT_WINDOW": str(WINDOW_MS),
}
_addresses = itertools.count(1)


def address():
    """A client address no other test uses (198.18.0.0/15 is for benchmarks, never a real client)."""
    n = next(_addresses)
    return f"198.18.{n // 250}.{n % 250 + 1}"


def xff(addr):
    return {"X-Forwarded-For": addr}


async def opens(worker, addr, **kwargs):
    """Open a socket from ``addr``; the client if it got OPEN, else (close code, frames)."""
    client = await connect(worker, expect_open=False, additional_headers=xff(addr), **kwargs)
    first = await client.recv()
    if first["type"] == "OPEN":
        return client
    code, frames = await client.closed()
    return code, [first, *frames]


async def refused(worker, addr, **kwargs):
    answer = await opens(worker, addr, **kwargs)
    assert isinstance(answer, tuple), "the socket was opened"
    return answer


async def eventually_opens(worker, addr, timeout=10, **kwargs):
    """Poll (a fresh socket every 0.1 s) until one from ``addr`` opens; the client."""
    deadline = time.monotonic() + timeout
    while True:
        answer = await opens(worker, addr, **kwargs)
        if not isinstance(answer, tuple):
            return answer
        assert time.monotonic() < deadline, f"{addr} still refused: {answer}"
        await asyncio.sleep(0.1)  # pacing the polls


def fetch_id(worker, addr):
    return worker.get(f"{BASE}/peerjs/id", headers=xff(addr))


def metric(worker, name):
    status, _, body = worker.get("/metrics")
    assert status == 200
    return float(re.search(rf"^{re.escape(name)} (\S+)$", body, re.M).group(1))


@pytest.fixture(scope="module")
def cluster(redis_server):
    """Two workers sharing a private redis-server and a database, bans re-read only when told."""
    database = Database()
    env = {**TEST_ENV, **LIMITS, "REDIS_URL": redis_server.url, "PEERJS_BAN_REFRESH": "600000"}
    workers = [Worker(database, env, name=f"w{n}") for n in range(2)]
    yield workers
    for worker in workers:
        worker.stop()
    database.drop()


@pytest.fixture(scope="module")
def operator(cluster):
    admin = AdminSession(cluster[0])
    admin.login(create_superuser(cluster[0], PASSWORD), PASSWORD)
    assert admin.logged_in
    return admin


# Rate limits.


async def test_opens_past_the_limit_get_an_error_and_a_close_until_the_window_passes(cluster):
    w1, _ = cluster
    crowded, other = address(), address()
    before = metric(w1, 'peerjs_rate_limited_total{kind="open"}')
    for _ in range(4):
        await (await opens(w1, crowded)).close()
    code, frames = await refused(w1, crowded)
    assert code in (1008, 4008)  # daphne sends 1008 as 4008
    assert frames[0]["type"] == "ERROR"
    assert re.fullmatch(r"Your address opens too many sockets; try again in [12] s", frames[0]["payload"]["msg"])
    # Another address is not affected.
    await (await opens(w1, other)).close()
    assert metric(w1, 'peerjs_rate_limited_total{kind="open"}') == before + 1
    assert metric(w1, 'peerjs_sockets_opened_total{outcome="limited"}') >= 1
    # The window frees: the address connects again.
    await (await eventually_opens(w1, crowded)).close()


async def test_id_requests_past_the_limit_get_429_with_retry_after_until_the_window_passes(cluster):
    w1, _ = cluster
    crowded, other = address(), address()
    for _ in range(3):
        assert (await asyncio.to_thread(fetch_id, w1, crowded))[0] == 200
    status, headers, body = await asyncio.to_thread(fetch_id, w1, crowded)
    assert status == 429
    assert headers["Retry-After"] in ("1", "2")
    assert f"try again in {headers['Retry-After']} s" in body
    assert (await asyncio.to_thread(fetch_id, w1, other))[0] == 200
    assert metric(w1, 'peerjs_rate_limited_total{kind="id"}') >= 1
    deadline = time.monotonic() + 10
    while (await asyncio.to_thread(fetch_id, w1, crowded))[0] != 200:
        assert time.monotonic() < deadline, "/id stayed refused"
        await asyncio.sleep(0.1)  # pacing the polls


async def test_opens_and_ids_spread_over_two_workers_count_together(cluster):
    w1, w2 = cluster
    crowded = address()
    for worker in (w1, w2, w1, w2):
        await (await opens(worker, crowded)).close()
    for worker in (w1, w2):
        code, frames = await refused(worker, crowded)
        assert "opens too many sockets" in frames[0]["payload"]["msg"]
    crowded = address()
    for worker in (w1, w2, w1):
        assert (await asyncio.to_thread(fetch_id, worker, crowded))[0] == 200
    assert (await asyncio.to_thread(fetch_id, w2, crowded))[0] == 429


async def test_with_redis_away_each_worker_counts_alone_and_still_answers():
    redis = RedisServer()
    database = Database()
    worker = Worker(database, {**TEST_ENV, **LIMITS, "REDIS_URL": redis.url}, name="alone")
    try:
        crowded = address()
        await (await opens(worker, crowded)).close()  # counted in Redis
        redis.stop()
        for _ in range(4):  # the worker's own count starts afresh, and opens are answered
            await (await opens(worker, crowded)).close()
        code, frames = await refused(worker, crowded)
        assert "opens too many sockets" in frames[0]["payload"]["msg"]
        log = worker.read_log()
        assert log.count("rate limits: Redis unreachable") == 1, log
    finally:
        worker.stop()
        database.drop()
        redis.stop()


# Bans.


def ban_rows(cluster, column, value):
    return cluster[0].database.query(f"SELECT id FROM signaling_ban WHERE {column} = ?", (value,))


@pytest.mark.postgres
async def test_a_ban_made_in_the_admin_holds_on_every_worker_until_it_is_lifted(cluster, operator):
    w1, w2 = cluster
    home = address()
    target = await opens(w2, home)
    bystander = await opens(w2, address())
    row = cluster[0].database.peer_row(target.peer_id)

    # The action asks first: how long, the address too or not, why.
    page = await asyncio.to_thread(
        operator.post, "/admin/signaling/peer/", {"action": "disconnect_and_ban", "_selected_action": [row]}
    )
    assert page.status == 200 and "Ban for" in page.body and target.peer_id in page.body
    assert not ban_rows(cluster, "peer_id", target.peer_id)
    page = await asyncio.to_thread(
        operator.post, "/admin/signaling/peer/",
        {"action": "disconnect_and_ban", "_selected_action": [row], "post": "yes", "duration": "3600", "reason": "spam"},
    )
    assert page.status == 200 and "Banned 1 peer(s) until" in page.body, page.body[-3000:]

    # Told at once (the workers' own re-read is ten minutes away): the socket on w2 is closed.
    code, frames = await target.closed()
    assert code == 4105
    message = frames[-1]["payload"]["msg"]
    assert re.fullmatch(r"Banned: this peer id may not connect to the server until \S+ \S+ UTC \(spam\)", message)
    for worker in (w1, w2):
        code, frames = await refused(worker, address(), peer_id=target.peer_id, token=target.token)
        assert code == 4105 and frames[0]["payload"]["msg"] == message
    # Its address was not banned, nor anyone else.
    await roundtrip(await opens(w1, home), bystander)

    listing = await asyncio.to_thread(operator.get, f"/admin/signaling/ban/?q={target.peer_id}")
    assert f"peer {target.peer_id}" in listing.body
    (pk,), = ban_rows(cluster, "peer_id", target.peer_id)
    page = await asyncio.to_thread(operator.post, "/admin/signaling/ban/", {"action": "lift", "_selected_action": [pk]})
    assert "Lifted 1 ban(s)" in page.body
    back = await eventually_opens(w2, address(), timeout=5, peer_id=target.peer_id, token=target.token)
    await roundtrip(back, bystander)


@pytest.mark.postgres
async def test_a_ban_of_an_address_refuses_every_peer_from_it_and_closes_those_connected(cluster, operator):
    w1, w2 = cluster
    banned, other = address(), address()
    connected = await opens(w1, banned)
    page = await asyncio.to_thread(
        operator.post, "/admin/signaling/ban/add/",
        {"key": "", "peer_id": "", "address": banned, "reason": "", "duration": "600"},
    )
    assert "was added successfully" in page.body, page.body[-3000:]
    code, frames = await connected.closed()
    assert code == 4105 and "this address may not connect" in frames[-1]["payload"]["msg"]
    for worker in (w1, w2):
        code, frames = await refused(worker, banned)
        assert code == 4105
    await (await opens(w2, other)).close()
    assert banned in (await asyncio.to_thread(operator.get, f"/admin/signaling/ban/?q={banned}")).body

    # Disconnect and ban with the address: the peer's address is banned too.
    nat = address()
    peer = await opens(w2, nat)
    await asyncio.to_thread(
        operator.post, "/admin/signaling/peer/",
        {"action": "disconnect_and_ban", "_selected_action": [cluster[0].database.peer_row(peer.peer_id)],
         "post": "yes", "duration": "600", "ban_address": "on", "reason": ""},
    )
    assert (await peer.closed())[0] == 4105
    code, frames = await refused(w1, nat)  # a new id from that address
    assert code == 4105 and "this address" in frames[0]["payload"]["msg"]
    assert ban_rows(cluster, "address", nat)


@pytest.mark.postgres
async def test_a_ban_ends_by_itself_and_workers_reread_bans_on_their_own(make_server):
    """A ban written straight to the database (no admin, nobody told) is found by the
    workers' periodic re-read, and refuses nobody once its time is over."""
    worker = make_server({"PEERJS_BAN_REFRESH": "200"}, own=True)
    peer_id = uid()
    ends = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=3)
    value = ends if worker.database.admin_url else ends.strftime("%Y-%m-%d %H:%M:%S.%f")
    now = datetime.datetime.now(datetime.UTC)
    worker.database.query(
        "INSERT INTO signaling_ban (key, peer_id, address, reason, created_at, created_by, expires_at) "
        "VALUES ('peerjs', ?, NULL, '', ?, '', ?)",
        (peer_id, now if worker.database.admin_url else now.strftime("%Y-%m-%d %H:%M:%S.%f"), value),
    )
    deadline = time.monotonic() + 10
    while True:
        client = await connect(worker, peer_id=peer_id, token="t", expect_open=False)
        first = await client.recv()
        if first["type"] == "ERROR":
            break
        await client.close()
        assert time.monotonic() < deadline, "the ban was never applied"
        await asyncio.sleep(0.05)  # pacing the polls
    assert "Banned: this peer id" in first["payload"]["msg"]
    assert (await client.closed())[0] == 4105
    deadline = time.monotonic() + 10
    while True:
        client = await connect(worker, peer_id=peer_id, token="t", expect_open=False)
        if (await client.recv())["type"] == "OPEN":
            break
        assert time.monotonic() < deadline, "the ban did not end"
        await asyncio.sleep(0.1)  # pacing the polls
    assert datetime.datetime.now(datetime.UTC) >= ends - datetime.timedelta(seconds=0.5)
    await client.close()


# The plain Disconnect.


@pytest.mark.postgres
async def test_disconnect_of_a_peer_whose_worker_is_dead_warns_instead_of_failing(redis_server, make_server):
    # Rows of silent workers are reaped after PEERJS_WORKER_TIMEOUT: not during this test.
    worker = make_server({"REDIS_URL": redis_server.url, "PEERJS_WORKER_TIMEOUT": "60000"}, own=True)
    admin = AdminSession(worker)
    admin.login(create_superuser(worker, PASSWORD), PASSWORD)
    live = await connect(worker)
    ghost = uid()
    now = datetime.datetime.now(datetime.UTC)
    stamp = now if worker.database.admin_url else now.strftime("%Y-%m-%d %H:%M:%S.%f")
    # A peer row of a worker that died a moment ago (nobody reads its inbox).
    worker.database.query(
        "INSERT INTO signaling_peer (key, peer_id, token_hash, worker, connection, address, connected_at, last_seen) "
        "VALUES ('peerjs', ?, '', 'dead-worker-1', 'c1', NULL, ?, ?)",
        (ghost, stamp, stamp),
    )
    rows = [worker.database.peer_row(ghost), worker.database.peer_row(live.peer_id)]
    page = await asyncio.to_thread(
        admin.post, "/admin/signaling/peer/", {"action": "disconnect", "_selected_action": rows}
    )
    assert page.status == 200, page.body[-3000:]
    assert "Asked to disconnect 1 peer(s)." in page.body
    assert f"Could not reach the worker of 1 peer(s): {ghost} (worker dead-worker-1" in page.body
    assert (await live.closed())[0] == 4102


async def test_opens_are_counted_on_a_redis_cluster_too():
    """REDIS_CLUSTER=1: one key per command keeps each count on one slot, and two workers count together."""
    from tests.servers import RedisCluster

    redis_cluster = RedisCluster()
    database = Database()
    env = {**TEST_ENV, **LIMITS, "REDIS_URL": redis_cluster.url, "REDIS_CLUSTER": "1"}
    workers = []
    try:
        workers = [Worker(database, env, name=f"c{n}") for n in range(2)]
        crowded = address()
        for worker in (*workers, *workers):
            await (await opens(worker, crowded)).close()
        code, frames = await refused(workers[0], crowded)
        assert "opens too many sockets" in frames[0]["payload"]["msg"]
        for worker in workers:  # counted in Redis, not each worker alone
            assert "rate limits: Redis unreachable" not in worker.read_log()
    finally:
        for worker in workers:
            worker.stop()
        database.drop()
        redis_cluster.stop()
