"""The operators' peer list fits a 1280 px window, in Chromium, as a superuser sees it."""
import contextlib
import json
import uuid

import pytest
from playwright.sync_api import expect
from websockets.sync.client import connect as ws_connect

from tests.admin_http import create_superuser
from tests.client import socket_url

pytestmark = pytest.mark.browser

PASSWORD = "stage-manager-pw"


@contextlib.contextmanager
def peers(server, ids):
    """Real sockets holding ``ids`` on the worker for the duration."""
    with contextlib.ExitStack() as stack:
        for peer_id in ids:
            ws = stack.enter_context(ws_connect(socket_url(server, peer_id, uuid.uuid4().hex)))
            assert json.loads(ws.recv(timeout=10)) == {"type": "OPEN"}
        yield


def test_the_peer_list_fits_a_1280_px_window_with_its_last_column_whole(server, machines):
    user = create_superuser(server, PASSWORD)
    page = machines("operator", viewport={"width": 1280, "height": 800}).page
    page.goto(f"{server.http}/admin/login/?next=/admin/signaling/peer/")
    page.fill("#id_username", user)
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    # The longest id a peer may have (PEERJS_ID_MAX_LENGTH, 64) and the UUIDs the pages get.
    longest = "x" * 64
    with peers(server, [longest] + [str(uuid.uuid4()) for _ in range(3)]):
        page.reload()
        expect(page.locator("#result_list")).to_contain_text(longest)
        box = page.evaluate("""() => {
          const table = document.getElementById("result_list").getBoundingClientRect();
          const scroller = document.querySelector("#changelist .results");
          const last = document.querySelector("#result_list thead th:last-child").getBoundingClientRect();
          return {tableRight: table.right, lastRight: last.right, viewport: window.innerWidth,
                  scrollerRight: scroller.getBoundingClientRect().right,
                  scrollWidth: scroller.scrollWidth, clientWidth: scroller.clientWidth,
                  pageWidth: document.documentElement.scrollWidth};
        }""")
    assert box["tableRight"] <= box["viewport"], box
    # Not cut by the list's own horizontal scroll box either.
    assert box["scrollWidth"] <= box["clientWidth"] and box["lastRight"] <= box["scrollerRight"], box
    assert box["pageWidth"] <= box["viewport"], box
    expect(page.locator("#result_list thead th").last).to_be_visible()
