"""Real PeerJS apps keep working as they do on the reference PeerServer.

The PeerJS client closes every connection with a peer when it hears LEAVE
about it, and aborts its whole Peer on any ERROR. So whatever a real app does
(leave the server once connected, reload, send odd metadata, connect to an
id nobody holds, open a hundred connections at once, go quiet in a
background tab) must not earn it either. Each test is one thing apps do,
run on one worker (daphne, as `manage.py runserver`) and across two workers
(uvicorn, as in production, with each side's page on its own worker).

"Keeps working" is shown the way a user sees it: messages keep arriving both
ways, or video frames keep being decoded, for a while after the event; no
connection closes and no error fires.
"""
import os
import uuid
from pathlib import Path

import pytest

from tests.browser.conftest import Machine, wait_for_async
from tests.servers import Database, Worker
from tests.admin_http import AdminSession, create_superuser
from tests.test_cluster import Cluster

pytestmark = [pytest.mark.browser, pytest.mark.cluster]
XDIST_GROUPS = "param:topology"  # each topology's tests in a process of their own (tests/conftest.py)

HARNESS = Path(__file__).with_name("peerjs_harness.js")
# The reference's timers (expire 5 s, alive 90 s), short worker beats.
ENV = {
    "PEERJS_EXPIRE_TIMEOUT": "5000",
    "PEERJS_CLEANUP_OUT_MSGS": "1000",
    "PEERJS_WORKER_BEAT": "500",
    "PEERJS_WORKER_TIMEOUT": "3000",
}
SLOW = 60_000  # ms: a hundred WebRTC connections on two cores take a while
# The silent peer's test, at a tenth of the scale: peer@1.0.2's alive_timeout
# of 90 s (the default, tests/test_options.py) against a background tab quiet
# for 60 s, here 10 s against 6 s.
QUIET_ALIVE_TIMEOUT_MS = 10_000
SILENCE = 6  # seconds


class Topology:
    """Where each side's page comes from: one worker for both, or one each."""

    def __init__(self, name, workers, database):
        self.name = name
        self.workers = workers
        self.database = database
        self.a, self.b = workers[0], workers[-1]

    def rows(self, peer_id):
        return self.database.query("SELECT worker FROM signaling_peer WHERE peer_id = ?", (peer_id,))


def start_topology(name, redis_server, env=ENV):
    if name == "one worker":
        database = Database()
        worker = Worker(database, env, server="daphne", name="solo")
        return Topology(name, [worker], database), lambda: (worker.stop(), database.drop())
    cluster = Cluster(redis_server, count=2, env=env, server="uvicorn")
    return Topology(name, cluster.workers, cluster.database), cluster.stop


@pytest.fixture(scope="module", params=["one worker", "two workers"])
def topology(request, redis_server, chromium):
    topology, stop = start_topology(request.param, redis_server)
    yield topology
    stop()


def load(page, worker):
    page.goto(f"{worker.http}/")
    page.add_script_tag(url=f"{worker.http}/static/vendor/peerjs/peerjs.min.js")
    page.add_script_tag(path=str(HARNESS))
    return page


def app(machines, worker, name):
    """A page of a PeerJS app served by ``worker`` (its Peer signals there)."""
    return load(machines(name, bypass_csp=True).page, worker)


def wait_open(page, name):
    page.wait_for_function(f"() => record.peers.{name}.open || record.peers.{name}.errors.length > 0")
    rec = page.evaluate(f"record.peers.{name}")
    assert not rec["errors"], f"{name} did not open: {rec['errors']}"
    return rec["id"]


def peer(page, name, peer_id=None, options=None):
    page.evaluate("([name, id, options]) => makePeer(name, id, options)", [name, peer_id, options])
    return wait_open(page, name)


def wait_conn_open(page, key, timeout=None):
    page.wait_for_function(
        "(key) => record.conns[key] && (record.conns[key].open || record.conns[key].closed)", arg=key, timeout=timeout
    )
    assert page.evaluate("(key) => record.conns[key].open && !record.conns[key].closed", key), key


def incoming(page, peer_name, remote_id):
    """The key of the connection ``peer_name`` accepted from ``remote_id``."""
    page.wait_for_function("([p, r]) => connectionTo(p, r) !== undefined", arg=[peer_name, remote_id])
    key = page.evaluate("([p, r]) => connectionTo(p, r)", [peer_name, remote_id])
    wait_conn_open(page, key)
    return key


