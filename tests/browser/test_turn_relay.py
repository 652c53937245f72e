"""TURN in a real browser: PeerJS connects through a real coturn with the credentials the server hands out.

Two Chromium contexts (two machines) fetch {base}/{key}/ice-servers from a
real worker and open a PeerJS DataConnection with `iceTransportPolicy:
"relay"`: only relayed candidates may be used, so it connects only if coturn
accepted the credentials. getStats() then shows the pair in use.
Then the cue pages: with TURN configured they fetch the endpoint
themselves, and a cue goes through on a network where only relays work.
"""
import os
import re
from pathlib import Path

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import wait_for_async
from tests.browser.test_cue_pages import connect, expect_lit, open_receiver, open_sender, receiver_row
from tests.conftest import TEST_ENV, TURN_SECRET
from tests.servers import BASE, Database, Worker

pytestmark = pytest.mark.browser

HARNESS = Path(__file__).with_name("peerjs_harness.js")


@pytest.fixture(scope="module")
def turn_worker(turn_server):
    database = Database()
    worker = Worker(database, {
        **TEST_ENV,
        "PEERJS_TURN_URLS": f"{turn_server.url('udp')},{turn_server.url('tcp')}",
        "PEERJS_TURN_SECRET": TURN_SECRET,
        # What the pages use when the endpoint fails: a STUN server we can recognise.
        "CUEPAGES_ICE_SERVERS": '[{"urls": "stun:127.0.0.1:9"}]',
    }, name="turn-pages")
    yield worker
    worker.stop()
    database.drop()


def load(machine, worker):
    page = machine.page
    page.goto(f"{worker.http}/")
    page.add_script_tag(url=f"{worker.http}/static/vendor/peerjs/peerjs.min.js")
    page.add_script_tag(path=str(HARNESS))
    return page


# In the page: fetch the ICE servers as an app's page would, keep one transport's TURN URL.
FETCH_ICE = """
async ([url, transport]) => {
  const answer = await (await fetch(url, {cache: "no-store"})).json();
  return answer.iceServers
    .map((server) => ({...server, urls: [].concat(server.urls).filter((u) => u.endsWith("transport=" + transport))}))
    .filter((server) => server.urls.length > 0);
}
"""

# The selected candidate pair of a connection: its state, and each end's candidate.
SELECTED_PAIR = """
async (pc) => {
  const stats = await pc.getStats();
  let pair = null;
  stats.forEach((report) => {
    if (report.type === "transport" && report.selectedCandidatePairId) pair = stats.get(report.selectedCandidatePairId);
  });
  if (!pair) return null;
  const local = stats.get(pair.localCandidateId), remote = stats.get(pair.remoteCandidateId);
  if (!local || !remote) return null;  // a pair whose candidates the report no longer (or not yet) holds
  return {
    state: pair.state,
    local: {type: local.candidateType, address: local.address, port: local.port},
    remote: {type: remote.candidateType, address: remote.address, port: remote.port},
  };
}
"""


