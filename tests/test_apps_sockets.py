"""Apps over real sockets, across two production workers: what an operator sets in the admin is what peers get.

Two uvicorn workers share one database and one Redis, as in production.
An operator adds and edits apps in the admin of worker 1, over real HTTP;
sockets open on either worker. Each test has apps (keys) of its own, so
the limits and lists of one never count another's peers.
"""
import asyncio
import json
import time
import uuid

import pytest
import websockets

from tests.admin_http import AdminSession, Apps, create_superuser
from tests.client import connect, roundtrip, uid
from tests.servers import BASE
from tests.test_cluster import Cluster

pytestmark = [pytest.mark.cluster, pytest.mark.db]

CACHE_MS = 500  # PEERJS_APP_CACHE: how long a worker keeps an app's settings
# Within the cache period, plus what two busy cores may add to a handshake.
SEEN_WITHIN = CACHE_MS / 1000 + 3
POLICY = 1008  # uvicorn sends the standard code
LIMIT = "Server has reached its concurrent user limit"


@pytest.fixture(scope="module")
def cluster(redis_server):
    # Queued frames live 5 s here, so a test can show whose queue they wait in.
    cluster = Cluster(
        redis_server, count=2, server="uvicorn",
        env={"PEERJS_APP_CACHE": str(CACHE_MS), "PEERJS_EXPIRE_TIMEOUT": "5000"},
    )
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def apps(cluster):
    w1 = cluster.workers[0]
    operator = AdminSession(w1)
    password = "the-operators-password"
    assert operator.login(create_superuser(w1, password), password).status == 200 and operator.logged_in
    return Apps(operator, cluster.database)


def new_key(prefix="app"):
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def answer(worker, key, peer_id=None, token=None, **handshake):
    """What a socket is told on connect: (first frame, the socket), or (HTTP status, None) if the handshake is refused.

    ``handshake``: websockets.connect's options (``origin``, ``additional_headers``).
    """
    try:
        client = await connect(worker, peer_id=peer_id, token=token, key=key, expect_open=False, **handshake)
    except websockets.InvalidStatus as refused:
        return refused.response.status_code, None
    return await client.recv(), client


async def refusal(worker, key, **kwargs):
    """The ERROR message a socket gets, and the close code after it."""
    frame, client = await answer(worker, key, **kwargs)
    assert client is not None and frame["type"] == "ERROR", frame
    code, rest = await client.closed()
    assert rest == []
    return frame["payload"]["msg"], code


async def opens_within(seconds, worker, key, **kwargs):
    """Connect again and again until a socket is given OPEN; the open client and how long it took."""
    started = time.monotonic()
    while True:
        frame, client = await answer(worker, key, **kwargs)
        if isinstance(frame, dict) and frame["type"] == "OPEN":
            return client, time.monotonic() - started
        if client is not None:
            await client.close()
        assert time.monotonic() - started < seconds, f"no OPEN within {seconds}s; last answer: {frame}"
        await asyncio.sleep(0.05)


async def status_within(seconds, worker, key, origin, status):
    """Handshake again and again until it is refused with ``status``."""
    started = time.monotonic()
    while True:
        frame, client = await answer(worker, key, origin=origin)
        if client is not None:
            await client.close()
        if frame == status:
            return time.monotonic() - started
        assert time.monotonic() - started < seconds, f"still {frame} after {seconds}s"
        await asyncio.sleep(0.05)


def peers(worker, key):
    status, _, body = worker.get(f"{BASE}/{key}/peers")
    return (status, sorted(json.loads(body))) if status == 200 else (status, body)


# --- an operator's work in the admin reaches the other worker ------------------------


async def test_an_app_added_in_the_admin_of_one_worker_opens_sockets_on_the_other_within_the_cache_period(cluster, apps):
    w1, w2 = cluster.workers
    key = new_key()
    assert await refusal(w2, key) == ("Invalid key provided", POLICY)  # and worker 2 now has "no such app" cached

    apps.add(key)
    b, took = await opens_within(SEEN_WITHIN, w2, key)
    print(f"worker 2 opened a socket of the new app {took:.2f}s after the admin added it (cache {CACHE_MS} ms)")
    a = await connect(w1, key=key)
    await roundtrip(a, b)
    await roundtrip(b, a)


async def test_an_edited_origin_list_is_enforced_by_the_other_worker_within_the_cache_period(cluster, apps):
    w1, w2 = cluster.workers
    key = new_key()
    app = apps.add(key, allowed_origins="https://stage.example")
    assert (await answer(w2, key, origin="https://stage.example"))[0]["type"] == "OPEN"
    assert (await answer(w2, key, origin="https://foyer.example"))[0] == 403

    apps.edit(app, allowed_origins="https://foyer.example")
    await opens_within(SEEN_WITHIN, w2, key, origin="https://foyer.example")
    assert (await answer(w2, key, origin="https://stage.example"))[0] == 403
    assert (await answer(w1, key, origin="https://stage.example"))[0] == 403


async def test_an_edited_limit_is_counted_by_the_other_worker_within_the_cache_period(cluster, apps):
    w1, w2 = cluster.workers
    key = new_key()
    app = apps.add(key, concurrent_limit="1")
    first = await connect(w1, key=key)
    assert await refusal(w2, key) == (LIMIT, POLICY)

    apps.edit(app, concurrent_limit="2")
    second, _ = await opens_within(SEEN_WITHIN, w2, key)
    assert await refusal(w1, key) == (LIMIT, POLICY)
    await roundtrip(first, second)

    apps.edit(app, concurrent_limit="")  # empty: PEERJS_CONCURRENT_LIMIT (5000)
    await opens_within(SEEN_WITHIN, w1, key)


