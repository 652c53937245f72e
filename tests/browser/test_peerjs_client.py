"""The real PeerJS client (npm peerjs 1.5.5, as the pages serve it) against our server.

This is the proof that the browser client works unchanged: ids come from the
server, a DataConnection is negotiated through it, and the client's own error
types come out of our ERROR/ID-TAKEN/EXPIRE answers.
"""
import re
import uuid

import pytest

from tests.servers import BASE

pytestmark = pytest.mark.browser

UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")

# Runs in the page: start a Peer against the server that served the page and
# record what happens to it on window.probe, for the test to wait on.
START_PEER = """
([peerId, path, key]) => {
  const probe = window.probe = {id: null, errors: [], received: [], opened: false};
  const options = {
    host: location.hostname,
    port: Number(location.port),
    path, key, secure: false, debug: 2,
    config: {iceServers: []},
  };
  const peer = window.peer = peerId ? new Peer(peerId, options) : new Peer(options);
  peer.on("open", (id) => { probe.id = id; });
  peer.on("error", (err) => { probe.errors.push(err.type); });
  // Answer every message on an incoming connection, so both directions are tested.
  peer.on("connection", (conn) => {
    conn.on("data", (data) => {
      probe.received.push(data);
      conn.send("pong: " + data);
    });
  });
}
"""


def load_client(machine, server, peer_id=None):
    page = machine.page
    page.goto(f"{server.http}/")
    page.add_script_tag(url=f"{server.http}/static/vendor/peerjs/peerjs.min.js")
    page.evaluate(START_PEER, [peer_id, BASE, "peerjs"])
    return page


def wait_open(page):
    page.wait_for_function("() => window.probe.id !== null || window.probe.errors.length > 0")
    errors = page.evaluate("window.probe.errors")
    assert not errors, f"the Peer failed to open: {errors}"
    return page.evaluate("window.probe.id")


def test_two_peers_get_ids_from_the_server_and_exchange_messages(server, machines):
    alice = load_client(machines("alice"), server)
    bob = load_client(machines("bob"), server)
    alice_id = wait_open(alice)
    bob_id = wait_open(bob)
    assert UUID4.match(alice_id), alice_id
    assert UUID4.match(bob_id), bob_id
    assert alice_id != bob_id

    bob.evaluate(
        """(dst) => {
          const conn = window.peer.connect(dst, {reliable: true});
          conn.on("open", () => conn.send("ping from bob"));
          conn.on("data", (data) => window.probe.received.push(data));
        }""",
        alice_id,
    )
    alice.wait_for_function("() => window.probe.received.length > 0")
    bob.wait_for_function("() => window.probe.received.length > 0")
    assert alice.evaluate("window.probe.received") == ["ping from bob"]
    assert bob.evaluate("window.probe.received") == ["pong: ping from bob"]
    assert alice.evaluate("window.probe.errors") == []
    assert bob.evaluate("window.probe.errors") == []


def test_a_taken_id_is_reported_as_unavailable_id(server, machines):
    wanted = f"stage-{uuid.uuid4().hex[:10]}"
    holder = load_client(machines("holder"), server, wanted)
    assert wait_open(holder) == wanted

    latecomer = load_client(machines("latecomer"), server, wanted)
    latecomer.wait_for_function("() => window.probe.errors.length > 0")
    assert latecomer.evaluate("window.probe.errors") == ["unavailable-id"]
    assert latecomer.evaluate("window.probe.id") is None
    # The holder keeps its id.
    assert holder.evaluate("window.peer.open && !window.peer.disconnected") is True


def test_connecting_to_an_id_nobody_holds_is_reported_as_peer_unavailable(server, machines):
    page = load_client(machines("caller"), server)
    wait_open(page)
    page.evaluate("(dst) => { window.peer.connect(dst); }", f"nobody-{uuid.uuid4().hex[:10]}")
    # The server queues the OFFER, then answers EXPIRE after expire_timeout (1 s here).
    page.wait_for_function("() => window.probe.errors.length > 0")
    assert page.evaluate("window.probe.errors") == ["peer-unavailable"]
    # The error is about the connection only: the Peer stays connected to the server.
    assert page.evaluate("window.peer.open && !window.peer.disconnected") is True


@pytest.mark.parametrize("kind", ["daphne", "uvicorn"])
def test_metadata_over_the_frame_cap_fails_that_connection_alone(kind, server, make_server, machines):
    """peer.connect(id, {metadata}) with 300 KB of metadata: the OFFER is over
    PEERJS_MAX_FRAME_BYTES (256 KiB), so the server answers EXPIRE and PeerJS
    reports peer-unavailable; the Peer, and its connection already open, live on."""
    worker = server if kind == "daphne" else make_server(server="uvicorn")
    alice = load_client(machines("alice"), worker)
    bob = load_client(machines("bob"), worker)
    alice_id = wait_open(alice)
    wait_open(bob)
    bob.evaluate(
        """(dst) => {
          const conn = window.small = window.peer.connect(dst, {metadata: {note: "small"}});
          conn.on("open", () => conn.send("before"));
          conn.on("data", (data) => window.probe.received.push(data));
        }""",
        alice_id,
    )
    bob.wait_for_function("() => window.probe.received.length === 1")
    bob.evaluate("(dst) => { window.peer.connect(dst, {metadata: {note: 'x'.repeat(300000)}}); }", alice_id)
    bob.wait_for_function("() => window.probe.errors.length > 0")
    assert bob.evaluate("window.probe.errors") == ["peer-unavailable"]
    assert bob.evaluate("window.peer.open && !window.peer.disconnected") is True
    bob.evaluate("window.small.send('after')")
    bob.wait_for_function("() => window.probe.received.length === 2")
    assert bob.evaluate("window.probe.received") == ["pong: before", "pong: after"]
    # And the server still relays for it: a new connection opens.
    bob.evaluate(
        """(dst) => {
          const conn = window.peer.connect(dst);
          conn.on("open", () => conn.send("new"));
          conn.on("data", (data) => window.probe.received.push(data));
        }""",
        alice_id,
    )
    bob.wait_for_function("() => window.probe.received.length === 3")
    assert alice.evaluate("window.probe.received") == ["before", "after", "new"]
    assert alice.evaluate("window.probe.errors") == []