def assert_chatter_both_ways(page_a, key_a, page_b, key_b, count=40, interval=50):
    """``count`` messages each way, one every ``interval`` ms: all arrive, in order, nothing closes."""
    page_a.evaluate("([k, n, i]) => chatter(k, 'a', n, i)", [key_a, count, interval])
    page_b.evaluate("([k, n, i]) => chatter(k, 'b', n, i)", [key_b, count, interval])
    for page, key, other in ((page_a, key_a, "b"), (page_b, key_b, "a")):
        page.wait_for_function(
            "([k, n]) => record.conns[k].received.length >= n || record.conns[k].closed", arg=[key, count]
        )
        rec = page.evaluate("(k) => record.conns[k]", key)
        assert not rec["closed"] and not rec["errors"], rec
        assert rec["received"] == [f"{other}:{n}" for n in range(count)]


def assert_no_notice_harmed(page, name, allowed_errors=()):
    """The server sent this Peer no LEAVE and no ERROR, and it is still connected unless it chose not to be."""
    rec = page.evaluate(f"record.peers.{name}")
    assert "LEAVE" not in rec["serverFrames"] and "ERROR" not in rec["serverFrames"], rec["serverFrames"]
    assert [e["type"] for e in rec["errors"] if e["type"] not in allowed_errors] == [], rec["errors"]


def connected_pair(machines, topology, tx_options=None):
    """A sender on worker A with an open DataConnection to a receiver on worker B."""
    rx = app(machines, topology.b, "receiver")
    rx_id = peer(rx, "rx")
    tx = app(machines, topology.a, "sender")
    tx_id = peer(tx, "tx")
    tx.evaluate("(dst) => openConnection('tx', 'out', dst)", rx_id)
    wait_conn_open(tx, "out")
    return tx, tx_id, rx, rx_id, incoming(rx, "rx", tx_id)


# --- LEAVE only when a peer asked to leave ---------------------------------------


def test_a_receiver_that_leaves_the_server_once_connected_keeps_its_connection(machines, topology):
    rx = app(machines, topology.b, "receiver")
    rx_id = peer(rx, "rx")
    # As PeerJS documents: disconnect() keeps the connections it has.
    rx.evaluate("rx.on('connection', (c) => c.on('open', () => rx.disconnect()))")
    tx = app(machines, topology.a, "sender")
    tx_id = peer(tx, "tx")
    tx.evaluate("(dst) => openConnection('tx', 'out', dst)", rx_id)
    wait_conn_open(tx, "out")
    rx_key = incoming(rx, "rx", tx_id)
    rx.wait_for_function("() => record.peers.rx.disconnected")
    assert_chatter_both_ways(tx, "out", rx, rx_key)
    assert_no_notice_harmed(tx, "tx")
    assert_no_notice_harmed(rx, "rx")


def test_a_callee_that_leaves_the_server_once_media_flows_keeps_the_call(machines, topology):
    callee = app(machines, topology.b, "callee")
    callee_id = peer(callee, "callee")
    # It leaves once media flows: its ICE connected (so the ANSWER went out)
    # and its candidates all sent -- and the caller's too, or a candidate the
    # caller gathered late meets an id that left (EXPIRE: PeerJS's
    # peer-unavailable, as the reference answers it). A fixed delay after
    # 'stream' (which fires before the ANSWER is made) left before the ANSWER
    # on a busy machine.
    callee.evaluate(
        """callee.on('call', (c) => c.on('stream', () => {
            const pc = c.peerConnection;
            const flowing = () => {
                if (pc.iceGatheringState === 'complete' && ['connected', 'completed'].includes(pc.iceConnectionState)) {
                    record.flowing = true;
                }
            };
            pc.addEventListener('icegatheringstatechange', flowing);
            pc.addEventListener('iceconnectionstatechange', flowing);
            flowing();
        }))"""
    )
    caller = app(machines, topology.a, "caller")
    caller_id = peer(caller, "caller")
    caller.evaluate("(dst) => openCall('caller', 'out', dst)", callee_id)
    caller.wait_for_function("() => record.calls.out.stream || record.calls.out.closed")
    caller.wait_for_function("() => calls.out.peerConnection.iceGatheringState === 'complete'")
    callee.wait_for_function("() => record.flowing === true")
    callee.evaluate("callee.disconnect()")
    callee.wait_for_function("() => record.peers.callee.disconnected")
    callee_key = callee.evaluate("(r) => Object.keys(record.calls).find((k) => k.startsWith(`callee<-${r}#`))", caller_id)
    # Video keeps being decoded on both sides, well after the callee left the server.
    for page, key in ((caller, "out"), (callee, callee_key)):
        before = page.evaluate("(k) => framesDecoded(k)", key)
        assert wait_for_async(page, "async ([k, n]) => (await framesDecoded(k)) >= n || record.calls[k].closed", [key, before + 20])
        rec = page.evaluate("(k) => ({closed: record.calls[k].closed, live: record.calls[k].tracks.every((t) => t.readyState === 'live')})", key)
        assert rec == {"closed": False, "live": True}
    assert_no_notice_harmed(caller, "caller")
    assert_no_notice_harmed(callee, "callee")