def wait_for_relay(page, connection_expression, turn):
    """Poll until the selected pair has succeeded with a relay on both ends; True then.

    Our end's candidate must be a relay coturn allocated. The other end's is
    a relay too, but Chromium may know it only as "prflx" (peer reflexive):
    when its connectivity checks arrive before its candidate is signalled,
    the pair is formed with the address they came from, and keeps that type
    once the candidate arrives. So each end is judged by its address, one of
    coturn's relay ports, not by the type the stats give it. And while
    Chromium moves between pairs, the selected pair's candidates may be
    missing from a report: that poll finds nothing and the next one looks
    again (a missing candidate used to throw, which ends a wait at once).
    Right after open the answerer may still show its pair in progress.
    """
    ports = [turn.relay_ports.start, turn.relay_ports.stop]
    return wait_for_async(
        page,
        f"""async ([low, high]) => {{
            const pair = await ({SELECTED_PAIR})({connection_expression});
            const relayed = (end) => end.address === "127.0.0.1" && low <= end.port && end.port < high;
            return pair !== null && pair.state === "succeeded" && pair.local.type === "relay"
                && relayed(pair.local) && relayed(pair.remote);
        }}""",
        ports,
        interval=200,
    )


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_two_browsers_connect_through_coturn_relays_only(turn_worker, turn_server, machines, transport):
    alice = load(machines("alice", bypass_csp=True), turn_worker)
    bob = load(machines("bob", bypass_csp=True), turn_worker)
    url = f"{BASE}/peerjs/ice-servers"
    for page, name in ((alice, "a"), (bob, "b")):
        servers = page.evaluate(FETCH_ICE, [url, transport])
        assert servers and all(s["urls"][0].startswith("turn:") for s in servers)
        page.evaluate("([name, servers]) => makePeer(name, null, {config: {iceServers: servers, iceTransportPolicy: 'relay'}})", [name, servers])
    for page, name in ((alice, "a"), (bob, "b")):
        page.wait_for_function(f"() => window.record.peers.{name}.open")
    bob_id = bob.evaluate("window.record.peers.b.id")
    alice_id = alice.evaluate("window.record.peers.a.id")

    alice.evaluate("(dst) => openConnection('a', 'a->b', dst)", bob_id)
    alice.wait_for_function("() => window.record.conns['a->b'].open")
    alice.evaluate("() => window.conns['a->b'].send('over the relay')")
    bob.wait_for_function(f"() => {{ const k = connectionTo('b', {alice_id!r}); return k && window.record.conns[k].received.length > 0; }}")
    incoming = bob.evaluate(f"connectionTo('b', {alice_id!r})")
    assert bob.evaluate(f"window.record.conns[{incoming!r}].received") == ["over the relay"]

    for page, expression in ((alice, "window.conns['a->b'].peerConnection"), (bob, f"window.conns[{incoming!r}].peerConnection")):
        assert wait_for_relay(page, expression, turn_server) is True, page.evaluate(f"async () => ({SELECTED_PAIR})({expression})")


# Stands in for a network where only relays get through: every RTCPeerConnection
# the page makes uses relayed candidates only. The page's code is untouched.
RELAY_ONLY = """
(() => {
  const Native = window.RTCPeerConnection;
  window.peerConnections = [];
  window.RTCPeerConnection = function (config, ...rest) {
    const pc = new Native(Object.assign({}, config, {iceTransportPolicy: "relay"}), ...rest);
    window.peerConnections.push(pc);
    return pc;
  };
  window.RTCPeerConnection.prototype = Native.prototype;
})();
"""

# Records the RTCPeerConnections the page makes, changing nothing.
RECORD_ONLY = RELAY_ONLY.replace(', {iceTransportPolicy: "relay"}', "")

LAST_CONNECTION = "window.peerConnections[window.peerConnections.length - 1]"


def test_the_cue_pages_fetch_turn_credentials_and_cue_through_a_relay(turn_worker, turn_server, machines):
    receiver_machine, sender_machine = machines("receiver"), machines("sender")
    for machine in (receiver_machine, sender_machine):
        machine.context.add_init_script(RELAY_ONLY)
    receiver, receiver_id = open_receiver(receiver_machine, turn_worker)
    sender = open_sender(sender_machine, turn_worker)
    connect(sender, receiver_id)
    sender.click("#cue-go")
    expect_lit(receiver, "go")
    expect(sender.locator("#cue-result")).to_have_text(re.compile(r"^Go: delivered in \d+ ms$"))
    for machine in (receiver_machine, sender_machine):
        assert any(url.endswith(f"{BASE}/peerjs/ice-servers") for url in machine.requests), machine.name
    for page in (sender, receiver):
        assert wait_for_relay(page, LAST_CONNECTION, turn_server) is True


def test_when_the_endpoint_fails_the_cue_pages_use_the_configured_ice_servers(turn_worker, machines):
    receiver_machine, sender_machine = machines("receiver"), machines("sender")
    for machine in (receiver_machine, sender_machine):
        machine.context.add_init_script(RECORD_ONLY)
        machine.context.route("**/ice-servers", lambda route: route.abort())
    receiver, receiver_id = open_receiver(receiver_machine, turn_worker)
    sender = open_sender(sender_machine, turn_worker)
    connect(sender, receiver_id)
    sender.click("#cue-go")
    expect_lit(receiver, "go")
    servers = sender.evaluate(f"{LAST_CONNECTION}.getConfiguration().iceServers")
    assert [s["urls"] for s in servers] == [["stun:127.0.0.1:9"]]
    expect(receiver_row(sender, receiver_id)).to_have_attribute("data-state", "open")
