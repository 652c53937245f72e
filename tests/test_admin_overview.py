"""The admin's cluster overview, over real HTTP, fed by real workers' beats.

Two uvicorn workers share a private redis-server and a database; real
sockets open and relay frames on one worker and across both, and the
overview, read as an operator reads it, says what each worker did.
"""
import asyncio
import datetime
import json
import re
import uuid

import pytest

from tests.admin_http import AdminSession, create_superuser
from tests.client import connect
from tests.servers import wait_until
from tests.test_cluster import Cluster
from tests.test_metrics import samples, scrape

pytestmark = pytest.mark.cluster
XDIST_GROUPS = "test"  # no server shared between its tests (tests/conftest.py)

PASSWORD = "stage-manager-pw"
PAGE, DATA = "/admin/signaling/overview/", "/admin/signaling/overview/data/"


@pytest.fixture
def cluster(redis_server):
    """Fresh workers: the overview's figures are their whole lives."""
    cluster = Cluster(redis_server, server="uvicorn")
    yield cluster
    cluster.stop()


def operator_of(worker):
    admin = AdminSession(worker)
    admin.login(create_superuser(worker, PASSWORD), PASSWORD)
    assert admin.logged_in
    return admin


def name_of(worker):
    """The worker's name in the registry, as its /metrics tells it."""
    (labels,) = [labels for (name, labels), _v in samples(scrape(worker)).items() if name == "peerjs_worker_info"]
    return dict(labels)["worker"]


def overview(admin):
    answer = admin.get(DATA)
    assert answer.status == 200 and answer.headers["Content-Type"] == "application/json", answer.body[:500]
    return json.loads(answer.body)


def rows_when(admin, matches, what):
    """The overview's rows by worker name, once ``matches(rows)``: workers write their figures at each beat."""
    seen = []

    def ready():
        seen.append({row["name"]: row for row in overview(admin)["workers"]})
        return matches(seen[-1])

    try:
        wait_until(ready, 10, what, interval=0.1)
    except TimeoutError:
        pytest.fail(f"the overview never showed {what}; last seen: {json.dumps(seen[-1], indent=1)}")
    return seen[-1]


async def test_the_overview_shows_what_each_worker_holds_and_relayed(cluster):
    w1, w2 = cluster.workers
    a, a2, b = await connect(w1), await connect(w1), await connect(w2)
    # b's frames first: once a has them, w1 has heard where b is, so a's
    # frames to b go straight to w2 (see test_metrics).
    for n in range(2):
        await b.relay("CANDIDATE", a.peer_id, n)
        await a.expect("CANDIDATE")
    for n in range(3):
        await a.relay("CANDIDATE", b.peer_id, n)
        await b.expect("CANDIDATE")
    for n in range(4):
        await a.relay("CANDIDATE", a2.peer_id, n)
        await a2.expect("CANDIDATE")

    admin = await asyncio.to_thread(operator_of, w1)
    first, second = name_of(w1), name_of(w2)
    expected = {
        first: {"peers": 2, "same_worker": 4, "other_worker": 3, "opened": 2},
        second: {"peers": 1, "same_worker": 0, "other_worker": 2, "opened": 1},
    }

    def as_done(rows):
        return set(rows) == set(expected) and all(
            (rows[name]["peers"], rows[name]["totals"]["frames_relayed"], rows[name]["totals"]["sockets_opened"].get("open"))
            == (want["peers"], {"same_worker": want["same_worker"], "other_worker": want["other_worker"]}, want["opened"])
            for name, want in expected.items()
        )

    rows = await asyncio.to_thread(rows_when, admin, as_done, "each worker's peers, opens and relays")
    for name, want in expected.items():
        row = rows[name]
        # Younger than a minute, each worker's "last minute" is its whole life
        # so far: the rates are its totals over the seconds it has beaten.
        seconds = row["seconds"]
        assert 0 < seconds < 60, row
        assert row["opens"] == round(want["opened"] / seconds, 2) > 0
        assert row["relays_same"] == round(want["same_worker"] / seconds, 2)
        assert row["relays_other"] == round(want["other_worker"] / seconds, 2) > 0
        assert row["errors"] == 0 and row["totals"]["errors"] == {}
        assert row["waiting"] == 0 and not row["stale"]
        assert row["beat_age"] < 3  # beats every 0.5 s here
        cells = dict(row["cells"])
        assert cells["peers"] == str(want["peers"]) and cells["beat_age"].endswith(" s ago")
    assert rows[first]["relays_same"] > 0

    figures = await asyncio.to_thread(overview, admin)
    totals = dict(figures["totals"]["cells"])
    assert figures["totals"]["peers"] == 3 and totals["name"] == "2 workers"

    # The page itself, as a staff member sees it: a row per worker, the totals.
    page = (await asyncio.to_thread(admin.get, PAGE)).body
    for name in (first, second):
        row = re.search(rf'<tr data-worker="{re.escape(name)}">(.*?)</tr>', page, re.S).group(1)
        assert re.search(r'class="column-peers">\d+</td>', row)
    assert re.search(r'<tfoot>\s*<tr><td class="column-name">2 workers</td>', page)
    assert 'src="/static/signaling/overview.js"' in page and "<script>" not in page  # no inline script
    assert '<a href="/admin/">Home</a>' in page  # the admin's breadcrumbs
    # The admin's index leads there, under the app, as to its models.
    assert f'<a href="{PAGE}">Cluster overview</a>' in (await asyncio.to_thread(admin.get, "/admin/")).body
    for client in (a, a2, b):
        await client.close()


