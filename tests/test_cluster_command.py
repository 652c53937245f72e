"""`make cluster` (scripts/cluster.sh): the compose topology from real processes.

The script is started as a user would, on free ports with a private SQLite
file (or a database on a private PostgreSQL server), and used only through
nginx and the workers' ports: HTTP and signaling sockets through nginx, a
relay between peers on the two workers, HTTPS and WSS with a certificate the
test makes, what nginx logs, start-up that waits for ready workers, a drain
that nginx steers around, and a SIGTERM that must leave no process behind.
"""
import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import urllib.parse
import urllib.request

import pytest
import websockets

from tests.cluster_command import (
    BASE,
    CLUSTER_TEST_TIMEOUT,
    READY,
    ROOT,
    START_TIMEOUT,
    STOP_TIMEOUT,
    TIMEOUT,
    ClusterCommand,
    command_line,
    free_port,
    running,
)
from tests.servers import Database, http_get, wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(CLUSTER_TEST_TIMEOUT)]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    command = ClusterCommand(tmp_path_factory.mktemp("cluster"), make=True)  # as the README says
    try:
        command.wait_ready()
        yield command
    finally:
        command.kill_leftovers()


async def recv(ws):
    return json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))


async def open_peer(url):
    ws = await asyncio.wait_for(websockets.connect(url), TIMEOUT)
    assert await recv(ws) == {"type": "OPEN"}
    return ws


def unique(prefix):
    return f"{prefix}{os.urandom(6).hex()}"


# --- the running cluster -----------------------------------------------------------


def test_script_says_where_everything_is(cluster):
    out = cluster.output
    assert f"http://localhost:{cluster.port}/" in out
    assert f"127.0.0.1:{cluster.worker_ports[0]}..{cluster.worker_ports[1]}" in out
    assert "redis://127.0.0.1:" in out
    assert "Ctrl-C" in out


def test_script_runs_redis_two_workers_and_nginx(cluster):
    commands = [command_line(pid) for pid, _ in cluster.processes]
    assert sum("redis-server" in c for c in commands) == 1
    assert sum("nginx: master" in c or c.startswith("/usr/sbin/nginx") for c in commands) == 1
    for port in cluster.worker_ports:
        assert sum("uvicorn p2psite.asgi:application" in c and f"--port {port} " in c for c in commands) == 1


def test_info_answers_through_nginx(cluster):
    status, body = cluster.http(f"{BASE}/")
    assert status == 200
    assert json.loads(body)["name"]


def test_pages_and_static_files_answer_through_nginx(cluster):
    status, body = cluster.http("/")
    assert status == 200 and "<html" in body.lower()
    # The PeerJS client the pages load, from the pinned npm package: larger
    # than nginx's proxy buffers, so it also exercises nginx's temp files.
    status, body = cluster.http("/static/vendor/peerjs/peerjs.min.js")
    pinned = ROOT / "node_modules" / "peerjs" / "dist" / "peerjs.min.js"
    assert status == 200
    assert body == pinned.read_text()


def test_script_says_where_each_worker_s_metrics_are(cluster):
    for n, port in enumerate(cluster.worker_ports, start=1):
        url = f"http://127.0.0.1:{port}/metrics"
        assert re.search(rf"metrics +worker{n} +{re.escape(url)}$", cluster.output, re.MULTILINE)
        # Readable from this machine, as a local Prometheus would scrape it.
        status, _, body = http_get(url)
        assert status == 200 and "peerjs_open_sockets" in body


def test_nginx_keeps_metrics_from_the_public(cluster):
    # Through the proxy a scrape would reach some worker, and anyone could read it.
    for path in ["/metrics", "//metrics", "/metrics?format=text"]:
        status, _, body = http_get(f"http://127.0.0.1:{cluster.port}{path}")
        assert status == 404, path
        assert "peerjs_" not in body


def test_every_worker_answers_on_its_own_port(cluster):
    for port in cluster.worker_ports:
        status, body = cluster.http(f"{BASE}/", port=port)
        assert status == 200 and json.loads(body)["name"]


def test_id_answers_through_nginx(cluster):
    status, body = cluster.http(f"{BASE}/peerjs/id?ts=1&version=1.5.5")
    assert status == 200
    assert body.strip()


