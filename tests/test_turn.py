"""TURN credentials: what GET {base}/{key}/ice-servers hands out, and what a real coturn makes of it.

A real worker serves the endpoint; a real coturn (tests.servers.TurnServer,
sharing the workers' secret) is asked to allocate relays with the handed-out
credentials by turnutils_uclient, coturn's own test client. The per-app
rules (tokens, session, origins) are checked against rows the test writes
in the database the worker reads.
"""
import dataclasses
import datetime
import json
import re
import time
import urllib.error
import urllib.request

import pytest
from django.contrib.auth import get_user_model
from django.db import connection

from signaling import conf, tokens, turn
from signaling.applications import AppSettings, from_row
from signaling.models import App, Ban
from tests.admin_http import AdminSession
from tests.conftest import TEST_ENV, TURN_SECRET
from tests.servers import BASE, SharedTestDatabase, Worker, wait_until

pytestmark = [pytest.mark.db, pytest.mark.django_db(transaction=True)]


def settings_for(turn_urls, secret=TURN_SECRET, ttl=600, key="peerjs"):
    return AppSettings(
        key=key, name="t", origins=(), concurrent_limit=10, allow_discovery=False, auth=conf.AUTH_NONE,
        token_secret="", turn_urls=tuple(turn_urls), turn_secret=secret, turn_ttl=ttl,
        webhook_url="", webhook_secret="",
    )


# --- the credentials themselves ------------------------------------------------------


def test_stun_urls_get_no_credential_and_turn_urls_share_one():
    answer = turn.credentials(settings_for(["stun:s.example:3478", "turn:t.example:3478", "turns:t.example:5349"]), "alice", now=1000)
    assert answer == {
        "iceServers": [
            {"urls": ["stun:s.example:3478"]},
            {
                "urls": ["turn:t.example:3478", "turns:t.example:5349"],
                "username": "1600:alice",
                "credential": turn.credential(TURN_SECRET, "1600:alice"),
            },
        ],
        "ttl": 600,
    }


def test_without_a_peer_id_each_answer_has_a_name_of_its_own():
    app = settings_for(["turn:t.example:3478"])
    first, second = (turn.credentials(app, now=1000)["iceServers"][0]["username"] for _ in range(2))
    assert first != second and first.startswith("1600:") and second.startswith("1600:")


# --- a worker handing them out, a coturn checking them --------------------------------


@pytest.fixture(scope="module")
def worker(django_db_setup, turn_server):
    """A worker on the test's database: the default app's TURN from the environment, apps read every time."""
    database = SharedTestDatabase(connection.settings_dict)
    env = {
        **TEST_ENV,
        "PEERJS_APP_CACHE": "0",
        "PEERJS_TURN_URLS": f"stun:127.0.0.1:{turn_server.port},{turn_server.url('udp')},{turn_server.url('tcp')}",
        "PEERJS_TURN_SECRET": TURN_SECRET,
        "PEERJS_TURN_TTL": "600",
    }
    w = Worker(database, env, name="turn")
    yield w
    w.stop()
    database.drop()


def ice_servers(worker, key="peerjs", query="", headers=None):
    status, response_headers, body = worker.get(f"{BASE}/{key}/ice-servers{query}", headers)
    return status, response_headers, (json.loads(body) if status == 200 else body)


