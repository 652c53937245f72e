"""Peers coming and going, as the signals and an app's webhook tell them, from real sockets on real workers.

Two uvicorn workers share one database and one Redis. Each has
tests.signal_probe installed (DJANGO_SETTINGS_MODULE=tests.probe_settings),
which writes down every peer_connected and peer_disconnected signal as a
receiver gets it. An app made in the admin posts its webhooks to a small
HTTP server the test runs, which checks each signature as docs/apps.md tells
a backend to. Every event names its socket (``connection``): a connect and
its disconnect are matched by it, and by the registry row that socket held.
"""
import asyncio
import datetime
import hashlib
import hmac
import http.server
import json
import signal
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest

from tests.admin_http import AdminSession, Apps, create_superuser
from tests.client import connect, roundtrip
from tests.servers import Worker
from tests.test_cluster import Cluster

pytestmark = [pytest.mark.cluster, pytest.mark.db]

SECRET = "the-apps-webhook-secret"
PASSWORD = "the-operators-password"
ARGUMENTS = ["address", "at", "connection", "key", "peer_id", "worker"]  # besides sender and signal


class Backend:
    """The app's backend: takes each webhook POST, checks its signature, keeps it."""

    def __init__(self, secret):
        self.posts = []  # parsed bodies, in arrival order
        self.forged = []  # bodies whose signature did not match
        self.lock = threading.Lock()
        backend = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                # What docs/apps.md tells a receiver to do before trusting the body.
                expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
                signed = hmac.compare_digest(self.headers.get("X-PeerJS-Signature", ""), expected)
                with backend.lock:
                    (backend.posts if signed else backend.forged).append(json.loads(body))
                self.send_response(204 if signed else 403)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/peerjs-events"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def of(self, peer_id):
        with self.lock:
            assert not self.forged, self.forged
            return [post for post in self.posts if post["id"] == peer_id]

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


class Probe:
    """The signals the workers sent, from tests.signal_probe's file."""

    def __init__(self):
        self.path = Path(tempfile.mkdtemp(prefix="peerjs-signals-")) / "signals.jsonl"
        self.path.touch()

    def of(self, peer_id, signal=None):
        """Connects and disconnects of ``peer_id`` (or its lines of ``signal``), in order."""
        lines = map(json.loads, self.path.read_text().splitlines())
        if signal is None:
            return [line for line in lines if line["peer_id"] == peer_id and line["signal"] != "peer_message"]
        return [line for line in lines if line["peer_id"] == peer_id and line["signal"] == signal]


@pytest.fixture(scope="module")
def probe():
    return Probe()


@pytest.fixture(scope="module")
def cluster(redis_server, probe):
    env = {
        "DJANGO_SETTINGS_MODULE": "tests.probe_settings",
        "PEERJS_SIGNAL_PROBE": str(probe.path),
        "PEERJS_APP_CACHE": "500",
        # The backend is the test's, on this machine: allowed on purpose.
        "PEERJS_WEBHOOK_ALLOW_HTTP": "1",
        "PEERJS_WEBHOOK_ALLOW_NETWORKS": "127.0.0.1/32",
    }
    cluster = Cluster(redis_server, count=2, server="uvicorn", env=env)
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def backend():
    backend = Backend(SECRET)
    yield backend
    backend.stop()


@pytest.fixture(scope="module")
def operator(cluster):
    w1 = cluster.workers[0]
    session = AdminSession(w1)
    assert session.login(create_superuser(w1, PASSWORD), PASSWORD).status == 200
    return session


@pytest.fixture(scope="module")
def app(cluster, operator, backend):
    """An app with a webhook, made in the admin; the key its peers use."""
    return Apps(operator, cluster.database).add(
        f"hooked-{uuid.uuid4().hex[:6]}", webhook_url=backend.url, webhook_secret=SECRET
    ).key


async def until(predicate, what, timeout=10):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def registration(cluster, key, peer_id):
    """(worker, connection) of the registry row that holds ``peer_id``."""
    rows = cluster.database.query(
        "SELECT worker, connection FROM signaling_peer WHERE key = ? AND peer_id = ?", (key, peer_id)
    )
    assert len(rows) == 1, rows
    return tuple(rows[0])


def when(event):
    at = datetime.datetime.fromisoformat(event["at"])
    assert at.utcoffset() == datetime.timedelta(0), event["at"]  # UTC, as docs/apps.md says
    return at