async def test_socket_opens_through_nginx(cluster):
    ws = await open_peer(cluster.socket_url(unique("open"), "t1"))
    await ws.close()


async def test_two_peers_exchange_an_offer_through_nginx(cluster):
    alice, bob = unique("alice"), unique("bob")
    a = await open_peer(cluster.socket_url(alice, "ta"))
    b = await open_peer(cluster.socket_url(bob, "tb"))
    try:
        payload = {"sdp": {"type": "offer", "sdp": "v=0"}, "connectionId": "dc_1"}
        await a.send(json.dumps({"type": "OFFER", "dst": bob, "payload": payload}))
        assert await recv(b) == {"type": "OFFER", "src": alice, "dst": bob, "payload": payload}
        await b.send(json.dumps({"type": "ANSWER", "dst": alice, "payload": {"sdp": "a"}}))
        assert await recv(a) == {"type": "ANSWER", "src": bob, "dst": alice, "payload": {"sdp": "a"}}
    finally:
        await a.close()
        await b.close()


async def test_behind_nginx_a_forged_forwarded_for_is_not_the_address(cluster):
    """The client's own X-Forwarded-For line comes first; nginx appends what it saw (127.0.0.1):
    the registry records that, not the forged entry."""
    peer_id = unique("forger")
    ws = await asyncio.wait_for(
        websockets.connect(cluster.socket_url(peer_id, "tf"), additional_headers={"X-Forwarded-For": "203.0.113.66"}),
        TIMEOUT,
    )
    try:
        assert await recv(ws) == {"type": "OPEN"}
        database = sqlite3.connect(cluster.tmp_path / "cluster.sqlite3")
        try:
            (address,), = database.execute("SELECT address FROM signaling_peer WHERE peer_id = ?", (peer_id,))
        finally:
            database.close()
        assert address == "127.0.0.1"
    finally:
        await ws.close()


async def test_peers_on_different_workers_exchange_an_offer(cluster):
    # Straight to each worker: proves the script gave them one Redis and one
    # database, whichever worker nginx would have picked.
    alice, bob = unique("alice"), unique("bob")
    first, second = cluster.worker_ports
    a = await open_peer(cluster.socket_url(alice, "ta", port=first))
    b = await open_peer(cluster.socket_url(bob, "tb", port=second))
    try:
        await a.send(json.dumps({"type": "OFFER", "dst": bob, "payload": {"sdp": "o"}}))
        assert await recv(b) == {"type": "OFFER", "src": alice, "dst": bob, "payload": {"sdp": "o"}}
    finally:
        await a.close()
        await b.close()


def test_up_means_nginx_serves_the_pages(cluster):
    # nginx started only once both workers were ready, and the script said
    # "up" only after nginx itself served the page: nginx never saw a worker
    # fail, and the first thing it served was the page, with 200.
    first = cluster.nginx_log("access.log").splitlines()[0]
    assert '"GET / HTTP/1.1" 200 ' in first
    assert "upstream" not in cluster.nginx_log("error.log")
    # The workers were asked for readiness first.
    for port in cluster.worker_ports:
        status, body = cluster.http("/readyz", port=port)
        assert status == 200 and json.loads(body)["ready"] is True


async def test_tokens_stay_out_of_nginx_access_log(cluster):
    token = f"secret{os.urandom(8).hex()}"
    peer_id = unique("logged")
    ws = await open_peer(cluster.socket_url(peer_id, token))
    await ws.close()
    # nginx writes a WebSocket's line when the connection ends.
    wait_until(lambda: f"{BASE}/peerjs HTTP/1.1\" 101 " in cluster.nginx_log("access.log"), TIMEOUT,
               "the socket's line in nginx's access log")
    log = cluster.nginx_log("access.log")
    assert token not in log
    assert peer_id not in log  # the whole query string stays out
    assert f'"GET {BASE}/peerjs HTTP/1.1" 101 ' in log