def test_a_caller_that_leaves_the_server_when_the_answer_arrives_still_connects(machines, topology):
    callee = app(machines, topology.b, "callee")
    callee_id = peer(callee, "callee")
    caller = app(machines, topology.a, "caller")
    caller_id = peer(caller, "caller")
    # It leaves once its own candidates are all out: the ANSWER comes back
    # while Chromium may still be gathering (a busy machine, measured), and a
    # caller that leaves before its candidates are sent strands them itself;
    # no server could carry what was never sent.
    caller.evaluate(
        """caller.socket.on('message', (f) => {
            if (f.type !== 'ANSWER') return;
            const pc = conns.out.peerConnection;
            const leaveWhenGathered = () => { if (pc.iceGatheringState === 'complete') caller.disconnect(); };
            pc.addEventListener('icegatheringstatechange', leaveWhenGathered);
            leaveWhenGathered();
        })"""
    )
    caller.evaluate("(dst) => openConnection('caller', 'out', dst)", callee_id)
    wait_conn_open(caller, "out")
    caller.wait_for_function("() => record.peers.caller.disconnected")
    callee_key = incoming(callee, "callee", caller_id)
    assert_chatter_both_ways(caller, "out", callee, callee_key, count=20)
    assert_no_notice_harmed(caller, "caller")
    # The callee's last candidates could not reach the caller, which left:
    # the server answers them with EXPIRE (peer-unavailable), as the
    # reference does, and that closes nothing.
    assert_no_notice_harmed(callee, "callee", allowed_errors=("peer-unavailable",))


def test_a_sender_that_reloads_its_page_right_after_open_is_not_announced_as_gone(machines, topology):
    tx, tx_id, rx, rx_id, _rx_key = connected_pair(machines, topology)
    load(tx, topology.a)  # a reload: the page and its Peer start over
    new_tx_id = peer(tx, "tx")
    tx.evaluate("(dst) => openConnection('tx', 'again', dst)", rx_id)
    wait_conn_open(tx, "again")
    assert_chatter_both_ways(tx, "again", rx, incoming(rx, "rx", new_tx_id), count=10)
    assert_no_notice_harmed(rx, "rx")


def signaling_in_flight(tx, tx_id, rx):
    """Start a second connection from tx to rx and return once its OFFER reached rx.

    So that rx's socket closes while signaling for it is still flowing, as it
    does when a peer leaves right after connecting.
    """
    tx.evaluate("(dst) => openConnection('tx', 'extra', dst)", rx.evaluate("record.peers.rx.id"))
    rx.wait_for_function(
        "(tx) => Object.keys(record.conns).filter((k) => k.startsWith(`rx<-${tx}#`)).length === 2", arg=tx_id
    )


def test_an_operator_disconnect_leaves_the_peers_connections_alone(machines, topology):
    tx, tx_id, rx, rx_id, rx_key = connected_pair(machines, topology)
    operator = AdminSession(topology.a)
    assert operator.login(create_superuser(topology.a, "stage-manager-pw"), "stage-manager-pw").status == 200
    signaling_in_flight(tx, tx_id, rx)
    operator.post("/admin/signaling/peer/", {"action": "disconnect", "_selected_action": [topology.database.peer_row(rx_id)]})
    rx.wait_for_function("() => record.peers.rx.disconnected")
    assert_chatter_both_ways(tx, "out", rx, rx_key)
    # What was on its way to rx when it went is answered with EXPIRE.
    assert_no_notice_harmed(tx, "tx", allowed_errors=("peer-unavailable",))