def assert_signal_matches(signal_line, post):
    """A signal as a receiver got it says what the webhook says, and came from the worker's event loop."""
    assert signal_line["signal"] == post["event"]
    assert signal_line["arguments"] == ARGUMENTS
    assert signal_line["sender"] == signal_line["worker"] == post["worker"]
    assert (signal_line["key"], signal_line["peer_id"], signal_line["address"], signal_line["connection"]) == (
        post["key"], post["id"], post["address"], post["connection"],
    )
    assert signal_line["at"] == post["at"] and signal_line["aware"] and signal_line["on_event_loop"]


async def test_a_connect_and_a_close_are_signalled_and_posted_with_the_same_connection(cluster, app, backend, probe):
    w1, w2 = cluster.workers
    peer = await connect(w1, key=app)
    worker, connection = registration(cluster, app, peer.peer_id)
    await until(lambda: backend.of(peer.peer_id), "the connect's webhook")
    (connected,) = backend.of(peer.peer_id)
    assert connected == {
        "event": "peer_connected", "key": app, "id": peer.peer_id, "address": "127.0.0.1",
        "worker": worker, "connection": connection, "at": connected["at"],
    }
    # Sockets that are refused were never connected: no event for them.
    thief = await connect(w2, key=app, peer_id=peer.peer_id, token="not-the-owner", expect_open=False)
    assert (await thief.recv())["type"] == "ID-TAKEN"
    await peer.close()
    await until(lambda: len(backend.of(peer.peer_id)) == 2, "the disconnect's webhook")
    disconnected = backend.of(peer.peer_id)[1]
    assert disconnected == {**connected, "event": "peer_disconnected", "at": disconnected["at"]}
    assert when(connected) <= when(disconnected)
    # The signals say the same, once each.
    await until(lambda: len(probe.of(peer.peer_id)) == 2, "both signals")
    for line, post in zip(probe.of(peer.peer_id), [connected, disconnected]):
        assert_signal_matches(line, post)
    await asyncio.sleep(0.3)
    assert len(backend.of(peer.peer_id)) == 2 and len(probe.of(peer.peer_id)) == 2


async def test_peers_of_an_app_without_a_webhook_are_signalled_and_posted_nowhere(cluster, backend, probe):
    w1, w2 = cluster.workers
    quiet = await connect(w2)  # the default app: no webhook
    await until(lambda: len(probe.of(quiet.peer_id)) == 1, "its connect signal")
    assert probe.of(quiet.peer_id)[0]["key"] == "peerjs"
    await quiet.close()
    await until(lambda: len(probe.of(quiet.peer_id)) == 2, "its disconnect signal")
    await asyncio.sleep(0.3)  # time enough for a webhook that should not be sent to arrive
    assert backend.of(quiet.peer_id) == []


async def test_a_peer_that_leaves_is_disconnected(cluster, app, backend, probe):
    peer = await connect(cluster.workers[1], key=app)
    _, connection = registration(cluster, app, peer.peer_id)
    await peer.send({"type": "LEAVE"})
    assert (await peer.closed())[0] == 1000
    await until(lambda: len(backend.of(peer.peer_id)) == 2, "both webhooks")
    assert [(p["event"], p["connection"]) for p in backend.of(peer.peer_id)] == [
        ("peer_connected", connection), ("peer_disconnected", connection),
    ]


async def test_a_takeover_on_another_worker_ends_the_old_sockets_registration_and_starts_the_new_ones(
    cluster, app, backend, probe
):
    w1, w2 = cluster.workers
    old = await connect(w1, key=app)
    old_at = registration(cluster, app, old.peer_id)
    await until(lambda: backend.of(old.peer_id), "the first connect's webhook")
    new = await connect(w2, key=app, peer_id=old.peer_id, token=old.token)  # the same client, back while its old socket lingers
    new_at = registration(cluster, app, old.peer_id)
    assert (await old.closed())[0] == 4100 and new_at != old_at
    await until(lambda: len(backend.of(old.peer_id)) == 3, "three webhooks")
    events = {(p["event"], p["worker"], p["connection"]) for p in backend.of(old.peer_id)}
    # From two workers: the new socket's connect and the old one's disconnect may come in either order.
    assert events == {("peer_connected", *old_at), ("peer_disconnected", *old_at), ("peer_connected", *new_at)}
    await roundtrip(await connect(w1, key=app), new)
    await new.close()
    await until(lambda: len(backend.of(old.peer_id)) == 4, "the new socket's disconnect")
    assert (backend.of(old.peer_id)[3]["event"], backend.of(old.peer_id)[3]["connection"]) == ("peer_disconnected", new_at[1])
    await until(lambda: len(probe.of(old.peer_id)) == 4, "four signals")
    signals = {(line["signal"], line["worker"], line["connection"]) for line in probe.of(old.peer_id)}
    assert signals == {(p["event"], p["worker"], p["connection"]) for p in backend.of(old.peer_id)}