def test_the_admin_user_command_it_prints_makes_a_user_who_logs_in_through_nginx(cluster):
    (line,) = [line for line in cluster.lines if line.strip().startswith("admin ")]
    assert f"http://localhost:{cluster.port}/admin/" in line
    command = re.search(r"\(an admin user for this database: (.*)\)$", line).group(1)
    password = "stage-manager-pw-7"
    subprocess.run(
        f"{command} --noinput --username stagemanager --email sm@example.com", shell=True, cwd=ROOT,
        env={**os.environ, "DJANGO_SUPERUSER_PASSWORD": password}, check=True, capture_output=True,
    )
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
    url = f"http://localhost:{cluster.port}/admin/login/?next=/admin/"
    with opener.open(url, timeout=TIMEOUT) as response:
        csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', response.read().decode()).group(1)
    form = urllib.parse.urlencode({"csrfmiddlewaretoken": csrf, "username": "stagemanager", "password": password, "next": "/admin/"})
    request = urllib.request.Request(url, data=form.encode(), headers={"Origin": f"http://localhost:{cluster.port}", "Referer": url})
    with opener.open(request, timeout=TIMEOUT) as response:
        assert response.url.endswith("/admin/")
        assert "Site administration" in response.read().decode()


def test_start_waits_for_ready_workers_and_says_why_not(tmp_path):
    # A Redis that does not answer: the workers start, but are not ready, so
    # nginx is never started and the script says which check fails.
    command = ClusterCommand(tmp_path, env={"REDIS_URL": f"redis://127.0.0.1:{free_port()}/0", "START_TIMEOUT": "15"})  # the workers start, slowly on a busy machine
    try:
        assert command.proc.wait(START_TIMEOUT) == 1
        assert command.ended.wait(TIMEOUT)
        assert READY not in command.output
        assert "/readyz" in command.output and '"redis": "unreachable' in command.output
        assert not (command.run_dir / "nginx").exists()  # never rendered, never started
    finally:
        command.kill_leftovers()


# --- HTTPS -------------------------------------------------------------------------


def test_tls_script_says_https(tls_cluster):
    assert f"cluster is up: https://localhost:{tls_cluster.tls_port}/" in tls_cluster.output
    assert f":{tls_cluster.port} redirects there" in tls_cluster.output


def test_pages_are_served_over_https_with_hsts(tls_cluster):
    status, headers, body = tls_cluster.https("/")
    assert status == 200 and "<html" in body.lower()
    assert headers["Strict-Transport-Security"] == "max-age=3600"
    status, _, body = tls_cluster.https(f"{BASE}/peerjs/id?ts=1&version=1.5.5")
    assert status == 200 and body.strip()


def test_plain_http_redirects_to_https(tls_cluster):
    status, headers, _ = http_get(f"http://localhost:{tls_cluster.port}/send?id=abc&command=Go")
    assert status == 301
    assert headers["Location"] == f"https://localhost:{tls_cluster.tls_port}/send?id=abc&command=Go"


def test_admin_login_works_behind_tls(tls_cluster):
    # Django must see the request as HTTPS (X-Forwarded-Proto from nginx) for
    # its cookies to be Secure and its CSRF origin check to pass.
    opener = urllib.request.build_opener(
        urllib.request.HTTPSHandler(context=tls_cluster.tls.client_context()),
        urllib.request.HTTPCookieProcessor(),
    )
    url = f"https://localhost:{tls_cluster.tls_port}/admin/login/"
    with opener.open(url, timeout=TIMEOUT) as response:
        page = response.read().decode()
        cookies = response.headers.get_all("Set-Cookie")
    assert any(c.startswith("csrftoken=") and "Secure" in c for c in cookies)
    csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
    form = urllib.parse.urlencode({"csrfmiddlewaretoken": csrf, "username": "nobody", "password": "wrong"})
    request = urllib.request.Request(url, data=form.encode(), headers={"Origin": f"https://localhost:{tls_cluster.tls_port}", "Referer": url})
    with opener.open(request, timeout=TIMEOUT) as response:
        # The form again, with the credentials refused: not a 403 CSRF failure.
        assert response.status == 200
        assert "correct username and password" in response.read().decode()


