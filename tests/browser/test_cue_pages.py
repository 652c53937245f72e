"""The cue pages in a real browser: what a stage manager and the stage see.

Two browser contexts are two machines (a receiver on stage, a sender with the
stage manager); the server is a real daphne. Every wait is for something a
user would see on the page.
"""
import re
import urllib.request

import pytest
from playwright.sync_api import expect

from tests.browser.screens import SCREENSHOTS
from tests.servers import BASE

pytestmark = pytest.mark.browser

UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
INDICATORS = {"standby": "#cue-standby", "go": "#cue-go", "fade": "#cue-fade", "off": "#cue-off"}
VIEWPORT = {"width": 1280, "height": 800}


def open_receiver(machine, server):
    page = machine.page
    page.set_viewport_size(VIEWPORT)
    page.goto(f"{server.http}/receive")
    expect(page.locator("#status")).to_have_text("Ready: waiting for a sender")
    receiver_id = page.locator("#receiver-id").text_content()
    assert UUID4.match(receiver_id), receiver_id
    return page, receiver_id


def open_sender(machine, server, query=""):
    page = machine.page
    page.set_viewport_size(VIEWPORT)
    page.goto(f"{server.http}/send{query}")
    expect(page.locator("#status")).to_contain_text("Ready. Your ID: ")
    return page


def receiver_row(sender, receiver_id):
    return sender.locator(f'#receivers li[data-id="{receiver_id}"]')


def connect(sender, receiver_id):
    sender.fill("#receiver-id", receiver_id)
    sender.click("#connect")
    expect(receiver_row(sender, receiver_id)).to_have_attribute("data-state", "open")


def expect_lit(receiver, cue):
    for name, selector in INDICATORS.items():
        if name == cue:
            expect(receiver.locator(selector)).to_be_visible()
        else:
            expect(receiver.locator(selector)).to_be_hidden()


@pytest.fixture
def pair(server, machines):
    """A receiver, and a sender connected to it by typing its id."""
    receiver, receiver_id = open_receiver(machines("receiver"), server)
    sender = open_sender(machines("sender"), server)
    connect(sender, receiver_id)
    expect(receiver.locator("#status")).to_have_text(re.compile(r"^Connected to sender "))
    return receiver, receiver_id, sender


def test_the_start_page_links_to_the_receiver_and_the_sender_in_new_windows(server, machines):
    page = machines("visitor").page
    page.goto(f"{server.http}/")
    for name, path in (("Receiver", "/receive"), ("Sender", "/send")):
        link = page.get_by_role("link", name=re.compile(name))
        expect(link).to_have_attribute("href", path)
        expect(link).to_have_attribute("target", "_blank")
        with page.context.expect_page() as opened:
            link.click()
        expect(opened.value.locator("h1")).to_have_text(name)
        opened.value.close()


def test_the_receiver_gets_an_id_from_the_server_and_shows_standby_a_link_and_a_qr_code(server, machines):
    receiver, receiver_id = open_receiver(machines("receiver"), server)
    expect_lit(receiver, "standby")
    link = f"{server.http}/send?id={receiver_id}"
    expect(receiver.locator("#share-link")).to_have_text(link)
    expect(receiver.locator("#share-link")).to_have_attribute("href", link)
    # The QR code is drawn by the server (segno) and loads as an image.
    expect(receiver.locator("#share-qr")).to_be_visible()
    receiver.wait_for_function("() => document.getElementById('share-qr').naturalWidth > 0")
    with urllib.request.urlopen(f"{server.http}/send-link.svg?id={receiver_id}") as response:
        assert response.headers["Content-Type"] == "image/svg+xml"
        assert b"<svg" in response.read()
    expect(receiver.locator("#banner")).to_be_hidden()


def test_each_cue_lights_the_right_indicator_and_comes_back_acknowledged(pair):
    receiver, receiver_id, sender = pair
    for cue, label, shown, spoken in (
        ("go", "Go", "go", "Cue: Go"),
        ("fade", "Fade", "fade", "Cue: Fade"),
        ("off", "Off", "off", "Cue: All Off"),
        ("reset", "Reset", "standby", "Reset: Standby"),
    ):
        sender.click(f"#cue-{cue}")
        expect_lit(receiver, shown)
        expect(receiver.locator("#announcer")).to_have_text(spoken)
        expect(sender.locator("#cue-result")).to_have_text(re.compile(rf"^{label}: delivered in \d+ ms$"))
        expect(receiver_row(sender, receiver_id).locator(".receiver-last-cue")).to_have_text(
            re.compile(rf"^{label} ✓ \d+ ms$")
        )
    # Keyboard shortcuts, as shown on the buttons.
    expect(sender.locator("#cue-go kbd")).to_have_text("G")
    sender.locator("body").press("g")
    expect_lit(receiver, "go")
    expect(sender.locator("#cue-result")).to_have_text(re.compile(r"^Go: delivered in \d+ ms$"))
    expect(receiver.locator("#announcer")).to_have_attribute("aria-live", "assertive")
    # The receiver flashes on a cue and logs it with the time.
    expect(receiver.locator("body")).to_have_class(re.compile(r"\bflash\b"))
    expect(receiver.locator("#log li").first).to_have_text(re.compile(r"^\d\d:\d\d:\d\d Cue: Go$"))

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    sender.fill("#message", "Standing by for cue 12")
    sender.click("#send-message")
    expect(receiver.locator("#log li").first).to_contain_text("Sender: Standing by for cue 12")
    receiver.wait_for_function("() => document.getElementById('share-qr').naturalWidth > 0")
    receiver.wait_for_function(  # let the flash animation end before the picture
        "() => document.getAnimations().every((a) => a.playState !== 'running')"
    )
    receiver.screenshot(path=str(SCREENSHOTS / "receiver.png"))
    sender.screenshot(path=str(SCREENSHOTS / "sender.png"))


