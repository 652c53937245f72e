"""The cue pages and the real PeerJS client over HTTPS and WSS through nginx.

Against `make cluster` with TLS (the session's ``tls_cluster``: nginx
terminating TLS with a certificate from the test's own CA, in front of two
daphne workers on Redis; the plain cluster of tests/test_cluster_command.py
runs uvicorn), as a LAN deployment runs it. Chromium accepts the
certificate (``ignore_https_errors``, as a browser accepts one mkcert
installed); each test then checks that what it talked to really was nginx's
TLS port serving that certificate: the page's origin, the certificate's
issuer, nginx's Server header, and every signaling socket's wss:// URL. A
worker reached directly, plain HTTP or plain WS would fail them.
"""
from types import SimpleNamespace

import pytest
from playwright.sync_api import expect

from tests.browser.test_cue_pages import connect, expect_lit, open_receiver, open_sender
from tests.browser.test_peerjs_apps import HARNESS, incoming, peer, wait_conn_open
from tests.cluster_command import BASE, CLUSTER_TEST_TIMEOUT

# The first test to use the session's cluster waits for it to start.
pytestmark = [pytest.mark.browser, pytest.mark.cluster, pytest.mark.timeout(CLUSTER_TEST_TIMEOUT)]

TEST_CA = "PeerServer tests CA"  # tests.servers.Certificates' issuer


def site(tls_cluster):
    """What nginx serves over HTTPS, named as the browser reaches it."""
    return f"https://localhost:{tls_cluster.tls_port}"


def https_machine(machines, name, **options):
    """A machine that records each page it loads and every WebSocket its pages open."""
    machine = machines(name, ignore_https_errors=True, **options)
    machine.documents, machine.sockets = [], []
    machine.page.on("response", lambda r: r.request.resource_type == "document" and machine.documents.append(r))
    machine.page.on("websocket", lambda ws: machine.sockets.append(ws.url))
    return machine


def assert_served_by_nginx_over_tls(machine, tls_cluster):
    page = machine.page
    origin = site(tls_cluster)
    assert page.evaluate("[location.protocol, location.origin, window.isSecureContext]") == ["https:", origin, True]
    assert machine.documents, "no page was loaded"
    for response in machine.documents:
        assert response.url.startswith(f"{origin}/"), response.url
        assert response.status == 200, response.url
        # nginx answers (the workers' own Server header stays behind it) with
        # the certificate the test made, and says to keep to HTTPS.
        assert response.header_value("server").startswith("nginx"), response.headers
        assert response.header_value("strict-transport-security") == "max-age=3600"
        details = response.security_details()
        assert details and details["issuer"] == TEST_CA and details["subjectName"] == "localhost", details
        assert details["protocol"].startswith("TLS"), details


def assert_signalled_over_wss_through_nginx(machine, tls_cluster):
    """Every signaling socket the pages opened went to nginx's TLS port, over wss://."""
    wss = f"wss://localhost:{tls_cluster.tls_port}{BASE}/peerjs?"
    assert machine.sockets, f"{machine.name} opened no socket"
    assert all(url.startswith(wss) for url in machine.sockets), machine.sockets


def test_a_cue_crosses_over_https_and_wss_through_nginx(tls_cluster, machines):
    receiver_machine = https_machine(machines, "receiver")
    sender_machine = https_machine(machines, "sender")
    server = SimpleNamespace(http=site(tls_cluster))
    receiver, receiver_id = open_receiver(receiver_machine, server)
    sender = open_sender(sender_machine, server)
    # The receiver's share link names the address it was loaded from.
    expect(receiver.locator("#share-link")).to_have_text(f"{site(tls_cluster)}/send?id={receiver_id}")
    connect(sender, receiver_id)
    sender.click("#cue-go")
    expect_lit(receiver, "go")
    for machine in (receiver_machine, sender_machine):
        assert_served_by_nginx_over_tls(machine, tls_cluster)
        assert_signalled_over_wss_through_nginx(machine, tls_cluster)


def peerjs_app(machines, tls_cluster, name):
    """A page from nginx over HTTPS with the PeerJS client the pages serve, and the test harness."""
    # bypass_csp: the harness is injected into a page whose CSP allows only its own scripts.
    machine = https_machine(machines, name, bypass_csp=True)
    page = machine.page
    page.goto(f"{site(tls_cluster)}/")
    page.add_script_tag(url=f"{site(tls_cluster)}/static/vendor/peerjs/peerjs.min.js")
    page.add_script_tag(path=str(HARNESS))
    return machine


def test_peerjs_data_connection_over_wss_through_nginx(tls_cluster, machines):
    # Configured as the cue pages configure it over HTTPS, spelled out.
    options = {"secure": True, "host": "localhost", "port": tls_cluster.tls_port, "path": BASE, "key": "peerjs"}
    alice_machine = peerjs_app(machines, tls_cluster, "alice")
    bob_machine = peerjs_app(machines, tls_cluster, "bob")
    alice, bob = alice_machine.page, bob_machine.page
    alice_id = peer(alice, "p", options=options)
    bob_id = peer(bob, "p", options=options)
    assert alice_id and bob_id and alice_id != bob_id

    key = bob.evaluate("(dst) => openConnection('p', 'bob->alice', dst, {reliable: true})", alice_id)
    wait_conn_open(bob, key)
    alice_key = incoming(alice, "p", bob_id)
    bob.evaluate("(key) => conns[key].send('hello from bob')", key)
    alice.wait_for_function("(key) => record.conns[key].received.length > 0", arg=alice_key)
    alice.evaluate("(key) => conns[key].send('hello from alice')", alice_key)
    bob.wait_for_function("(key) => record.conns[key].received.length > 0", arg=key)
    assert alice.evaluate("(key) => record.conns[key].received", alice_key) == ["hello from bob"]
    assert bob.evaluate("(key) => record.conns[key].received", key) == ["hello from alice"]
    for page in (alice, bob):
        rec = page.evaluate("record.peers.p")
        assert rec["errors"] == [] and "ERROR" not in rec["serverFrames"], rec

    for machine in (alice_machine, bob_machine):
        assert_served_by_nginx_over_tls(machine, tls_cluster)
        assert_signalled_over_wss_through_nginx(machine, tls_cluster)
        # The client's REST call for an id, too, went to nginx over HTTPS.
        ids = [url for url in machine.requests if f"{BASE}/peerjs/id" in url]
        assert ids and all(url.startswith(f"{site(tls_cluster)}{BASE}/peerjs/id?") for url in ids), machine.requests
