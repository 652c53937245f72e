"""The operators' peer list, over real HTTP against a real worker.

Peers are real sockets on the worker; the admin is used as a logged-in
superuser would use it.
"""
import asyncio
import datetime
import hashlib
import re

import pytest

from signaling.admin import duration
from tests.admin_http import AdminSession, create_superuser
from tests.client import connect

pytestmark = pytest.mark.db

PASSWORD = "stage-manager-pw"
LIST = "/admin/signaling/peer/"


@pytest.fixture
def operator(server):
    admin = AdminSession(server)
    admin.login(create_superuser(server, PASSWORD), PASSWORD)
    assert admin.logged_in
    return admin


def row_of(page, peer_id):
    """The cells of ``peer_id``'s row in the changelist, by column class."""
    row = re.search(rf"<tr>(?:(?!</tr>).)*?>{re.escape(peer_id)}</a>.*?</tr>", page, re.S).group(0)
    return {name: re.sub(r"<[^>]+>", "", text).strip() for name, text in re.findall(r'class="field-([a-z_]+)[^"]*">(.*?)</t[dh]>', row, re.S)}


def set_connected_at(database, peer_id, when):
    # As if the peer had connected `when`: the worker keeps connected_at as written.
    value = when if database.admin_url else when.astimezone(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    database.query("UPDATE signaling_peer SET connected_at = ? WHERE peer_id = ?", (value, peer_id))


async def test_the_peer_list_shows_times_to_the_second_and_how_long_each_peer_has_been_connected(server, database, operator):
    peer = await connect(server)
    since = datetime.datetime(2026, 11, 29, 3, 41, 7, tzinfo=datetime.UTC)
    set_connected_at(database, peer.peer_id, since)
    # Measured the same way as the page: seconds since `since`, now.
    expected_seconds = (datetime.datetime.now(datetime.UTC) - since).total_seconds()

    page = (await asyncio.to_thread(operator.get, LIST)).body
    cells = row_of(page, peer.peer_id)
    assert cells["connected"] == "2026-11-29 03:41:07"
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", cells["seen"]), cells["seen"]
    assert cells["connected_for"] in {duration(expected_seconds + lag) for lag in range(0, 5)}
    assert "Connected at (UTC)" in page and "Connected for" in page and "Last seen (UTC)" in page
    await peer.close()


async def test_connected_for_counts_seconds_minutes_hours_and_days(server, database, operator):
    peer = await connect(server)
    set_connected_at(database, peer.peer_id, datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=3, seconds=12))
    cells = row_of((await asyncio.to_thread(operator.get, LIST)).body, peer.peer_id)
    assert re.fullmatch(r"3 min 1[2-5] s", cells["connected_for"]), cells["connected_for"]
    await peer.close()
    assert [duration(s) for s in (0, 59, 60, 192, 3600 + 5 * 60, 3 * 86400 + 4 * 3600 + 59)] == [
        "0 s", "59 s", "1 min 0 s", "3 min 12 s", "1 h 05 min", "3 d 4 h",
    ]


async def test_the_token_hash_cannot_be_probed_through_the_peer_list(server, operator):
    peer = await connect(server, token="the-secret-token")
    token_hash = hashlib.sha256(b"the-secret-token").hexdigest()
    wrong = ("0" if token_hash[0] != "0" else "1") + token_hash[1:8]

    # An allowed filter finds the peer, so a refused one is not just an empty list.
    assert peer.peer_id in (await asyncio.to_thread(operator.get, f"{LIST}?q={peer.peer_id}")).body
    answers = {}
    for name, query in (
        ("right prefix", f"token_hash__startswith={token_hash[:8]}"),
        ("wrong prefix", f"token_hash__startswith={wrong}"),
        ("whole hash", f"token_hash={token_hash}"),
        ("range", f"token_hash__gte={token_hash[:4]}&q={peer.peer_id}"),
    ):
        answers[name] = await asyncio.to_thread(operator.get, f"{LIST}?{query}")
    for name, answer in answers.items():
        assert answer.status == 400, name
        assert peer.peer_id not in answer.body and token_hash not in answer.body, name
    # The same answer whatever the guess: nothing to learn from it.
    assert len({answer.body for answer in answers.values()}) == 1
    await peer.close()


def test_queued_frames_cannot_be_probed_through_the_admin(operator):
    """A queued frame (SDP, candidates) is hidden in the admin, so it is not a filter either."""
    for query in ("frame__contains=candidate", "frame__contains=zzz-no-such-text"):
        assert operator.get(f"/admin/signaling/queuedmessage/?{query}").status == 400
    assert operator.get("/admin/signaling/queuedmessage/?dst=someone").status == 200
