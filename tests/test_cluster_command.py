"""`make cluster` (scripts/cluster.sh): the compose topology from real processes.

The script is started as a user would, on free ports with a private SQLite
file, and used only through nginx and the workers' ports: HTTP and signaling
sockets through nginx, a relay between peers on the two workers, and a
SIGTERM that must leave no process behind.
"""
import asyncio
import json
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import websockets

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "cluster.sh"
BASE = "/peerjs/myapp"
READY = "cluster is up"
START_TIMEOUT = 150
STOP_TIMEOUT = 60
TIMEOUT = 10

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(2 * START_TIMEOUT + STOP_TIMEOUT)]


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def free_port_pair():
    """A port p with p+1 also free: the script numbers workers upwards."""
    for _ in range(50):
        port = free_port()
        try:
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", port + 1))
        except OSError:
            continue
        return port
    raise RuntimeError("no two consecutive free ports")


# --- processes -------------------------------------------------------------------


def _stat(pid):
    """(parent pid, start time, state) of a process, or None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()
    return int(fields[1]), int(fields[19]), fields[0]


def descendants(root):
    """Every process below ``root``, as (pid, start time) so a reused pid is not mistaken."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _stat(int(entry))
            if stat:
                children.setdefault(stat[0], []).append((int(entry), stat[1]))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child[0])
    return found


def running(process):
    pid, started = process
    stat = _stat(pid)
    return stat is not None and stat[1] == started and stat[2] != "Z"


def command_line(pid):
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


class ClusterCommand:
    """scripts/cluster.sh as a subprocess, its output collected line by line."""

    def __init__(self, tmp_path, server="uvicorn"):
        self.port = free_port()
        self.worker_ports = [free_port_pair()]
        self.worker_ports.append(self.worker_ports[0] + 1)
        env = {
            name: value
            for name, value in os.environ.items()
            if not name.startswith(("DJANGO_", "PEERJS_", "ASGI_"))
            and name not in {"DATABASE_URL", "REDIS_URL", "REDIS_PORT", "WORKERS"}
        }
        env.update(
            PORT=str(self.port),
            WORKER_PORT=str(self.worker_ports[0]),
            DATABASE_URL=f"sqlite:///{tmp_path}/cluster.sqlite3",
            TMPDIR=str(tmp_path),
        )
        self.lines = []
        self.ready = threading.Event()
        self.ended = threading.Event()
        self.proc = subprocess.Popen(
            [str(SCRIPT), "--server", server],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        threading.Thread(target=self._read, daemon=True).start()
        self.processes = []

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            if READY in line:
                self.ready.set()
        self.ended.set()

    @property
    def output(self):
        return "\n".join(self.lines)

    def wait_ready(self):
        deadline = time.monotonic() + START_TIMEOUT
        while not self.ready.wait(0.2):
            assert not self.ended.is_set(), f"cluster.sh ended before it was up:\n{self.output}"
            assert time.monotonic() < deadline, f"cluster.sh not up in {START_TIMEOUT}s:\n{self.output}"
        self.processes = descendants(self.proc.pid)

    def stop(self):
        """SIGTERM, as a service manager or Ctrl-C would; the exit status."""
        self.processes = descendants(self.proc.pid) or self.processes
        self.proc.send_signal(signal.SIGTERM)
        status = self.proc.wait(STOP_TIMEOUT)
        assert self.ended.wait(TIMEOUT)
        return status

    def kill_leftovers(self):
        """Teardown after a failed test: nothing of ours may outlive it."""
        if self.proc.poll() is None:
            self.processes = descendants(self.proc.pid) or self.processes
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(TIMEOUT)
        for process in self.processes:
            if running(process):
                os.kill(process[0], signal.SIGKILL)

    def http(self, path, port=None):
        url = f"http://127.0.0.1:{port or self.port}{path}"
        with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
            return response.status, response.read().decode()

    def socket_url(self, peer_id, token, port=None):
        return (
            f"ws://127.0.0.1:{port or self.port}{BASE}/peerjs"
            f"?key=peerjs&id={peer_id}&token={token}&version=1.5.5"
        )


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    command = ClusterCommand(tmp_path_factory.mktemp("cluster"))
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


# --- stopping ----------------------------------------------------------------------


@pytest.mark.parametrize("server", ["daphne", "uvicorn"])
async def test_sigterm_stops_every_process_it_started(tmp_path, server):
    command = ClusterCommand(tmp_path, server=server)
    try:
        await asyncio.to_thread(command.wait_ready)
        assert len(command.processes) >= 4  # redis, two workers, nginx (and its worker)
        assert sum(f"/bin/{server} " in command_line(pid) for pid, _ in command.processes) == 2

        alice, bob = unique("alice"), unique("bob")
        a = await open_peer(command.socket_url(alice, "ta"))
        b = await open_peer(command.socket_url(bob, "tb"))
        await a.send(json.dumps({"type": "OFFER", "dst": bob, "payload": {"sdp": "o"}}))
        assert (await recv(b))["src"] == alice

        status = await asyncio.to_thread(command.stop)
        assert status == 128 + signal.SIGTERM, command.output
        assert "stopped" in command.output
        assert [p for p in command.processes if running(p)] == []
        # The open sockets were closed, not left hanging.
        for ws in (a, b):
            await asyncio.wait_for(ws.wait_closed(), TIMEOUT)
        # Every port can be listened on again (closed connections may linger
        # in TIME_WAIT; servers bind with SO_REUSEADDR, so does this check).
        for port in [command.port, *command.worker_ports]:
            with socket.socket() as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(("127.0.0.1", port))
                sock.listen()
    finally:
        command.kill_leftovers()
