"""What the cue pages say when the signaling server closes or refuses them.

An operator's "Disconnect the selected peers" in the admin (over real HTTP,
as a logged-in superuser) closes a page's socket with 4102: the page must say
"Disconnected by an operator" and stay off until someone presses Reconnect,
not come straight back. A server ERROR (a refusal) must show its text.
"""
import re

import pytest
from playwright.sync_api import expect

from tests.admin_http import AdminSession, create_superuser
from tests.browser.test_cue_pages import connect, expect_lit, open_receiver, open_sender

pytestmark = pytest.mark.browser

OPERATOR = "Disconnected by an operator"
PASSWORD = "stage-manager-pw"

# Counts the WebSockets a page makes (each is still the browser's own), so a
# test can tell "did not reconnect" from "has not reconnected yet".
COUNT_SOCKETS = """
window.socketsMade = 0;
window.WebSocket = class extends window.WebSocket {
  constructor(...args) { super(...args); window.socketsMade += 1; }
};
"""


def operator_disconnects(server, peer_id):
    admin = AdminSession(server)
    admin.login(create_superuser(server, PASSWORD), PASSWORD)
    assert admin.logged_in
    answer = admin.post("/admin/signaling/peer/", {"action": "disconnect", "_selected_action": [server.database.peer_row(peer_id)]})
    assert "Asked to disconnect 1 peer" in answer.body


def expect_halted(page):
    expect(page.locator("#status")).to_have_text(OPERATOR)
    expect(page.locator("#banner")).to_have_text(
        f"{OPERATOR}: this page stays off the signaling server until you press Reconnect"
    )
    expect(page.locator("#reconnect")).to_be_visible()
    expect(page.locator("#log li").first).to_contain_text(OPERATOR)


def test_a_receiver_an_operator_disconnects_says_so_and_waits_for_reconnect(server, machines):
    machine = machines("receiver")
    machine.context.add_init_script(COUNT_SOCKETS)
    # The page's timers run on a clock the test can move: a minute passes in an instant.
    machine.page.clock.install()
    receiver, receiver_id = open_receiver(machine, server)
    expect(receiver.locator("#reconnect")).to_be_hidden()
    assert receiver.evaluate("window.socketsMade") == 1

    operator_disconnects(server, receiver_id)
    expect_halted(receiver)
    # A minute of the page's timers: any retry would have made a new socket.
    receiver.clock.run_for(60_000)
    assert receiver.evaluate("window.socketsMade") == 1
    expect(receiver.locator("#status")).to_have_text(OPERATOR)

    receiver.click("#reconnect")
    expect(receiver.locator("#status")).to_have_text("Ready: waiting for a sender")
    expect(receiver.locator("#receiver-id")).to_have_text(receiver_id)  # the same id and share link
    expect(receiver.locator("#reconnect")).to_be_hidden()
    expect(receiver.locator("#banner")).to_be_hidden()
    assert receiver.evaluate("window.socketsMade") == 2


def test_a_sender_an_operator_disconnects_says_so_and_its_cue_links_carry_on(server, machines):
    receiver, receiver_id = open_receiver(machines("receiver"), server)
    sender = open_sender(machines("sender"), server)
    sender_status = sender.locator("#status").text_content()
    sender_id = sender_status.removeprefix("Ready. Your ID: ")
    connect(sender, receiver_id)

    operator_disconnects(server, sender_id)
    expect_halted(sender)
    # The cue link is peer to peer: the operator closed the signaling socket only.
    sender.click("#cue-go")
    expect_lit(receiver, "go")
    expect(sender.locator("#cue-result")).to_have_text(re.compile(r"^Go: delivered in \d+ ms$"))

    sender.click("#reconnect")
    expect(sender.locator("#status")).to_have_text(sender_status)
    expect(sender.locator("#banner")).to_be_hidden()


def test_a_refusal_from_the_server_is_shown_with_its_reason_and_retried(make_server, machines):
    worker = make_server({"PEERJS_CONCURRENT_LIMIT": "1"}, own=True)
    first = open_sender(machines("first"), worker)  # takes the one place

    page = machines("receiver").page
    page.goto(f"{worker.http}/receive")
    reason = "Server has reached its concurrent user limit"
    expect(page.locator("#status")).to_have_text(f"Refused by the signaling server: {reason}")
    expect(page.locator("#banner")).to_contain_text(f"The signaling server refused this page ({reason})")
    expect(page.locator("#reconnect")).to_be_hidden()  # a refusal may pass: the page retries

    first.close()  # the place is free again
    expect(page.locator("#status")).to_have_text("Ready: waiting for a sender")
    expect(page.locator("#banner")).to_be_hidden()


def operator_bans(admin, server, peer_id, reason):
    row = server.database.peer_row(peer_id)
    answer = admin.post(
        "/admin/signaling/peer/",
        {"action": "disconnect_and_ban", "_selected_action": [row], "post": "yes", "duration": "3600", "reason": reason},
    )
    assert "Banned 1 peer(s) until" in answer.body


def lift_bans(admin, server, peer_id):
    rows = [str(pk) for (pk,) in server.database.query("SELECT id FROM signaling_ban WHERE peer_id = ?", (peer_id,))]
    assert "Lifted" in admin.post("/admin/signaling/ban/", {"action": "lift", "_selected_action": rows}).body


BANNED = re.compile(r"Banned: this peer id may not connect to the server until \S+ \S+ UTC \(too many cues\)")


def test_a_banned_page_shows_the_ban_and_comes_back_once_it_is_lifted(make_server, machines):
    worker = make_server(own=True)
    admin = AdminSession(worker)
    admin.login(create_superuser(worker, PASSWORD), PASSWORD)
    receiver, receiver_id = open_receiver(machines("receiver"), worker)
    sender = open_sender(machines("sender"), worker)
    sender_status = sender.locator("#status").text_content()
    sender_id = sender_status.removeprefix("Ready. Your ID: ")

    for page, peer_id in ((receiver, receiver_id), (sender, sender_id)):
        operator_bans(admin, worker, peer_id, "too many cues")
        expect(page.locator("#status")).to_have_text(re.compile(r"^Refused by the signaling server: " + BANNED.pattern + "$"))
        expect(page.locator("#banner")).to_contain_text(BANNED)
        # A ban ends: the page keeps trying, and each try hears the ban again.
        expect(page.locator("#reconnect")).to_be_hidden()

    lift_bans(admin, worker, receiver_id)
    expect(receiver.locator("#status")).to_have_text("Ready: waiting for a sender", timeout=25_000)
    expect(receiver.locator("#receiver-id")).to_have_text(receiver_id)
    lift_bans(admin, worker, sender_id)
    expect(sender.locator("#status")).to_have_text(sender_status, timeout=25_000)