async def test_an_operators_disconnect_on_one_worker_ends_a_registration_on_the_other(cluster, app, backend, operator, probe):
    w1, w2 = cluster.workers
    peer = await connect(w2, key=app)
    worker, connection = registration(cluster, app, peer.peer_id)
    (row,) = cluster.database.query("SELECT id FROM signaling_peer WHERE key = ? AND peer_id = ?", (app, peer.peer_id))
    page = await asyncio.to_thread(
        operator.post, "/admin/signaling/peer/", {"action": "disconnect", "_selected_action": [str(row[0])]}
    )
    assert "Asked to disconnect 1 peer" in page.body
    assert (await peer.closed())[0] == 4102
    await until(lambda: len(backend.of(peer.peer_id)) == 2, "the disconnect's webhook")
    disconnected = backend.of(peer.peer_id)[1]
    assert (disconnected["event"], disconnected["worker"], disconnected["connection"]) == (
        "peer_disconnected", worker, connection,
    )
    await until(lambda: len(probe.of(peer.peer_id)) == 2, "both signals")
    assert_signal_matches(probe.of(peer.peer_id)[1], disconnected)


@pytest.mark.parametrize("server, going_away", [("uvicorn", 1001), ("daphne", 4001)])
async def test_a_worker_drained_by_sigterm_posts_every_disconnect_before_it_exits(
    cluster, app, backend, probe, server, going_away
):
    w1 = cluster.workers[0]
    leaving = Worker(cluster.database, cluster.env, server=server, name=f"leaving-{server}")
    try:
        peers = [await connect(leaving, key=app) for _ in range(3)]
        staying = await connect(w1, key=app)
        connections = {p.peer_id: registration(cluster, app, p.peer_id) for p in peers}
        await until(lambda: all(backend.of(p.peer_id) for p in peers), "the connects' webhooks")
        leaving.signal(signal.SIGTERM)
        for peer in peers:
            assert (await peer.closed())[0] == going_away
        assert await asyncio.to_thread(leaving.proc.wait, 15) is not None
        # Sent while the worker drained: there when it has exited, each once.
        for peer in peers:
            posts = backend.of(peer.peer_id)
            assert [(p["event"], p["worker"], p["connection"]) for p in posts] == [
                ("peer_connected", *connections[peer.peer_id]), ("peer_disconnected", *connections[peer.peer_id]),
            ]
            lines = probe.of(peer.peer_id)
            assert [line["signal"] for line in lines] == ["peer_connected", "peer_disconnected"]
            assert_signal_matches(lines[1], posts[1])
        assert backend.of(staying.peer_id)[-1]["event"] == "peer_connected"  # the other worker's peers stay
        await roundtrip(await connect(w1, key=app, peer_id=peers[0].peer_id), staying)
    finally:
        leaving.stop()


async def test_every_frame_a_peer_sends_is_signalled_as_a_message_by_its_worker(cluster, probe):
    """The reference's 'message' event: each accepted frame, as the worker holding its sender parsed it."""
    w1, w2 = cluster.workers
    a, b = await connect(w1), await connect(w2)
    await a.send({"type": "HEARTBEAT"})
    await a.relay("OFFER", b.peer_id, {"sdp": "v=0", "type": "offer"})
    assert (await b.expect("OFFER"))["payload"] == {"sdp": "v=0", "type": "offer"}
    await a.send({"type": "NOT-A-TYPE"})  # refused with an ERROR: not a message
    assert (await a.expect("ERROR"))
    await b.relay("ANSWER", a.peer_id, "answer")
    await a.expect("ANSWER")
    await until(lambda: len(probe.of(b.peer_id, "peer_message")) == 1, "b's message")
    sent = probe.of(a.peer_id, "peer_message")
    assert [line["message"] for line in sent] == [
        {"type": "HEARTBEAT"},
        {"type": "OFFER", "dst": b.peer_id, "payload": {"sdp": "v=0", "type": "offer"}},
    ]
    for line in sent:
        assert line["arguments"] == sorted([*ARGUMENTS, "message"])
        assert line["worker"] == registration(cluster, "peerjs", a.peer_id)[0] and line["on_event_loop"]
    (answer,) = probe.of(b.peer_id, "peer_message")
    assert answer["message"]["type"] == "ANSWER" and answer["worker"] == registration(cluster, "peerjs", b.peer_id)[0]
