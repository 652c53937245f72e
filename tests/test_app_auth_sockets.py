"""Who may connect, over real sockets: signed tokens and the site's session, across two production workers.

Apps are made in the admin of worker 1 (real HTTP); sockets open on either
worker. Tokens are made as docs/apps.md tells an app's backend to make them
(PyJWT, HS256, the app's token secret); the site's users log in through the
admin's login form, and their session cookie goes with the handshake as a
browser sends it.
"""
import asyncio
import time
import uuid

import jwt
import pytest

from tests.admin_http import AdminSession, Apps, create_superuser
from signaling.auth import FOREIGN_ORIGIN
from tests.client import connect, roundtrip, uid
from signaling.consumers import MSG_TRY_AGAIN
from tests.conftest import TEST_ENV
from tests.servers import Database, Worker
from tests.test_apps_sockets import POLICY, SEEN_WITHIN, answer, opens_within, refusal
from tests.test_cluster import Cluster

pytestmark = [pytest.mark.cluster, pytest.mark.db]

CACHE_MS = 500
REPLACED = 4100
PASSWORD = "a-long-enough-password-1"


@pytest.fixture(scope="module")
def cluster(redis_server):
    cluster = Cluster(redis_server, count=2, server="uvicorn", env={"PEERJS_APP_CACHE": str(CACHE_MS)})
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def apps(cluster):
    w1 = cluster.workers[0]
    operator = AdminSession(w1)
    assert operator.login(create_superuser(w1, PASSWORD), PASSWORD).status == 200
    return Apps(operator, cluster.database)


def new_key(prefix="app"):
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def token(secret, peer_id, key, ttl=600, issued=None):
    """A connect token as docs/apps.md's Python backend makes one."""
    now = int(time.time() if issued is None else issued)
    return jwt.encode({"sub": peer_id, "aud": key, "iat": now, "exp": now + ttl}, secret, algorithm="HS256")


# --- signed tokens -------------------------------------------------------------------


async def test_a_peer_with_a_token_from_its_apps_backend_opens_on_any_worker(cluster, apps):
    w1, w2 = cluster.workers
    app = apps.add(new_key(), auth="token")
    a, b = uid(), uid()
    left = await connect(w1, peer_id=a, token=token(app.token_secret, a, app.key), key=app.key)
    right = await connect(w2, peer_id=b, token=token(app.token_secret, b, app.key), key=app.key)
    await roundtrip(left, right)
    await roundtrip(right, left)


@pytest.mark.parametrize(
    "case, reason",
    [
        ("expired", "Invalid token: expired"),
        ("forged", "Invalid token: bad signature"),
        ("another id", "Invalid token: issued for another id"),
        ("another app", "Invalid token: issued for another key"),
        ("none", "Token required"),
    ],
)
async def test_a_socket_without_a_valid_token_is_told_which_problem_it_has(cluster, apps, case, reason):
    w1, w2 = cluster.workers
    app = apps.add(new_key(), auth="token")
    peer_id = uid()
    presented = {
        "expired": token(app.token_secret, peer_id, app.key, ttl=60, issued=time.time() - 3600),
        "forged": token("someone-elses-secret-" + "x" * 24, peer_id, app.key),
        "another id": token(app.token_secret, uid(), app.key),
        # Signed with this app's secret (shared with another app by mistake) for the other app.
        "another app": token(app.token_secret, peer_id, new_key()),
        # What the PeerJS client sends when the page gives no token: a random word.
        "none": "k3j5h2l1m9",
    }[case]
    for worker in (w1, w2):
        assert await refusal(worker, app.key, peer_id=peer_id, token=presented) == (reason, POLICY)
    # The id was never registered: its owner, with a good token, opens.
    await connect(w2, peer_id=peer_id, token=token(app.token_secret, peer_id, app.key), key=app.key)


async def test_a_fresh_token_takes_over_its_own_id_from_a_lingering_socket_on_another_worker(cluster, apps):
    w1, w2 = cluster.workers
    app = apps.add(new_key(), auth="token")
    peer_id, friend = uid(), uid()
    first = await connect(w1, peer_id=peer_id, token=token(app.token_secret, peer_id, app.key), key=app.key)
    other = await connect(w1, peer_id=friend, token=token(app.token_secret, friend, app.key), key=app.key)
    # Nobody without a token for the id can take it, whatever token PeerJS made up.
    assert await refusal(w2, app.key, peer_id=peer_id, token="k3j5h2l1m9") == ("Token required", POLICY)
    await roundtrip(other, first)

    # The page reconnects with a token its backend has just made (a different string).
    fresh = token(app.token_secret, peer_id, app.key, issued=time.time() + 1)
    assert fresh != first.token
    second = await connect(w2, peer_id=peer_id, token=fresh, key=app.key)  # OPEN
    code, frames = await first.closed()
    assert (code, frames) == (REPLACED, [])
    await roundtrip(other, second)  # the id's frames go to the new socket
    rows = cluster.database.query("SELECT worker FROM signaling_peer WHERE key = ? AND peer_id = ?", (app.key, peer_id))
    assert len(rows) == 1

    # And again on the same worker.
    third = await connect(w2, peer_id=peer_id, token=token(app.token_secret, peer_id, app.key), key=app.key)
    assert await second.closed() == (REPLACED, [])
    await roundtrip(other, third)
    await roundtrip(third, other)


