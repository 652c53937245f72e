"""The admin's worker and peer pages, the add-app form and the favicon, over real HTTP.

Times read to the second with their zone on every page (the lists' own
columns and the detail pages alike), a worker's figures are a table, and a
new app's form offers nothing to rotate.
"""
import asyncio
import html
import re
import urllib.parse
import urllib.request

import pytest

from tests.admin_http import AdminSession, create_superuser
from tests.client import connect
from tests.test_admin_overview import name_of

pytestmark = pytest.mark.db

PASSWORD = "stage-manager-pw"
SECOND = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"
# Django's English default, to the minute: "Dec. 6, 2026, 1:17 a.m."
TO_THE_MINUTE = re.compile(r"\b(a\.m\.|p\.m\.|noon|midnight)|[A-Z][a-z]{2}\. \d{1,2}, \d{4}")


@pytest.fixture
def operator(server):
    admin = AdminSession(server)
    admin.login(create_superuser(server, PASSWORD), PASSWORD)
    assert admin.logged_in
    return admin


def text_of(page):
    """The page's content as a reader sees it: tags dropped, entities decoded, blanks squeezed."""
    content = page.split('id="content"', 1)[1]
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", content)))


def readonly(page, field):
    """The value a detail page shows for ``field``."""
    match = re.search(rf'class="form-row[^"]*field-{field}\b.*?<div class="readonly">(.*?)</div>', page, re.S)
    assert match, field
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", match.group(1)))).strip()


async def test_worker_and_peer_pages_show_times_to_the_second_in_utc(server, operator):
    peer = await connect(server)
    name = name_of(server)
    try:
        listing = (await asyncio.to_thread(operator.get, "/admin/signaling/worker/")).body
        assert "Started (UTC)" in listing and "Last beat (UTC)" in listing
        row = re.search(rf"<tr>(?:(?!</tr>).)*?{re.escape(name)}.*?</tr>", listing, re.S).group(0)
        for column in ("started", "beat"):
            (cell,) = re.findall(rf'class="field-{column}">(.*?)</td>', row)
            assert re.fullmatch(SECOND, cell), (column, cell)

        worker = (await asyncio.to_thread(operator.get, f"/admin/signaling/worker/{urllib.parse.quote(name)}/change/")).body
        for field in ("started", "beat"):
            assert re.fullmatch(SECOND, readonly(worker, field)), field

        peers = (await asyncio.to_thread(operator.get, f"/admin/signaling/peer/?q={peer.peer_id}")).body
        link = re.search(rf'href="(/admin/signaling/peer/\d+/change/[^"]*)">{re.escape(peer.peer_id)}<', peers).group(1)
        detail = (await asyncio.to_thread(operator.get, html.unescape(link))).body
        for field in ("connected_at", "last_seen"):
            assert re.fullmatch(SECOND + " UTC", readonly(detail, field)), field
        for page in (listing, worker, detail):
            assert not TO_THE_MINUTE.search(text_of(page)), TO_THE_MINUTE.search(text_of(page))
    finally:
        await peer.close()


async def test_a_worker_s_figures_are_a_table_not_json(server, operator):
    peer = await connect(server)
    name = name_of(server)
    try:
        page = (await asyncio.to_thread(operator.get, f"/admin/signaling/worker/{urllib.parse.quote(name)}/change/")).body
    finally:
        await peer.close()
    table = re.search(r'<table class="worker-figures">(.*?)</table>', page, re.S).group(1)
    rows = dict(
        (html.unescape(th), html.unescape(td))
        for th, td in re.findall(r'<th scope="row">(.*?)</th><td>(.*?)</td>', table)
    )
    assert {"peers", "queue depth", "errors since it started", "frames relayed since it started"} <= set(rows)
    assert re.fullmatch(r"\d+", rows["peers"])
    assert re.fullmatch(r"same worker [\d.,]+, other worker [\d.,]+", next(v for k, v in rows.items() if k.startswith("frames relayed per second")))
    # The raw JSON of the stats field is gone.
    assert '"totals"' not in page and "&quot;totals&quot;" not in page


def test_a_new_app_s_form_offers_no_rotation_and_an_existing_one_s_does(operator):
    add = operator.get("/admin/signaling/app/add/").body
    assert 'name="rotate_token_secret"' not in add and "Rotate the token secret" not in add
    answer = operator.post("/admin/signaling/app/add/", {
        "key": "rotation-app", "name": "Rotation", "auth": "token", "turn_ttl": "86400", "_save": "Save",
    })
    assert answer.status == 200 and "/admin/signaling/app/" in answer.url, answer.body[:2000]
    listing = operator.get("/admin/signaling/app/?q=rotation-app").body
    change = re.search(r'href="(/admin/signaling/app/\d+/change/[^"]*)"', listing).group(1)
    assert 'name="rotate_token_secret"' in operator.get(html.unescape(change)).body


def test_the_favicon_is_an_icon(server):
    with urllib.request.urlopen(f"{server.http}/favicon.ico", timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] in {"image/x-icon", "image/vnd.microsoft.icon"}
        assert response.read()[:4] == b"\x00\x00\x01\x00"  # an ICO file's header
