"""Apps across real workers: an operator's edit in the admin reaches every worker, and an outage keeps them serving.

Two daphne workers share one database; the operator works in the admin of
one of them over real HTTP, and the other one is watched from outside.
"""
import json
import os
import time

import pytest

from tests.admin_http import AdminSession, create_superuser
from tests.conftest import TEST_ENV
from tests.servers import BASE, Database, Worker, wait_until

pytestmark = pytest.mark.db

PASSWORD = "the-operators-password"
CACHE_MS = 1000


def app_form(**fields):
    return {
        "key": "stage", "name": "Stage", "allowed_origins": "", "concurrent_limit": "",
        "auth": "none", "turn_urls": "", "turn_secret": "", "turn_ttl": "86400",
        "webhook_url": "", "webhook_secret": "", **fields,
    }


@pytest.fixture
def two_workers():
    database = Database()
    env = {**TEST_ENV, "PEERJS_APP_CACHE": str(CACHE_MS)}
    workers = [Worker(database, env, name="a"), Worker(database, env, name="b")]
    yield database, workers
    for worker in workers:
        worker.stop()
    database.drop()


def test_an_app_added_and_edited_in_the_admin_is_seen_by_every_worker_within_the_cache_period(two_workers):
    database, (a, b) = two_workers
    operator = AdminSession(a)
    operator.login(create_superuser(a, PASSWORD), PASSWORD)
    assert b.get(f"{BASE}/stage/peers")[::2] == (401, "Invalid key provided")

    answer = operator.post("/admin/signaling/app/add/", app_form())
    assert answer.status == 200 and "was added successfully" in answer.body
    added = time.monotonic()
    wait_until(lambda: b.get(f"{BASE}/stage/peers")[2] == "Discovery is not allowed on this server",
               CACHE_MS / 1000 + 3, "worker b to see the new app")
    assert time.monotonic() - added < CACHE_MS / 1000 + 3

    (pk,), = database.query("SELECT id FROM signaling_app WHERE key = ?", ("stage",))
    answer = operator.post(f"/admin/signaling/app/{pk}/change/", app_form(allow_discovery="on"))
    assert answer.status == 200 and "was changed successfully" in answer.body
    edited = time.monotonic()
    wait_until(lambda: b.get(f"{BASE}/stage/peers")[0] == 200, CACHE_MS / 1000 + 3, "worker b to see the edit")
    assert json.loads(b.get(f"{BASE}/stage/peers")[2]) == []
    assert time.monotonic() - edited < CACHE_MS / 1000 + 3
    # The default key still has the environment's settings (discovery off).
    assert b.get(f"{BASE}/peerjs/peers")[::2] == (401, "Discovery is not allowed on this server")


def test_a_database_outage_keeps_serving_the_last_known_app_and_says_so_once(private_postgres):
    database = Database(private_postgres.admin_url)
    now = "2026-11-29 00:00:00+00"
    database.query(
        "INSERT INTO signaling_app (key, name, allowed_origins, concurrent_limit, allow_discovery, auth, token_secret,"
        " turn_urls, turn_secret, turn_ttl, webhook_url, webhook_secret, created_at, updated_at)"
        " VALUES ('stage', 'Stage', '', NULL, false, 'none', 'unused-unused-unused-unused-unused',"
        " 'stun:stun.example:3478', '', 77, '', '', ?, ?)",
        (now, now),
    )
    worker = Worker(database, {**TEST_ENV, "PEERJS_APP_CACHE": "200"}, name="outage")
    ice = f"{BASE}/stage/ice-servers"
    warning = "cannot read apps from the database"
    try:
        status, _, body = worker.get(ice)
        assert status == 200 and json.loads(body)["ttl"] == 77
        private_postgres.stop()

        def still_served_and_noticed():
            status, _, body = worker.get(ice)
            assert status == 200 and json.loads(body)["ttl"] == 77, body
            return warning in worker.read_log()

        # Every answer during the outage is the app's; the worker notices when the cache is due.
        wait_until(still_served_and_noticed, 10, "the worker to notice the outage")
        for _ in range(10):
            assert still_served_and_noticed()
        assert worker.read_log().count(warning) == 1
    finally:
        private_postgres.start()
    try:
        def recovered():
            assert worker.get(ice)[0] == 200  # a request, so the worker reads the app again when due
            return "the database answers again" in worker.read_log()

        wait_until(recovered, 10, "the worker to read apps again")
    finally:
        worker.stop()
        database.drop()