async def test_discovery_turned_on_in_the_admin_lists_the_peers_of_both_workers(cluster, apps):
    w1, w2 = cluster.workers
    key = new_key()
    app = apps.add(key)
    a, b = await connect(w1, key=key), await connect(w2, key=key)
    assert peers(w2, key) == (401, "Discovery is not allowed on this server")

    apps.edit(app, allow_discovery=True)
    started = time.monotonic()
    while peers(w2, key)[0] != 200:
        assert time.monotonic() - started < SEEN_WITHIN, "worker 2 did not see discovery turned on"
        await asyncio.sleep(0.05)
    assert peers(w2, key) == peers(w1, key) == (200, sorted([a.peer_id, b.peer_id]))

    apps.edit(app, allow_discovery=False)
    started = time.monotonic()
    while peers(w2, key)[0] != 401:
        assert time.monotonic() - started < SEEN_WITHIN, "worker 2 did not see discovery turned off"
        await asyncio.sleep(0.05)


# --- each app's settings, over real sockets --------------------------------------------


async def test_an_apps_limit_counts_its_own_peers_on_every_worker_and_nobody_elses(cluster, apps):
    w1, w2 = cluster.workers
    key, other = new_key(), new_key()
    apps.add(key, concurrent_limit="2")
    apps.add(other, concurrent_limit="1")
    a, b = await connect(w1, key=key), await connect(w2, key=key)
    for worker in (w1, w2):
        assert await refusal(worker, key) == (LIMIT, POLICY)
    # The same ids in another app, and peers of the default app, are not counted.
    await connect(w2, key=other, peer_id=a.peer_id)
    assert await refusal(w1, other) == (LIMIT, POLICY)
    await connect(w1), await connect(w2)
    # A place comes free when a peer leaves (its row goes as its socket closes).
    await a.close()
    c, _ = await opens_within(5, w2, key)
    await roundtrip(b, c)


async def test_a_page_from_an_origin_the_app_does_not_allow_gets_403_at_the_handshake(cluster, apps):
    w1, w2 = cluster.workers
    key = new_key()
    apps.add(key, allowed_origins="https://stage.example\nhttps://foyer.example:8443")
    for worker in (w1, w2):
        assert (await answer(worker, key, origin="https://evil.example"))[0] == 403
        assert (await answer(worker, key, origin="https://foyer.example"))[0] == 403  # the port is part of it
        assert (await answer(worker, key, origin="https://foyer.example:8443"))[0]["type"] == "OPEN"
        # No Origin at all: no browser, nobody to protect (the check is not authentication).
        assert (await answer(worker, key))[0]["type"] == "OPEN"
    # The default app allows any origin (PEERJS_CORS_ORIGINS is "*" here).
    assert (await answer(w2, "peerjs", origin="https://evil.example"))[0]["type"] == "OPEN"


async def test_discovery_lists_the_apps_peers_from_every_worker_and_no_others(cluster, apps):
    w1, w2 = cluster.workers
    key, quiet = new_key(), new_key()
    apps.add(key, allow_discovery=True)
    apps.add(quiet)
    assert peers(w1, key) == (200, [])
    a, b = await connect(w1, key=key), await connect(w2, key=key)
    await connect(w1, key=quiet, peer_id=uid())
    await connect(w2, peer_id=uid())  # the default app
    for worker in (w1, w2):
        assert peers(worker, key) == (200, sorted([a.peer_id, b.peer_id]))
        assert peers(worker, quiet) == (401, "Discovery is not allowed on this server")
    await b.close()
    started = time.monotonic()
    while peers(w1, key) != (200, [a.peer_id]):
        assert time.monotonic() - started < 5, peers(w1, key)
        await asyncio.sleep(0.05)


async def test_the_same_ids_in_two_apps_coexist_and_relays_stay_within_each_app(cluster, apps):
    w1, w2 = cluster.workers
    key_a, key_b = new_key("a"), new_key("b")
    apps.add(key_a)
    apps.add(key_b)
    x, y = uid("x"), uid("y")
    # Both apps have peers x and y; each app's x and y are on different workers.
    xa, yb = await connect(w1, peer_id=x, key=key_a), await connect(w1, peer_id=y, key=key_b)
    xb, ya = await connect(w2, peer_id=x, key=key_b), await connect(w2, peer_id=y, key=key_a)

    await ya.relay("OFFER", x, "for x of a")
    await yb.relay("OFFER", x, "for x of b")
    assert await xa.recv() == {"type": "OFFER", "src": y, "dst": x, "payload": "for x of a"}
    assert await xb.recv() == {"type": "OFFER", "src": y, "dst": x, "payload": "for x of b"}
    await xa.relay("ANSWER", y, "back to y of a")
    await xb.relay("ANSWER", y, "back to y of b")
    assert (await ya.recv())["payload"] == "back to y of a"
    assert (await yb.recv())["payload"] == "back to y of b"
    # An id is taken within its app only.
    assert (await answer(w2, key_a, peer_id=x, token="someone-else"))[0]["type"] == "ID-TAKEN"
    await roundtrip(ya, xa)
    await roundtrip(yb, xb)

    # A frame queued for an id nobody holds yet waits for that id in its own app.
    z = uid("z")
    await ya.relay("OFFER", z, "for z of a")
    zb = await connect(w1, peer_id=z, key=key_b)
    za = await connect(w1, peer_id=z, key=key_a)
    assert await za.recv() == {"type": "OFFER", "src": y, "dst": z, "payload": "for z of a"}
    await roundtrip(yb, zb)  # zb's first frame is this one: a's queued frame never came its way

    # Nothing crossed over: every socket's next frame is a fresh one.
    for sender, receiver in ((xa, ya), (ya, xa), (xb, yb), (yb, xb), (za, xa)):
        await roundtrip(sender, receiver)