def worker_request(worker, method, path, headers):
    request = urllib.request.Request(worker.http + path, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers, response.read().decode()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.headers, error.read().decode()


def turn_entry(answer):
    return next(server for server in answer["iceServers"] if "username" in server)


def test_the_endpoint_hands_out_stun_and_turn_with_fresh_credentials(worker, turn_server):
    before = int(time.time())
    status, headers, answer = ice_servers(worker, query="?id=stage-left")
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert headers["Cache-Control"] == "no-store"
    assert answer["ttl"] == 600
    assert answer["iceServers"][0] == {"urls": [f"stun:127.0.0.1:{turn_server.port}"]}
    entry = turn_entry(answer)
    assert entry["urls"] == [turn_server.url("udp"), turn_server.url("tcp")]
    expiry, name = entry["username"].split(":")
    assert name == "stage-left" and before + 600 <= int(expiry) <= int(time.time()) + 600


def test_coturn_accepts_the_credentials_the_endpoint_hands_out(worker, turn_server):
    entry = turn_entry(ice_servers(worker)[2])
    result = turn_server.allocate(entry["username"], entry["credential"])
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr


def test_coturn_refuses_a_tampered_credential(worker, turn_server):
    entry = turn_entry(ice_servers(worker)[2])
    tampered = ("A" if entry["credential"][0] != "A" else "B") + entry["credential"][1:]
    assert turn_server.allocate(entry["username"], tampered).returncode != 0
    # Stretching the expiry without the secret breaks the credential too.
    expiry, name = entry["username"].split(":")
    assert turn_server.allocate(f"{int(expiry) + 86400}:{name}", entry["credential"]).returncode != 0


def test_coturn_refuses_an_expired_credential(turn_server):
    an_hour_ago = time.time() - 3600
    entry = turn_entry(turn.credentials(settings_for([turn_server.url()], ttl=600), "stage-left", now=an_hour_ago))
    assert turn_server.allocate(entry["username"], entry["credential"]).returncode != 0


def test_an_unknown_key_is_404_and_a_key_without_ice_servers_too(worker):
    assert ice_servers(worker, key="nosuchapp")[:3:2] == (404, "Invalid key provided")
    App.objects.create(key="lan", name="LAN only")
    assert ice_servers(worker, key="lan")[:3:2] == (404, "No ICE servers are configured for this key")


def test_a_bad_id_is_refused(worker):
    status, _, body = ice_servers(worker, query="?id=bad%0Aid")
    assert status == 400 and body.startswith("Invalid id")


def test_pages_on_other_origins_may_read_it(worker):
    _, headers, _ = ice_servers(worker, headers={"Origin": "https://app.example"})
    assert headers["Access-Control-Allow-Origin"] == "*"
    # A token in an Authorization header needs a preflight, which is answered.
    status, headers, _ = worker_request(worker, "OPTIONS", f"{BASE}/peerjs/ice-servers", {
        "Origin": "https://app.example",
        "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "authorization",
    })
    assert status == 204 and "Authorization" in headers["Access-Control-Allow-Headers"]


def test_an_apps_own_origins_decide_who_may_read_it(worker):
    App.objects.create(key="fenced", name="Fenced", allowed_origins="https://app.example",
                       turn_urls="stun:stun.example:3478")
    _, headers, _ = ice_servers(worker, key="fenced", headers={"Origin": "https://app.example"})
    assert headers["Access-Control-Allow-Origin"] == "https://app.example" and headers["Vary"] == "Origin"
    _, headers, _ = ice_servers(worker, key="fenced", headers={"Origin": "https://elsewhere.example"})
    assert "Access-Control-Allow-Origin" not in headers


# --- guarded like the socket ---------------------------------------------------------


@pytest.fixture
def tokened(turn_server):
    app = App(key="tokened", name="Tokened", auth=conf.AUTH_TOKEN, turn_urls=turn_server.url(), turn_secret=TURN_SECRET)
    app.full_clean()
    app.save()
    return from_row(app)


def test_an_app_that_requires_tokens_refuses_strangers_with_the_reason(worker, tokened):
    cases = {
        "": "Token required: pass ?id=ID&token=TOKEN",
        "?id=stage-left": "Token required",
        "?id=stage-left&token=k3j5h2l1m9": "Token required",
        f"?id=stage-left&token={tokens.mint(dataclasses.replace(tokened, token_secret='x' * 40), 'stage-left')}": "Invalid token: bad signature",
        f"?id=stage-left&token={tokens.mint(tokened, 'stage-left', 60, now=time.time() - 3600)}": "Invalid token: expired",
        f"?id=stage-right&token={tokens.mint(tokened, 'stage-left')}": "Invalid token: issued for another id",
        f"?id=stage-left&token={tokens.mint(dataclasses.replace(tokened, key='other'), 'stage-left')}": "Invalid token: issued for another key",
    }
    for query, reason in cases.items():
        status, headers, body = ice_servers(worker, key="tokened", query=query)
        assert (status, body) == (401, reason), query
        assert headers["WWW-Authenticate"].startswith("Bearer")


def test_a_peer_with_its_token_gets_credentials_in_its_name(worker, tokened, turn_server):
    token = tokens.mint(tokened, "stage-left")
    status, _, answer = ice_servers(worker, key="tokened", query=f"?id=stage-left&token={token}")
    assert status == 200 and turn_entry(answer)["username"].endswith(":stage-left")
    # The token may come as a Bearer header instead.
    status, _, answer = ice_servers(worker, key="tokened", query="?id=stage-left", headers={"Authorization": f"Bearer {token}"})
    assert status == 200
    entry = turn_entry(answer)
    assert turn_server.allocate(entry["username"], entry["credential"]).returncode == 0


def test_an_app_for_the_sites_users_answers_only_a_logged_in_browser(worker, turn_server):
    App.objects.create(key="members", name="Members", auth=conf.AUTH_SESSION, turn_urls=turn_server.url(),
                       turn_secret=TURN_SECRET)
    assert ice_servers(worker, key="members")[:3:2] == (401, "Login required")
    get_user_model().objects.create_user("alice", password="a-long-enough-password-1", is_staff=True)
    browser = AdminSession(worker)
    assert browser.login("alice", "a-long-enough-password-1").status == 200
    answer = browser.get(f"{BASE}/members/ice-servers")
    assert answer.status == 200 and re.match(r"^\d+:", turn_entry(json.loads(answer.body))["username"])


# --- not a free relay for strangers -------------------------------------------------


def expiry_in(answer):
    return int(turn_entry(answer)["username"].split(":")[0]) - int(time.time())


def test_an_app_without_authentication_hands_out_short_lived_credentials(worker, turn_server):
    # Anyone who finds the page gets them: at most PEERJS_TURN_TTL_WITHOUT_AUTH (600 s), whatever the app says.
    App.objects.create(key="open-day", name="Open", turn_urls=turn_server.url(), turn_secret=TURN_SECRET, turn_ttl=86400)
    status, _, answer = ice_servers(worker, key="open-day")
    assert status == 200 and answer["ttl"] == 600
    assert 595 <= expiry_in(answer) <= 600
    # An app that knows its peers keeps the lifetime it was given.
    app = App.objects.create(key="signed-day", name="Signed", auth=conf.AUTH_TOKEN, turn_urls=turn_server.url(),
                             turn_secret=TURN_SECRET, turn_ttl=86400)
    token = tokens.mint(from_row(app), "stage-left")
    status, _, answer = ice_servers(worker, key="signed-day", query=f"?id=stage-left&token={token}")
    assert status == 200 and answer["ttl"] == 86400 and expiry_in(answer) > 86000


def credentials_counted(worker, key):
    _, _, body = worker.get("/metrics")  # the test's 127.0.0.1 is in PEERJS_METRICS_ALLOW
    found = re.search(rf'^peerjs_turn_credentials_total{{key="{re.escape(key)}"}} (\S+)$', body, re.M)
    return float(found.group(1)) if found else 0.0


def test_credentials_handed_out_are_counted_per_app(worker):
    before = credentials_counted(worker, "peerjs")
    for _ in range(2):
        assert ice_servers(worker)[0] == 200
    assert credentials_counted(worker, "peerjs") == before + 2
    # STUN alone is no credential.
    App.objects.create(key="stun-only", name="STUN", turn_urls="stun:stun.example:3478")
    assert ice_servers(worker, key="stun-only")[0] == 200
    assert credentials_counted(worker, "stun-only") == 0


def test_a_banned_address_gets_no_credentials(worker):
    # No socket has reached this daphne worker, so it has no hub and reads the bans now.
    Ban.objects.create(address="127.0.0.1", reason="relay abuse")
    status, _, body = ice_servers(worker, query="?id=stage-left")
    assert status == 403
    assert body == "Banned: this address may not connect to the server until an operator lifts the ban (relay abuse)"


def test_ice_servers_count_in_the_address_rate_limit_and_bans_hold_on_a_running_worker(make_server, turn_server):
    worker = make_server({
        "PEERJS_PROXIED": "1", "PEERJS_RATE_LIMIT_ICE": "3", "PEERJS_RATE_LIMIT_WINDOW": "2000", "PEERJS_BAN_REFRESH": "200",
        "PEERJS_TURN_URLS": turn_server.url(), "PEERJS_TURN_SECRET": TURN_SECRET,
    }, server="uvicorn", own=True)
    crowded, banned = {"X-Forwarded-For": "198.18.7.1"}, {"X-Forwarded-For": "198.18.7.2"}
    for _ in range(3):
        assert ice_servers(worker, headers=crowded)[0] == 200
    status, headers, body = ice_servers(worker, headers=crowded)
    assert status == 429 and f"try again in {headers['Retry-After']} s" in body
    assert 'peerjs_rate_limited_total{kind="ice"} 1.0' in worker.get("/metrics")[2]
    # /id has a budget of its own.
    assert worker.get(f"{BASE}/peerjs/id", crowded)[0] == 200

    assert ice_servers(worker, headers=banned)[0] == 200
    now = datetime.datetime.now(datetime.UTC)
    stamp = now if worker.database.admin_url else now.strftime("%Y-%m-%d %H:%M:%S.%f")
    worker.database.query(
        "INSERT INTO signaling_ban (key, peer_id, address, reason, created_at, created_by, expires_at) "
        "VALUES ('peerjs', '', '198.18.7.2', '', ?, '', NULL)",
        (stamp,),
    )
    # Polled, within its rate limit's windows: a 429 meanwhile is no answer yet.
    wait_until(lambda: ice_servers(worker, headers=banned)[0] == 403, 10, "the worker to apply the ban", interval=0.2)
    assert ice_servers(worker, headers={"X-Forwarded-For": "198.18.7.3"})[0] == 200