# --- ERROR only for what no PeerJS client sends -----------------------------------


def test_metadata_and_a_label_with_a_lone_surrogate_arrive(machines, topology):
    rx = app(machines, topology.b, "receiver")
    rx_id = peer(rx, "rx")
    tx = app(machines, topology.a, "sender")
    tx_id = peer(tx, "tx")
    tx.evaluate(
        """(dst) => openConnection('tx', 'out', dst,
              {reliable: true, label: 'cue' + '😀'.slice(0, 1), metadata: {note: '😀x'.slice(1)}})""",
        rx_id,
    )
    wait_conn_open(tx, "out")
    rx_key = incoming(rx, "rx", tx_id)
    assert rx.evaluate("(k) => record.conns[k].metadata.note === '😀x'.slice(1)", rx_key)
    assert_chatter_both_ways(tx, "out", rx, rx_key, count=5)
    assert_no_notice_harmed(tx, "tx")


def test_connecting_to_a_number_or_an_impossible_id_is_peer_unavailable_and_the_peer_stays(machines, topology):
    page = app(machines, topology.a, "caller")
    peer(page, "p")
    page.evaluate("p.connect(12345)")
    page.evaluate("(id) => p.connect(id)", "n" * 70)  # a valid id nobody holds
    page.evaluate("(id) => p.connect(id)", "y" * 300)  # longer than any id
    page.wait_for_function("() => record.peers.p.errors.length >= 3")
    rec = page.evaluate("record.peers.p")
    assert [e["type"] for e in rec["errors"]] == ["peer-unavailable"] * 3
    assert page.evaluate("p.open && !p.disconnected")
    assert "ERROR" not in rec["serverFrames"]


def test_ids_of_65_to_200_characters_open_and_connect(machines, topology):
    long_a = "a" * 60 + uuid.uuid4().hex[:5]
    long_b = "b" * 100 + "-" + uuid.uuid4().hex + "-" + "c" * (200 - 134)
    assert (len(long_a), len(long_b)) == (65, 200)
    rx = app(machines, topology.b, "receiver")
    assert peer(rx, "rx", long_b) == long_b
    tx = app(machines, topology.a, "sender")
    assert peer(tx, "tx", long_a) == long_a
    tx.evaluate("(dst) => openConnection('tx', 'out', dst)", long_b)
    wait_conn_open(tx, "out")
    assert_chatter_both_ways(tx, "out", rx, incoming(rx, "rx", long_a), count=5)


def test_a_wrong_key_is_reported_with_the_references_message(machines, topology):
    page = app(machines, topology.a, "stranger")
    page.evaluate("makePeer('p', null, {key: 'not-the-key'})")
    page.wait_for_function("() => record.peers.p.errors.length > 0")
    assert page.evaluate("record.peers.p.errors") == [{"type": "server-error", "message": "Invalid key provided"}]


# --- limits no real app meets --------------------------------------------------------


def test_fifteen_senders_reach_a_receiver_that_was_offline_for_two_seconds(machines, topology):
    rx_id = f"stage-{uuid.uuid4().hex[:8]}"
    # The receiver's page is loaded first: its two seconds offline are
    # counted from the senders' OFFERs, not from a page load on a busy machine
    # (past EXPIRE_TIMEOUT the server answers EXPIRE, as the reference does).
    rx = app(machines, topology.b, "receiver")
    senders = app(machines, topology.a, "senders")
    for n in range(15):
        peer(senders, f"s{n}")
    senders.evaluate("(dst) => { for (let n = 0; n < 15; n++) openConnection(`s${n}`, `out${n}`, dst); }", rx_id)
    # Every sender's OFFER is with the server before the receiver comes.
    senders.wait_for_function("() => [...Array(15).keys()].every((n) => record.peers[`s${n}`].sentFrames.includes('OFFER'))")
    rx.evaluate("(id) => setTimeout(() => makePeer('rx', id), 2000)", rx_id)
    for n in range(15):
        wait_conn_open(senders, f"out{n}", timeout=SLOW)
    senders.evaluate("() => { for (let n = 0; n < 15; n++) conns[`out${n}`].send(`hello ${n}`); }")
    rx.wait_for_function(
        "() => Object.values(record.conns).filter((c) => c.received.length > 0).length === 15", timeout=SLOW
    )
    for n in range(15):
        assert_no_notice_harmed(senders, f"s{n}")
    assert_no_notice_harmed(rx, "rx")