def test_messages_go_both_ways(pair):
    receiver, receiver_id, sender = pair
    sender.fill("#message", "Places, please")
    sender.click("#send-message")
    expect(receiver.locator("#log li").first).to_have_text(re.compile(r"^\d\d:\d\d:\d\d Sender: Places, please$"))
    expect(sender.locator("#log li").first).to_have_text(re.compile(r"You: Places, please$"))
    receiver.fill("#message", "Thank you, places")
    receiver.press("#message", "Enter")
    expect(sender.locator("#log li").first).to_have_text(
        re.compile(rf"^\d\d:\d\d:\d\d {receiver_id}: Thank you, places$")
    )
    receiver.click("#clear-log")
    expect(receiver.locator("#log li")).to_have_count(0)


def test_a_second_sender_is_refused_and_the_first_keeps_the_receiver(pair, server, machines):
    receiver, receiver_id, sender = pair
    intruder = open_sender(machines("second sender"), server)
    intruder.fill("#receiver-id", receiver_id)
    intruder.click("#connect")
    row = receiver_row(intruder, receiver_id)
    expect(row).to_have_attribute("data-state", "refused")
    expect(row.locator(".receiver-state")).to_have_text("refused: Already connected to another client")
    # Its only receiver refused it: the header says so, not a green "Ready".
    expect(intruder.locator("#status")).to_have_text(re.compile(
        rf"^Refused by receiver {receiver_id}: Already connected to another client\. Your ID: "))
    expect(intruder.locator("#status")).to_have_attribute("data-state", "down")
    expect(sender.locator("#status")).to_have_attribute("data-state", "ready")
    expect(intruder.locator("#log")).to_contain_text("Already connected to another client")
    expect(receiver.locator("#log")).to_contain_text("already connected to another client")
    # The first sender still drives the receiver.
    sender.click("#cue-fade")
    expect_lit(receiver, "fade")
    expect(sender.locator("#cue-result")).to_have_text(re.compile(r"^Fade: delivered in \d+ ms$"))


def test_the_sender_refuses_incoming_connections_politely(server, machines):
    sender = open_sender(machines("sender"), server)
    sender_id = sender.locator("#status").text_content().removeprefix("Ready. Your ID: ")
    other = open_sender(machines("other sender"), server)
    connect_attempt = other
    connect_attempt.fill("#receiver-id", sender_id)
    connect_attempt.click("#connect")
    row = receiver_row(other, sender_id)
    expect(row.locator(".receiver-state")).to_have_text(
        "refused: This is a sender: it does not accept incoming connections"
    )
    expect(sender.locator("#log")).to_contain_text("Refused an incoming connection from")


def test_command_in_the_url_fires_that_cue_as_soon_as_the_sender_connects(server, machines):
    receiver, receiver_id = open_receiver(machines("receiver"), server)
    sender = open_sender(machines("sender"), server, f"?id={receiver_id}&command=Go")
    expect_lit(receiver, "go")
    expect(sender.locator("#cue-result")).to_have_text(re.compile(r"^Go: delivered in \d+ ms$"))


def test_one_sender_drives_several_receivers_all_or_one(server, machines):
    first, first_id = open_receiver(machines("stage left"), server)
    second, second_id = open_receiver(machines("stage right"), server)
    sender = open_sender(machines("sender"), server)
    connect(sender, first_id)
    connect(sender, second_id)
    sender.click("#cue-go")
    expect_lit(first, "go")
    expect_lit(second, "go")
    expect(sender.locator("#cue-result")).to_have_text(
        re.compile(r"^Go: delivered to all 2 receivers \(slowest \d+ ms\)$")
    )
    sender.select_option("#target", second_id)
    sender.click("#cue-off")
    expect_lit(second, "off")
    expect(sender.locator("#cue-result")).to_have_text(re.compile(r"^Off: delivered in \d+ ms$"))
    expect_lit(first, "go")


def test_a_reload_of_the_receiver_keeps_its_id_and_the_sender_reconnects(pair):
    receiver, receiver_id, sender = pair
    receiver.reload()
    expect(receiver.locator("#receiver-id")).to_have_text(receiver_id)
    expect(receiver.locator("#status")).to_have_text(re.compile(r"^Connected to sender "))
    expect(receiver_row(sender, receiver_id)).to_have_attribute("data-state", "open")
    expect(sender.locator("#banner")).to_be_hidden()
    sender.click("#cue-fade")
    expect_lit(receiver, "fade")
    expect(sender.locator("#cue-result")).to_have_text(re.compile(r"^Fade: delivered in \d+ ms$"))