async def test_a_rotated_secret_refuses_the_old_tokens_on_the_other_worker_within_the_cache_period(cluster, apps):
    w1, w2 = cluster.workers
    app = apps.add(new_key(), auth="token")
    old_secret = app.token_secret
    holder = uid()
    await connect(w2, peer_id=holder, token=token(old_secret, holder, app.key), key=app.key)  # worker 2 has the app now
    apps.edit(app, rotate_token_secret=True)
    assert app.token_secret != old_secret
    started = time.monotonic()
    while True:
        probe = uid()
        frame, client = await answer(w2, app.key, peer_id=probe, token=token(old_secret, probe, app.key))
        await client.close()
        if frame["type"] == "ERROR":
            break
        assert time.monotonic() - started < SEEN_WITHIN, "tokens of the old secret are still accepted"
        await asyncio.sleep(0.05)
    print(f"old tokens refused {time.monotonic() - started:.2f}s after the rotation (cache {CACHE_MS} ms)")
    assert frame["payload"]["msg"] == "Invalid token: bad signature"
    newcomer = uid()
    await connect(w2, peer_id=newcomer, token=token(app.token_secret, newcomer, app.key), key=app.key)


# --- the site's session ----------------------------------------------------------------


def logged_in(worker, username):
    """A browser logged in to the site through the admin's login form; its Cookie header."""
    browser = AdminSession(worker)
    assert browser.login(username, PASSWORD).status == 200 and browser.logged_in
    return browser, "; ".join(f"{c.name}={c.value}" for c in browser.jar)


async def test_a_session_app_admits_the_sites_logged_in_users_only(cluster, apps):
    w1, w2 = cluster.workers
    app = apps.add(new_key(), auth="session")
    alice_browser, alice = logged_in(w1, create_superuser(w1, PASSWORD))
    _, bob = logged_in(w1, create_superuser(w1, PASSWORD))
    peer_id = uid()

    assert await refusal(w2, app.key, peer_id=peer_id) == ("Login required", POLICY)
    made_up = {"Cookie": "sessionid=0123456789abcdefghijklmnopqrstuv"}
    assert await refusal(w2, app.key, peer_id=peer_id, additional_headers=made_up) == ("Login required", POLICY)

    first = await connect(w2, peer_id=peer_id, key=app.key, additional_headers={"Cookie": alice})
    other = await connect(w1, key=app.key, additional_headers={"Cookie": bob})
    await roundtrip(other, first)
    # Another user cannot take alice's id...
    frame, _ = await answer(w1, app.key, peer_id=peer_id, additional_headers={"Cookie": bob})
    assert frame["type"] == "ID-TAKEN"
    # ...alice herself can, from another tab (PeerJS made up another token there).
    second = await connect(w1, peer_id=peer_id, key=app.key, additional_headers={"Cookie": alice})
    assert await first.closed() == (REPLACED, [])
    await roundtrip(other, second)

    # Logged out, her cookie is nobody's; the socket she opened before stays.
    answered = alice_browser.request(
        "/admin/logout/",
        f"csrfmiddlewaretoken={next(c.value for c in alice_browser.jar if c.name == 'csrftoken')}".encode(),
        headers={"Referer": f"{w1.http}/admin/"},
    )
    assert answered.status == 200 and not alice_browser.logged_in
    assert await refusal(w2, app.key, peer_id=uid(), additional_headers={"Cookie": alice}) == ("Login required", POLICY)
    await roundtrip(other, second)


async def test_a_session_app_refuses_a_page_of_another_origin_that_rides_the_users_cookie(cluster, apps):
    """A page of the same site but another origin (another port, a sibling subdomain) gets
    the user's cookie sent with its handshake; it must not take over the user's peer."""
    w1, w2 = cluster.workers
    app = apps.add(new_key(), auth="session")
    _, alice = logged_in(w1, create_superuser(w1, PASSWORD))
    peer_id = uid()
    own = f"http://127.0.0.1:{w2.port}"
    mine = await connect(w2, peer_id=peer_id, key=app.key, additional_headers={"Cookie": alice, "Origin": own})
    foreign = {"Cookie": alice, "Origin": "http://127.0.0.1:9"}  # same host, another port: same site
    assert await refusal(w2, app.key, peer_id=peer_id, additional_headers=foreign) == (FOREIGN_ORIGIN, POLICY)
    # The user's own socket is untouched, and an origin the app names is welcome.
    trusted = apps.add(new_key(), auth="session", allowed_origins="http://127.0.0.1:9")
    other = await connect(w1, key=trusted.key, additional_headers=foreign)
    await mine.send({"type": "HEARTBEAT"})
    assert (await answer(w2, app.key, peer_id=peer_id, additional_headers={"Cookie": alice, "Origin": own}))[0]["type"] == "OPEN"
    await other.close()


async def test_a_session_app_during_a_database_outage_tells_its_users_to_try_again(private_postgres):
    """The session is read from the database: while it is away, a logged-in user hears 'try again', as for a claim."""
    database = Database(private_postgres.admin_url)
    worker = Worker(database, {**TEST_ENV, "PEERJS_APP_CACHE": "60000"}, name="session-outage")
    try:
        operator = AdminSession(worker)
        assert operator.login(create_superuser(worker, PASSWORD), PASSWORD).status == 200
        app = Apps(operator, database).add(new_key(), auth="session")
        _, alice = logged_in(worker, create_superuser(worker, PASSWORD))
        await (await connect(worker, key=app.key, additional_headers={"Cookie": alice})).close()  # the app is cached now
        private_postgres.stop()
        try:
            client = await connect(worker, key=app.key, additional_headers={"Cookie": alice}, expect_open=False)
            code, frames = await client.closed()
            assert frames == [{"type": "ERROR", "payload": {"msg": MSG_TRY_AGAIN}}] and code == 4013  # daphne: 1013 as 4013
        finally:
            private_postgres.start()
        await opens_within(10, worker, app.key, additional_headers={"Cookie": alice})
        assert "Traceback" not in worker.read_log()
    finally:
        worker.stop()
        database.drop()