def test_a_hundred_connections_opened_at_once_all_open(machines, topology):
    rx = app(machines, topology.b, "receiver")
    rx_id = peer(rx, "rx")
    tx = app(machines, topology.a, "sender")
    peer(tx, "tx")
    tx.evaluate("(dst) => { for (let n = 0; n < 100; n++) openConnection('tx', `out${n}`, dst); }", rx_id)
    tx.wait_for_function(
        "() => Object.values(record.conns).filter((c) => c.open || c.closed).length === 100", timeout=SLOW
    )
    assert tx.evaluate("Object.values(record.conns).filter((c) => c.open && !c.closed).length") == 100
    assert_no_notice_harmed(tx, "tx")
    assert_no_notice_harmed(rx, "rx")


def test_sixty_calls_placed_at_once_all_connect(machines, topology):
    callee = app(machines, topology.b, "callee")
    callee_id = peer(callee, "callee")
    caller = app(machines, topology.a, "caller")
    peer(caller, "caller")
    caller.evaluate("(dst) => { for (let n = 0; n < 60; n++) openCall('caller', `call${n}`, dst); }", callee_id)
    caller.wait_for_function(
        "() => Object.values(record.calls).filter((c) => c.stream || c.closed).length === 60", timeout=SLOW
    )
    assert caller.evaluate("Object.values(record.calls).filter((c) => c.stream && !c.closed).length") == 60
    assert_no_notice_harmed(caller, "caller")
    assert_no_notice_harmed(callee, "callee")


@pytest.mark.parametrize("name", ["one worker", "two workers"])
def test_a_peer_silent_for_most_of_the_alive_timeout_stays_registered_and_reachable(machines, redis_server, name):
    """No heartbeat at all (a background tab's throttled timers), for most of alive_timeout."""
    topology, stop = start_topology(name, redis_server, {**ENV, "PEERJS_ALIVE_TIMEOUT": str(QUIET_ALIVE_TIMEOUT_MS)})
    try:
        # The sender is ready first, so that after the silence only its OFFER
        # has to reach the quiet peer within the rest of alive_timeout.
        tx = app(machines, topology.a, "sender")
        tx_id = peer(tx, "tx")
        quiet = app(machines, topology.b, "quiet")
        quiet.evaluate("makePeer('p', null, {pingInterval: 3600000})")
        quiet_id = wait_open(quiet, "p")
        quiet.wait_for_timeout(SILENCE * 1000)  # the silence is what is tested
        assert topology.rows(quiet_id)
        assert quiet.evaluate("p.open && !p.disconnected")
        tx.evaluate("(dst) => openConnection('tx', 'out', dst)", quiet_id)
        wait_conn_open(tx, "out")
        assert_chatter_both_ways(tx, "out", quiet, incoming(quiet, "p", tx_id), count=5)
    finally:
        stop()


# --- a worker that stops -------------------------------------------------------------


@pytest.mark.parametrize("server", ["daphne", "uvicorn"])
def test_the_receivers_worker_stopping_leaves_the_connection_alone(machines, redis_server, server):
    cluster = Cluster(redis_server, count=2, env=ENV, server=server)
    try:
        topology = Topology("two workers", cluster.workers, cluster.database)
        tx, tx_id, rx, _rx_id, rx_key = connected_pair(machines, topology)
        signaling_in_flight(tx, tx_id, rx)
        topology.b.stop()  # SIGTERM: it drains, closing its sockets with 1001
        rx.wait_for_function("() => record.peers.rx.disconnected")
        assert_chatter_both_ways(tx, "out", rx, rx_key)
        assert_no_notice_harmed(tx, "tx", allowed_errors=("peer-unavailable",))
    finally:
        cluster.stop()
