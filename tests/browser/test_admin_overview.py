"""The admin's cluster overview in Chromium: it follows the traffic without a reload, and fits 1280 px."""
import json
import uuid

import pytest
from playwright.sync_api import expect
from websockets.sync.client import connect as ws_connect

from tests.admin_http import create_superuser
from tests.browser.test_admin_layout import peers
from tests.client import socket_url
from tests.test_admin_overview import name_of

pytestmark = pytest.mark.browser

PASSWORD = "stage-manager-pw"


def test_the_overview_follows_the_traffic_without_a_reload_and_fits_a_1280_px_window(server, machines):
    user = create_superuser(server, PASSWORD)
    page = machines("operator", viewport={"width": 1280, "height": 800}).page
    with peers(server, [str(uuid.uuid4())]):  # under daphne, the worker beats from its first socket on
        name = name_of(server)
        page.goto(f"{server.http}/admin/login/?next=/admin/signaling/overview/")
        page.fill("#id_username", user)
        page.fill("#id_password", PASSWORD)
        page.click("input[type=submit]")
        row = page.locator(f'#overview tbody tr[data-worker="{name}"]')
        expect(row.locator(".column-peers")).to_have_text("1")
        expect(row.locator(".column-relays_same")).to_have_text("0")
        page.evaluate("window.stillTheSamePage = true")

        # More traffic: two more peers, and frames between them.
        sender_id, receiver_id = str(uuid.uuid4()), str(uuid.uuid4())
        with ws_connect(socket_url(server, sender_id, "t1")) as sender, ws_connect(socket_url(server, receiver_id, "t2")) as receiver:
            for ws in (sender, receiver):
                assert json.loads(ws.recv(timeout=10)) == {"type": "OPEN"}
            for n in range(10):
                sender.send(json.dumps({"type": "CANDIDATE", "dst": receiver_id, "payload": n}))
                assert json.loads(receiver.recv(timeout=10))["payload"] == n
            # The page fetches the figures again on its own; each wait has the context's deadline.
            expect(row.locator(".column-peers")).to_have_text("3")
            expect(row.locator(".column-relays_same")).not_to_have_text("0")
            expect(page.locator("#overview tfoot .column-peers")).not_to_have_text("1")
            assert page.evaluate("window.stillTheSamePage") is True  # refreshed in place, not reloaded

            box = page.evaluate("""() => {
              const table = document.getElementById("overview").getBoundingClientRect();
              const last = document.querySelector("#overview thead th:last-child").getBoundingClientRect();
              return {tableRight: table.right, lastRight: last.right, viewport: window.innerWidth,
                      pageWidth: document.documentElement.scrollWidth};
            }""")
    assert box["tableRight"] <= box["viewport"] and box["lastRight"] <= box["viewport"], box
    assert box["pageWidth"] <= box["viewport"], box
    expect(page.locator("#overview thead th").last).to_be_visible()
    page.screenshot(path="/tmp/overview-1280.png", full_page=True)