def test_a_lost_receiver_shows_a_banner_and_cues_are_reported_not_delivered(pair):
    receiver, receiver_id, sender = pair
    expect(sender.locator("#banner")).to_be_hidden()
    receiver.close()
    expect(receiver_row(sender, receiver_id)).to_have_attribute("data-state", "down")
    expect(sender.locator("#banner")).to_have_text(f"Link to receiver {receiver_id} is down: reconnecting…")
    sender.click("#cue-go")
    expect(sender.locator("#cue-result")).to_have_text(re.compile(r"^Go: NOT delivered"))
    expect(sender.locator("#log li").first).to_contain_text("Go NOT delivered")


def test_a_cue_with_no_receiver_connected_says_not_delivered(server, machines):
    sender = open_sender(machines("sender"), server)
    sender.click("#cue-fade")
    expect(sender.locator("#cue-result")).to_have_text("Fade: NOT delivered (no receiver connected)")


HOSTILE = '<img src=x onerror="window.pwned=1">'


def test_peer_text_with_markup_is_shown_as_text(pair):
    receiver, receiver_id, sender = pair
    sender.fill("#message", HOSTILE)
    sender.click("#send-message")
    expect(receiver.locator("#log li").first).to_have_text(re.compile(re.escape("Sender: " + HOSTILE) + "$"))
    receiver.fill("#message", HOSTILE)
    receiver.click("#send-message")
    expect(sender.locator("#log li").first).to_have_text(re.compile(re.escape(f"{receiver_id}: {HOSTILE}") + "$"))
    for page in (receiver, sender):
        expect(page.locator("#log img")).to_have_count(0)
        assert page.evaluate("window.pwned") is None


def test_the_seed_urls_lead_to_the_pages(server, machines):
    page = machines("visitor").page
    page.goto(f"{server.http}/static/receive.html")
    page.wait_for_url(f"{server.http}/receive")
    expect(page.locator("h1")).to_have_text("Receiver")
    page.goto(f"{server.http}/static/send.html?id=abc&command=Go")
    page.wait_for_url(f"{server.http}/send?id=abc&command=Go")
    expect(page.locator("h1")).to_have_text("Sender")


def test_the_pages_request_nothing_but_the_server_and_run_under_a_strict_csp(server, machines):
    receiver_machine = machines("receiver")
    sender_machine = machines("sender")
    sockets = []
    for machine in (receiver_machine, sender_machine):
        machine.page.on("websocket", lambda ws: sockets.append(ws.url))
    receiver_machine.page.goto(f"{server.http}/")
    receiver, receiver_id = open_receiver(receiver_machine, server)
    sender = open_sender(sender_machine, server, f"?id={receiver_id}&command=Go")
    expect_lit(receiver, "go")
    expect(sender.locator("#cue-result")).to_have_text(re.compile(r"^Go: delivered in \d+ ms$"))

    requests = receiver_machine.requests + sender_machine.requests
    assert requests, "no request recorded"
    assert [url for url in requests if not url.startswith(server.http + "/")] == []
    assert sockets and all(url.startswith(f"{server.ws}{BASE}/peerjs?") for url in sockets), sockets
    # The PeerJS client is the pinned npm package, served locally.
    assert f"{server.http}/static/vendor/peerjs/peerjs.min.js" in requests

    response = receiver.request.get(f"{server.http}/receive")
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert receiver.locator("script:not([src]):not([type='application/json'])").count() == 0
    violations = [line for m in (receiver_machine, sender_machine) for line in m.log if "Content Security Policy" in line]
    assert violations == []


def test_both_pages_reconnect_to_the_signaling_server_after_a_drop_keeping_their_ids(make_server, machines, monkeypatch):
    import tests.servers

    worker = make_server(own=True)  # it stops it
    receiver, receiver_id = open_receiver(machines("receiver"), worker)
    sender = open_sender(machines("sender"), worker)
    sender_status = sender.locator("#status").text_content()
    connect(sender, receiver_id)

    worker.stop()
    for page in (receiver, sender):
        expect(page.locator("#banner")).to_contain_text("signaling server is down")
        expect(page.locator("#status")).to_have_text("Signaling server unreachable: reconnecting…")
    # The cue link is peer to peer: it carries on while the server is away.
    sender.click("#cue-go")
    expect_lit(receiver, "go")

    monkeypatch.setattr(tests.servers, "free_port", lambda: worker.port)
    make_server(own=True)  # the same address again, as after a restart
    # Each page retries with pauses that grow to 10 s (±20 %, common.js's
    # backoff): one is due within 12 s of the server's return.
    back = 15_000
    expect(receiver.locator("#status")).to_have_text(re.compile(r"^(Connected to sender |Ready)"), timeout=back)
    expect(receiver.locator("#receiver-id")).to_have_text(receiver_id)
    expect(sender.locator("#status")).to_have_text(sender_status, timeout=back)
    for page in (receiver, sender):
        expect(page.locator("#banner")).to_be_hidden()
