"""The operators' pages in Chromium, as a superuser sees them: the lists fit their windows.

Each page is measured at the window sizes of tests/browser/screens.py (the
tables and their last columns whole from 1024 px up, the ban list's from
1280 px with the navigation sidebar open; on a phone the admin scrolls its
lists sideways) and photographed there.
"""
import contextlib
import datetime
import json
import uuid

import pytest
from playwright.sync_api import expect
from websockets.sync.client import connect as ws_connect

from tests.admin_http import create_superuser
from tests.browser.screens import VIEWPORTS, shoot
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
    log_in(page, server, user, "/admin/signaling/peer/")
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


def log_in(page, server, user, then):
    page.goto(f"{server.http}/admin/login/?next={then}")
    page.fill("#id_username", user)
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    # The click returns once the redirect starts, and the table is in the DOM before the
    # page's own stylesheet has arrived: measuring then reads the browser's defaults.
    page.wait_for_url(f"**{then}", wait_until="load")


# What a table's box and its last column's take, against the window and the list's scroll box.
TABLE_BOX = """(table) => {
  const box = document.querySelector(table).getBoundingClientRect();
  const last = document.querySelector(table + " thead th:last-child").getBoundingClientRect();
  const scroller = document.querySelector(table).closest(".results, .module");
  return {tableRight: box.right, lastRight: last.right, viewport: window.innerWidth,
          scrollerRight: scroller.getBoundingClientRect().right,
          scrollWidth: scroller.scrollWidth, clientWidth: scroller.clientWidth,
          pageWidth: document.documentElement.scrollWidth};
}"""


def whole(box):
    """Whether the table and its last column are inside the window and unscrolled."""
    return (box["tableRight"] <= box["viewport"] and box["lastRight"] <= box["scrollerRight"]
            and box["scrollWidth"] <= box["clientWidth"] and box["pageWidth"] <= box["viewport"])


@pytest.fixture
def bans(database):
    """Bans with the longest things a ban names: a 64-character id, an IPv6 address, a 200-character reason."""
    until = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)
    stamp = until if database.admin_url else until.strftime("%Y-%m-%d %H:%M:%S.%f")
    now = datetime.datetime.now(datetime.UTC)
    made = now if database.admin_url else now.strftime("%Y-%m-%d %H:%M:%S.%f")
    reason = "Flooded the stage manager's sender with cues during the dress rehearsal; " * 3
    rows = [("b" * 64, None), ("", "2001:db8:85a3:1234:5678:8a2e:370:7334")]
    for peer_id, address in rows:
        database.query(
            "INSERT INTO signaling_ban (key, peer_id, address, reason, created_at, created_by, expires_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            ("", peer_id, address, reason[:200], made, "stage-manager-with-a-long-name", stamp),
        )
    yield
    database.query("DELETE FROM signaling_ban WHERE created_by = ?", ("stage-manager-with-a-long-name",))


def test_the_ban_list_fits_with_the_sidebar_open(server, machines, bans):
    user = create_superuser(server, PASSWORD)
    page = machines("operator", viewport={"width": 1280, "height": 800}).page
    log_in(page, server, user, "/admin/signaling/ban/")
    expect(page.locator("#result_list")).to_contain_text("b" * 64)
    expect(page.locator("#nav-sidebar")).to_be_visible()
    problems = {}
    for width, height in VIEWPORTS:
        page.set_viewport_size({"width": width, "height": height})
        box = page.evaluate(TABLE_BOX, "#result_list")
        # Below 1280 px the two sidebars leave the list less than its seven
        # columns need (455 px at 1024): it scrolls sideways in its box, as
        # the admin's own lists do.
        if width >= 1280 and not whole(box):
            problems[f"{width}x{height}"] = box
        shoot(page, "admin-bans")
    assert problems == {}


def test_the_overview_s_errors_line_up_with_the_other_figures(server, machines):
    user = create_superuser(server, PASSWORD)
    page = machines("operator", viewport={"width": 1280, "height": 800}).page
    with peers(server, [str(uuid.uuid4())]):
        log_in(page, server, user, "/admin/signaling/overview/")
        expect(page.locator("#overview tbody tr")).not_to_have_count(0)
        aligned = page.evaluate("""() => Array.from(document.querySelectorAll(
            "#overview :is(th, td):is(.column-peers, .column-errors)"), (cell) => getComputedStyle(cell).textAlign)""")
        assert set(aligned) == {"right"}, aligned
        for width, height in VIEWPORTS:
            page.set_viewport_size({"width": width, "height": height})
            if width >= 1024:
                assert whole(page.evaluate(TABLE_BOX, "#overview")), (width, height)
            shoot(page, "admin-overview")


def test_a_worker_s_page_shows_its_figures_as_a_table(server, machines):
    user = create_superuser(server, PASSWORD)
    page = machines("operator", viewport={"width": 1280, "height": 800}).page
    with peers(server, [str(uuid.uuid4())]):
        log_in(page, server, user, "/admin/signaling/worker/")
        page.locator("#result_list tbody a").first.click()
        figures = page.locator(".worker-figures")
        expect(figures.locator("th").first).to_have_text("peers")
        for width, height in VIEWPORTS:
            page.set_viewport_size({"width": width, "height": height})
            box = figures.bounding_box()
            assert box["x"] >= 0 and box["x"] + box["width"] <= width, (width, height, box)
            assert page.evaluate("document.documentElement.scrollWidth") <= width, (width, height)
            shoot(page, "admin-worker")