def test_the_overview_is_for_staff_who_may_see_workers_only(make_server):
    w1 = make_server(server="uvicorn")
    database = w1.database
    for path in (PAGE, DATA):
        status, headers, _ = w1.get(path)
        assert status == 302 and headers["Location"] == f"/admin/login/?next={path}", path

    staff = AdminSession(w1)
    username = create_superuser(w1, PASSWORD)
    staff.login(username, PASSWORD)
    # Staff without the permission to view workers: refused.
    database.query("UPDATE auth_user SET is_superuser = ? WHERE username = ?", (False, username))
    for path in (PAGE, DATA):
        answer = staff.get(path)
        assert answer.status == 403 and "column-peers" not in answer.body, path
    assert PAGE not in staff.get("/admin/").body
    # No longer staff, still logged in: sent to the admin's login like a stranger.
    database.query("UPDATE auth_user SET is_staff = ? WHERE username = ?", (False, username))
    for path in (PAGE, DATA):
        answer = staff.get(path)
        assert answer.url.endswith(f"/admin/login/?next={path}"), path
        assert "column-peers" not in answer.body and '"workers"' not in answer.body, path


async def test_a_worker_that_stopped_beating_is_flagged_stale(make_server):
    # A worker reaps the silent only once its own beats have run for the
    # worker timeout: with a minute of it, the silent row stays to be seen.
    worker = make_server({"PEERJS_WORKER_TIMEOUT": "60000"}, own=True, server="uvicorn")
    database = worker.database
    last_beat = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
    when = last_beat if database.admin_url else last_beat.strftime("%Y-%m-%d %H:%M:%S.%f")
    silent = f"silent-{uuid.uuid4().hex[:6]}"
    database.query(
        "INSERT INTO signaling_worker (name, host, pid, started_at, last_beat, stats) VALUES (?, ?, ?, ?, ?, ?)",
        (silent, "elsewhere", 4242, when, when, "{}"),
    )
    admin = await asyncio.to_thread(operator_of, worker)
    live = name_of(worker)
    rows = await asyncio.to_thread(rows_when, admin, lambda rows: live in rows, "the live worker")

    assert rows[silent]["stale"] and not rows[live]["stale"]
    assert 299 < rows[silent]["beat_age"] < 320
    assert re.fullmatch(r"5 min \d+ s ago, stale", dict(rows[silent]["cells"])["beat_age"])
    assert "stale" not in dict(rows[live]["cells"])["beat_age"]
    page = (await asyncio.to_thread(admin.get, PAGE)).body
    assert f'<tr data-worker="{silent}" class="stale">' in page
    assert f'<tr data-worker="{live}">' in page
    assert "2 workers (1 stale)" in page
