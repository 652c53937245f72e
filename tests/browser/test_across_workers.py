"""Browsers on two different workers of one cluster find each other through Redis.

Each page is loaded from its own worker's URL, so its PeerJS client holds its
signaling socket on that worker's port: worker 1 and worker 2 share nothing
but Redis and the database, so the OFFER, ANSWER and CANDIDATE frames that
set up the WebRTC link can only have crossed between them through Redis.
Before the link is made, the registry is checked to hold each peer on the
worker its page came from, so a test cannot pass by accident on one worker.
"""
import re

import pytest
from playwright.sync_api import expect

from tests.browser.test_cue_pages import connect, expect_lit, open_receiver, open_sender, receiver_row
from tests.browser.test_peerjs_client import UUID4, load_client, wait_open
from tests.test_cluster import Cluster

pytestmark = [pytest.mark.browser, pytest.mark.cluster]

# What in a worker's log means something went wrong on the server side.
SERVER_TROUBLE = re.compile(r"Traceback|\bERROR\b|\bCRITICAL\b|Exception")


@pytest.fixture(scope="module")
def cluster(redis_server):
    """Two daphne workers, one private database, the session's redis-server.

    The worker logs live in the database's temporary directory, which stopping
    the cluster removes: anything in them that looks like trouble is printed
    first (pytest shows it with -s, or in the report of a failing test).
    """
    cluster = Cluster(redis_server, count=2)
    try:
        yield cluster
    finally:
        for worker in cluster.workers:
            log = worker.read_log()
            trouble = [line for line in log.splitlines() if SERVER_TROUBLE.search(line)]
            if trouble:
                print(f"\n----- server-side trouble in the log of {worker.log_path.name} -----")
                print(log)
        cluster.stop()


@pytest.fixture
def worker_logs_on_failure(cluster, request):
    """Print both workers' logs when the test fails (the consoles are printed by `machines`)."""
    yield
    report = getattr(request.node, "report_call", None)
    if report is not None and report.failed:
        for worker in cluster.workers:
            print(f"\n----- log of {worker.log_path.name} -----")
            print(worker.read_log() or "(nothing)")


def assert_registered_on(cluster, peer_id, worker):
    """The registry row of ``peer_id`` names ``worker``'s process (worker names hold the pid)."""
    rows = cluster.rows(peer_id)
    assert len(rows) == 1, rows
    assert f"-{worker.proc.pid}-" in rows[0][0], (peer_id, rows, worker.proc.pid)


def test_peerjs_clients_on_two_workers_open_a_data_connection_and_talk_both_ways(
    cluster, machines, worker_logs_on_failure
):
    w1, w2 = cluster.workers
    alice = load_client(machines("alice on worker 1"), w1)
    bob = load_client(machines("bob on worker 2"), w2)
    alice_id = wait_open(alice)
    bob_id = wait_open(bob)
    assert UUID4.match(alice_id), alice_id
    assert UUID4.match(bob_id), bob_id
    assert alice_id != bob_id
    # Each page's signaling socket is on the worker that served it.
    assert alice.evaluate("location.port") == str(w1.port)
    assert bob.evaluate("location.port") == str(w2.port)
    assert_registered_on(cluster, alice_id, w1)
    assert_registered_on(cluster, bob_id, w2)

    # Bob (worker 2) calls Alice (worker 1): the OFFER goes from worker 2 to
    # worker 1, the ANSWER back, and CANDIDATEs both ways.
    bob.evaluate(
        """(dst) => {
          const conn = window.outgoing = window.peer.connect(dst, {reliable: true});
          conn.on("open", () => conn.send("ping from bob"));
          conn.on("data", (data) => window.probe.received.push(data));
        }""",
        alice_id,
    )
    # A relay the server gives up on comes back as EXPIRE, which Bob reports
    # as "peer-unavailable": wait for that too, so such a failure says why.
    bob.wait_for_function("() => window.probe.received.length > 0 || window.probe.errors.length > 0")
    assert bob.evaluate("window.probe.errors") == []
    alice.wait_for_function("() => window.probe.received.length > 0")
    assert alice.evaluate("window.probe.received") == ["ping from bob"]
    assert bob.evaluate("window.probe.received") == ["pong: ping from bob"]
    # A second round trip on the same link, once it is established.
    bob.evaluate("() => window.outgoing.send('second ping')")
    bob.wait_for_function("() => window.probe.received.length > 1")
    assert alice.evaluate("window.probe.received") == ["ping from bob", "second ping"]
    assert bob.evaluate("window.probe.received") == ["pong: ping from bob", "pong: second ping"]
    assert alice.evaluate("window.probe.errors") == []
    assert bob.evaluate("window.probe.errors") == []


def test_a_sender_on_worker_1_cues_a_receiver_on_worker_2(cluster, machines, worker_logs_on_failure):
    w1, w2 = cluster.workers
    receiver, receiver_id = open_receiver(machines("receiver on worker 2"), w2)
    sender = open_sender(machines("sender on worker 1"), w1)
    sender_id = sender.locator("#status").text_content().removeprefix("Ready. Your ID: ")
    assert UUID4.match(sender_id), sender_id
    # The link the receiver offers points at its own worker.
    expect(receiver.locator("#share-link")).to_have_text(f"{w2.http}/send?id={receiver_id}")
    assert_registered_on(cluster, receiver_id, w2)
    assert_registered_on(cluster, sender_id, w1)

    connect(sender, receiver_id)
    expect(receiver.locator("#status")).to_have_text(f"Connected to sender {sender_id}")
    expect_lit(receiver, "standby")

    sender.click("#cue-go")
    expect_lit(receiver, "go")
    expect(receiver.locator("#announcer")).to_have_text("Cue: Go")
    expect(receiver.locator("#log li").first).to_have_text(re.compile(r"^\d\d:\d\d:\d\d Cue: Go$"))
    expect(sender.locator("#cue-result")).to_have_text(re.compile(r"^Go: delivered in \d+ ms$"))
    expect(receiver_row(sender, receiver_id).locator(".receiver-last-cue")).to_have_text(
        re.compile(r"^Go ✓ \d+ ms$")
    )
    for page in (receiver, sender):
        expect(page.locator("#banner")).to_be_hidden()
