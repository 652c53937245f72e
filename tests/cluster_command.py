"""`make cluster` (scripts/cluster.sh) run as a subprocess, for the tests.

Shared by tests/test_cluster_command.py, which tests the script itself, and
by the browser tests that drive a real PeerJS client and the cue pages
through its nginx (tests/browser/test_tls_cluster.py). The session's
``tls_cluster`` fixture (tests/conftest.py) is one of these with a
certificate the tests make.
"""
import glob
import os
import re
import signal
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

from tests.servers import free_port, http_get

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "cluster.sh"
BASE = "/peerjs/myapp"
READY = "cluster is up"
START_TIMEOUT = 150
STOP_TIMEOUT = 60
TIMEOUT = 10
# What a test that starts a cluster (or is the first to use the session's)
# may take: start-up, stop, and a margin for the test itself.
CLUSTER_TEST_TIMEOUT = 2 * START_TIMEOUT + STOP_TIMEOUT

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


def _default_sigint():
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def command_line(pid):
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


class ClusterCommand:
    """scripts/cluster.sh as a subprocess, its output collected line by line.

    ``tls``: a Certificates whose server certificate nginx is given
    (TLS_CERT/TLS_KEY); ``env``: more of the script's environment;
    ``make``: started as the README says, by ``make cluster``, in a process
    group of its own as a terminal's foreground job (see ``interrupt``).
    """

    def __init__(self, tmp_path, server="uvicorn", tls=None, env=None, make=False):
        self.tmp_path = tmp_path
        self.tls = tls
        self.port = free_port()
        self.tls_port = free_port() if tls else None
        first = free_port(count=2)  # the script numbers workers upwards
        self.worker_ports = [first, first + 1]
        env = {
            **{
                name: value
                for name, value in os.environ.items()
                if not name.startswith(("DJANGO_", "PEERJS_", "ASGI_", "TLS_"))
                and name not in {"DATABASE_URL", "REDIS_URL", "REDIS_PORT", "WORKERS"}
            },
            "DATABASE_URL": f"sqlite:///{tmp_path}/cluster.sqlite3",
            **(env or {}),
        }
        env.update(
            PORT=str(self.port),
            WORKER_PORT=str(self.worker_ports[0]),
            TMPDIR=str(tmp_path),
        )
        if "REDIS_URL" not in env:  # the script's own redis-server, on a port of this process's range
            env["REDIS_PORT"] = str(free_port())
        if tls:
            env.update(TLS_CERT=str(tls.cert), TLS_KEY=str(tls.key), TLS_PORT=str(self.tls_port))
        self.lines = []
        self.ready = threading.Event()
        self.ended = threading.Event()
        if make:
            env["ASGI_SERVER"] = server
        self.proc = subprocess.Popen(
            ["make", "cluster"] if make else [str(SCRIPT), "--server", server],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=make,
            # As a terminal's foreground job has it: a suite started in the
            # background (nohup cmd &) hands its children SIGINT ignored, and
            # a shell cannot trap a signal ignored when it started.
            preexec_fn=_default_sigint,
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
        status = self._wait_stopped()
        assert self.ended.wait(TIMEOUT)
        return status

    def interrupt(self):
        """Ctrl-C in the terminal: SIGINT to the foreground process group; make's exit status."""
        self.processes = descendants(self.proc.pid) or self.processes
        os.killpg(self.proc.pid, signal.SIGINT)
        status = self._wait_stopped()
        assert self.ended.wait(TIMEOUT)
        return status

    def _wait_stopped(self):
        """The exit status; if the script is still stopping at STOP_TIMEOUT, what it said and what still runs."""
        try:
            return self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            left = [f"{p[0]} {command_line(p[0])}" for p in self.processes if running(p)]
            raise AssertionError(
                f"not stopped in {STOP_TIMEOUT}s; still running: {left}\nits output:\n{self.output}"
            ) from None

    @property
    def script_pid(self):
        """The pid the script says to kill to stop it."""
        return int(re.search(r"stop .* kill (\d+)", self.output).group(1))

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

    def https(self, path, headers=None):
        """(status, headers, body) through nginx's HTTPS port, trusting the test's CA only."""
        return http_get(f"https://localhost:{self.tls_port}{path}", headers, context=self.tls.client_context())

    def socket_url(self, peer_id, token, port=None):
        return (
            f"ws://127.0.0.1:{port or self.port}{BASE}/peerjs"
            f"?key=peerjs&id={peer_id}&token={token}&version=1.5.5"
        )

    def secure_socket_url(self, peer_id, token):
        return f"wss://localhost:{self.tls_port}{BASE}/peerjs?key=peerjs&id={peer_id}&token={token}&version=1.5.5"

    @property
    def run_dir(self):
        """The script's own directory of logs and nginx files (under TMPDIR)."""
        (found,) = glob.glob(f"{self.tmp_path}/peerserver-cluster.*")
        return Path(found)

    def nginx_log(self, name):
        return (self.run_dir / "nginx" / "logs" / name).read_text()

    def worker_pid(self, port):
        """The pid of the worker process serving ``port``."""
        (pid,) = [pid for pid, _ in descendants(self.proc.pid)
                  if re.search(rf"--port {port}\b", command_line(pid))]
        return pid