async def test_signaling_crosses_workers_over_wss(tls_cluster):
    context = tls_cluster.tls.client_context()
    alice, bob = unique("alice"), unique("bob")
    a = await asyncio.wait_for(websockets.connect(tls_cluster.secure_socket_url(alice, "ta"), ssl=context), TIMEOUT)
    b = await asyncio.wait_for(websockets.connect(tls_cluster.secure_socket_url(bob, "tb"), ssl=context), TIMEOUT)
    try:
        assert await recv(a) == {"type": "OPEN"} and await recv(b) == {"type": "OPEN"}
        await a.send(json.dumps({"type": "OFFER", "dst": bob, "payload": {"sdp": "o"}}))
        assert await recv(b) == {"type": "OFFER", "src": alice, "dst": bob, "payload": {"sdp": "o"}}
    finally:
        await a.close()
        await b.close()


# --- a worker draining behind nginx ------------------------------------------------------


@contextlib.contextmanager
def worker_row_locked(database, worker_pid):
    """Hold the lock a draining worker needs to delete its registry row, so its drain lasts."""
    import psycopg

    with psycopg.connect(database.url) as conn:
        (name,) = conn.execute("SELECT name FROM signaling_worker WHERE pid = %s", [worker_pid]).fetchone()
        conn.execute("SELECT 1 FROM signaling_worker WHERE name = %s FOR UPDATE", [name])
        yield name
        conn.rollback()


async def test_nginx_sends_new_sockets_past_a_draining_worker(tmp_path, private_postgres):
    # PostgreSQL, so that holding up one worker's drain (a row lock) leaves
    # the other worker's claims alone, as SQLite's one write lock would not.
    database = Database(private_postgres.admin_url)
    command = ClusterCommand(tmp_path, env={"DATABASE_URL": database.url})
    try:
        await asyncio.to_thread(command.wait_ready)
        draining_port, staying_port = command.worker_ports
        pid = command.worker_pid(draining_port)
        with worker_row_locked(database, pid):
            os.kill(pid, signal.SIGTERM)
            await asyncio.to_thread(
                wait_until, lambda: json.loads(http_get(f"http://127.0.0.1:{draining_port}/readyz")[2])["draining"],
                TIMEOUT, "the worker to drain")
            # least_conn favours the worker with the fewest sockets: the
            # draining one, which has closed all of its. Each socket must
            # still open, on the worker that stays.
            peers = [await open_peer(command.socket_url(unique("late"), "t")) for _ in range(4)]
            rows = database.query("SELECT worker FROM signaling_peer")
            assert len(rows) == 4
            assert {worker for (worker,) in rows} == {
                name for (name,) in database.query("SELECT name FROM signaling_worker WHERE pid <> ?", (pid,))
            }
            for ws in peers:
                await ws.close()
    finally:
        command.kill_leftovers()
        database.drop()


# --- stopping ----------------------------------------------------------------------
# Last in the module: it stops the module's cluster (uvicorn workers, started
# by make) with Ctrl-C. The session's TLS cluster (daphne workers, also started
# by make) is stopped with the kill the script's summary prints, and checked
# the same way when the session ends (tests/conftest.py, tls_cluster).


async def test_make_cluster_stops_every_process_it_started_without_an_error(cluster):
    assert len(cluster.processes) >= 4  # redis, two workers, nginx (and its worker)
    assert sum("/bin/uvicorn " in command_line(pid) for pid, _ in cluster.processes) == 2

    alice, bob = unique("alice"), unique("bob")
    a = await open_peer(cluster.socket_url(alice, "ta"))
    b = await open_peer(cluster.socket_url(bob, "tb"))
    await a.send(json.dumps({"type": "OFFER", "dst": bob, "payload": {"sdp": "o"}}))
    assert (await recv(b))["src"] == alice

    # Ctrl-C: make itself gets the SIGINT too, and ends by it: silently.
    status = await asyncio.to_thread(cluster.interrupt)
    assert status == -signal.SIGINT, cluster.output
    assert_stopped_cleanly(cluster)
    # The open sockets were closed, not left hanging.
    for ws in (a, b):
        await asyncio.wait_for(ws.wait_closed(), TIMEOUT)
    # Every port can be listened on again (closed connections may linger
    # in TIME_WAIT; servers bind with SO_REUSEADDR, so does this check).
    for port in [cluster.port, *cluster.worker_ports]:
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", port))
            sock.listen()


def assert_stopped_cleanly(command):
    """The script said it stopped, make reported no error, and no process it started is left."""
    assert "stopped" in command.output
    assert "Error" not in command.output and "***" not in command.output, command.output
    assert [p for p in command.processes if running(p)] == []
