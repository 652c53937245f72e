"""The benchmark: the reference PeerServer and this project, side by side, in one run.

``make bench`` (``bench/run.sh``) runs, one after the other on this machine:

- ``reference``: npm ``peer`` (pinned in bench/package.json) mounted as the seed does;
- ``daphne``: this project, one worker under daphne;
- ``uvicorn-<ws>``: one worker under uvicorn, for each WebSocket implementation;
- ``2x<server>+redis``: two workers sharing a private redis-server, every pair
  of peers split across them so that every message crosses workers.

Each server gets the same phases, driven by several ``loadgen.py serve``
processes (the load must not be capped by one Python process; each reports its
own CPU and the run says when the load generator, not the server, was the
bottleneck):

1. open: open the idle peers (CPU µs per open, opens/s, open latency);
2. hold: the idle peers send HEARTBEAT every 5 s; count the ones dropped and
   read the servers' RSS (KB per idle peer); then close them (µs per close);
3. relay: pairs of peers send OFFER/CANDIDATE frames to each other, paced at
   1 000 and 2 000 messages/s, then at full speed (a window of messages in
   flight per stream): CPU µs per relayed message, messages/s, one-way
   latency p50/p95/p99, and lost, duplicated and reordered messages.

Server CPU is utime+stime from /proc/<pid>/stat summed over every server
process and Redis, as a delta around each phase; memory is VmRSS from
/proc/<pid>/status. The table gives each figure and its ratio to the
reference; the JSON goes to bench/results/. Only 127.0.0.1 is targeted, every
phase is bounded in count and time, and the servers are stopped at the end,
on error too.
"""
import argparse
import contextlib
import datetime
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
import loadgen  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
HOST = "127.0.0.1"
BASE_PATH = "/peerjs/myapp"
CLIENT_BOUND = 0.85  # a load-generator process busier than this was the bottleneck
# Servers and load generators using more than this share of all the cores: the
# machine was the bottleneck, and msgs/s compares their summed CPU per message.
MACHINE_BOUND = 0.9

# The targets (issue 5, part 2), checked for the production worker and the cluster.
TARGETS = {
    "single": {"relay_us": 40, "open_us": 1500, "idle_kb": 40, "p99_2000_ms": 10},
    "cluster": {"relay_us": 150, "open_us": 1500, "idle_kb": 40, "p99_2000_ms": 50},
}

PROFILES = {
    # The whole comparison in under 10 minutes on 2 cores.
    "full": {
        "idle_peers": 2000,
        "idle_hold": 10,
        "open_seconds": 15,  # cap on the open phase: a slow server opens fewer peers
        "pairs": 40,
        "paced_seconds": 5,
        "full_seconds": 5,
        "full_max_messages": 200_000,
        "soak_peers": 10000,  # the best uvicorn worker, on a fresh server, holds these for soak_hold
        "soak_hold": 60,
        "soak_open_seconds": 45,
        "deadline": 800,
        "drain_seconds": 5,
        "settle_seconds": 20,
        "setups": None,
        "daphne": True,
        "first_pairs": 100,  # new pairs whose first frame crosses workers
        "storm_peers": 5000,  # held on the worker that is killed (issue 8)
        "storm_timeout": 60,
        "burst_frames": 5000,  # one socket's burst at an offline id (issue 8)
        "burst_opens": 300,  # sockets opened beside it
        "unfinished_sockets": 40,  # sockets holding an unfinished message (issue 12)
    },
    # About a minute: the same phases, smaller.
    "quick": {
        "idle_peers": 200,
        "idle_hold": 3,
        "open_seconds": 4,
        "pairs": 10,
        "paced_seconds": 1,
        "full_seconds": 1,
        "full_max_messages": 20_000,
        "soak_peers": 0,
        "soak_hold": 0,
        "soak_open_seconds": 0,
        "deadline": 100,
        "drain_seconds": 1,
        "settle_seconds": 2,
        # Only the reference, the first uvicorn and its cluster.
        "setups": 1,
        "daphne": False,
        "first_pairs": 20,
        "storm_peers": 500,
        "storm_timeout": 30,
        "burst_frames": 5000,
        "burst_opens": 100,
        "unfinished_sockets": 10,
    },
}


def python():
    venv = ROOT / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def free_port():
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


# /proc readings.


def cpu_ticks(pid):
    """utime + stime of a process (all its threads), in clock ticks."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # fields 14 and 15 of stat(5)


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class Meter:
    """CPU and RSS of a set of processes, read from /proc."""

    def __init__(self, pids):
        self.pids = list(pids)

    def cpu_us(self):
        return sum(cpu_ticks(pid) for pid in self.pids) * 1_000_000 / CLK_TCK

    def rss_kb(self):
        return sum(rss_kb(pid) for pid in self.pids)


# Servers.


class Process:
    """A child process in its own session, stopped with SIGTERM then SIGKILL."""

    def __init__(self, name, command, env=None, cwd=ROOT, log_dir=None):
        self.name = name
        self.log_path = Path(log_dir) / f"{name}.log"
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            command, cwd=cwd, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )

    @property
    def pid(self):
        return self.proc.pid

    def alive(self):
        return self.proc.poll() is None

    def tail(self, lines=30):
        self.log.flush()
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(8)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)  # the session we created for it
                self.proc.wait(5)
        self.log.close()


def wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise RuntimeError(f"timed out after {timeout}s waiting for {what}")


def http_ok(port):
    try:
        with urllib.request.urlopen(f"http://{HOST}:{port}{BASE_PATH}/", timeout=1) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def redis_ok(port):
    try:
        with socket.create_connection((HOST, port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class Setup:
    """One server configuration under test: its processes and the bases peers connect to."""

    def __init__(self, name, work, kind, server=None, ws=None, workers=1, project=ROOT, database_url=None, env=None):
        self.name = name
        self.database_url = database_url  # else a copy of the migrated SQLite template
        self.env = env or {}  # more settings for our workers
        self.project = project
        self.work = work
        self.kind = kind  # "reference" or "ours"
        self.server = server
        self.ws = ws
        self.workers = workers
        self.processes = []
        self.worker_processes = []
        self.bases = []

    def start(self, template_db):
        try:
            if self.kind == "reference":
                port = free_port()
                p = Process(self.name, ["node", str(BENCH / "reference_server.js"), str(port), HOST], log_dir=self.work)
                self.processes.append(p)
                self._wait(p, port)
                self.bases = [f"ws://{HOST}:{port}"]
                return
            database_url = self.database_url
            if database_url is None:
                db = Path(self.work) / f"{self.name}.sqlite3"
                shutil.copy(template_db, db)
                database_url = f"sqlite:///{db}"
            env = {**os.environ, **OUR_ENV, **self.env, "DATABASE_URL": database_url, "PYTHONUNBUFFERED": "1"}
            env.pop("REDIS_URL", None)
            if self.workers > 1:
                rport = free_port()
                r = Process(
                    f"{self.name}-redis",
                    ["redis-server", "--port", str(rport), "--bind", HOST, "--save", "", "--appendonly", "no"],
                    log_dir=self.work,
                )
                self.processes.append(r)
                wait_for(lambda: redis_ok(rport) or not r.alive(), 10, "redis-server")
                if not r.alive():
                    raise RuntimeError(f"redis-server exited:\n{r.tail()}")
                env["REDIS_URL"] = f"redis://{HOST}:{rport}/0"
            for i in range(self.workers):
                port = free_port()
                p = Process(f"{self.name}-w{i}", self._command(port), env=env, cwd=self.project, log_dir=self.work)
                self.processes.append(p)
                self.worker_processes.append(p)
                self._wait(p, port)
                self.bases.append(f"ws://{HOST}:{port}")
        except BaseException:
            self.stop()
            raise

    def _command(self, port):
        # The servers as deploy/worker-entrypoint.sh runs them: adapted by
        # signaling/servers/ (a revision from before it adapted them on import).
        adapted = (Path(self.project) / "signaling" / "servers" / "uvicorn.py").exists()
        if self.server == "daphne":
            launcher = "signaling.servers.daphne" if adapted else "daphne"
            return [python(), "-m", launcher, "-b", HOST, "-p", str(port), "p2psite.asgi:application"]
        # "<impl>-nodeflate" runs <impl> with permessage-deflate refused.
        ws, nodeflate = (self.ws[: -len("-nodeflate")], True) if self.ws.endswith("-nodeflate") else (self.ws, False)
        http = "h11"
        if adapted:
            http = "signaling.servers.uvicorn:HTTPProtocol"
            if ws == "websockets-sansio":
                ws = "signaling.servers.uvicorn:WebSocketProtocol"
        command = [
            python(), "-m", "uvicorn", "p2psite.asgi:application", "--host", HOST, "--port", str(port),
            "--http", http, "--ws", ws, "--lifespan", "auto", "--log-level", "warning", "--no-access-log",
            # The frame cap, enforced before buffering: the other implementations'
            # (and older revisions'); signaling.servers.uvicorn takes the app's.
            "--ws-max-size", str(MAX_FRAME_BYTES),
        ]
        if nodeflate:
            command += ["--ws-per-message-deflate", "false"]
        if adapted:
            # As deploy/worker-entrypoint.sh: the app decides whose X-Forwarded-For
            # to believe. (uvicorn's own middleware would also keep a frame and the
            # scope of every socket for its life: 1.9 KB per idle peer.)
            command.append("--no-proxy-headers")
            command += ["--ws-ping-interval", "0"]  # the hub's liveness sweep instead (deploy/worker-entrypoint.sh)
        return command

    def _wait(self, process, port):
        wait_for(lambda: http_ok(port) or not process.alive(), 40, f"{process.name} on port {port}")
        if not process.alive():
            raise RuntimeError(f"{process.name} exited:\n{process.tail()}")

    def pids(self):
        return [p.pid for p in self.processes]

    def check_alive(self):
        dead = [p for p in self.processes if not p.alive() and not getattr(p, "killed", False)]
        if dead:
            raise RuntimeError(f"{dead[0].name} died:\n{dead[0].tail()}")

    def stop(self):
        for p in reversed(self.processes):
            with contextlib.suppress(Exception):
                p.stop()


# uvicorn's WebSocket implementations, the first one also for the cluster.
# "-nodeflate" refuses permessage-deflate (browsers offer it; uvicorn accepts it
# by default, the reference server and daphne do not). The deprecated legacy
# "websockets" implementation runs last, if time allows.
DEFAULT_WS = ["websockets-sansio-nodeflate", "websockets-sansio", "wsproto", "websockets"]
OPTIONAL = {"uvicorn-websockets", "2xdaphne+redis"}

MAX_FRAME_BYTES = 262144  # PEERJS_MAX_FRAME_BYTES's default

OUR_ENV = {
    "DJANGO_SECRET_KEY": "bench-only-secret-key-8c1f4e7a2d9b6053f1e8a7c4d2b9e6f0",
    "DJANGO_DEBUG": "0",
    "PEERJS_FLOOD_LIMIT": "0",
    "PEERJS_CONCURRENT_LIMIT": "100000",
    # Every load-generator socket comes from 127.0.0.1: no per-address caps.
    "PEERJS_MAX_SOCKETS_PER_ADDRESS": "0",
    "PEERJS_MAX_HTTP_CONNECTIONS_PER_ADDRESS": "0",
    "PEERJS_RATE_LIMIT_OPENS": "0",
    "PEERJS_RATE_LIMIT_IDS": "0",
    "DJANGO_LOG_LEVEL": "WARNING",
}


# Load-generator processes.


class Clients:
    """Several ``loadgen.py serve`` processes driven in lock step."""

    def __init__(self, count, tag, compression=True, sources=None):
        self.procs = []
        for i in range(count):
            command = [python(), str(BENCH / "loadgen.py"), "serve", "--prefix", f"{tag}c{i}"]
            if not compression:
                command.append("--no-compression")
            if sources:
                command += ["--source", sources[i]]
            self.procs.append(
                subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=BENCH)
            )

    def pids(self):
        return [p.pid for p in self.procs]

    def run(self, commands, timeout):
        """Send command i to process i, wait for every answer (bounded)."""
        self.send(commands)
        return self.collect(timeout)

    def send(self, commands):
        for proc, command in zip(self.procs, commands):
            proc.stdin.write(json.dumps(command) + "\n")
            proc.stdin.flush()

    def collect(self, timeout):
        """The answers to what ``send`` sent, in order (bounded)."""
        answers = []
        deadline = time.monotonic() + timeout
        for proc in self.procs:
            answers.append(self._read(proc, deadline))
        errors = [a["error"] for a in answers if "error" in a]
        if errors:
            raise RuntimeError(f"load generator: {errors[0]}")
        return answers

    def _read(self, proc, deadline):
        import selectors

        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RuntimeError("load generator did not answer in time")
                if sel.select(left):
                    line = proc.stdout.readline()
                    if not line:
                        raise RuntimeError(f"load generator exited ({proc.poll()})")
                    return json.loads(line)

    def all(self, command, timeout):
        return self.run([command] * len(self.procs), timeout)

    def stop(self):
        for proc in self.procs:
            with contextlib.suppress(Exception):
                proc.stdin.write('{"op":"quit"}\n')
                proc.stdin.close()
        for proc in self.procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def split(total, parts):
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def client_load(answers, key="client_cpu_seconds", wall="client_wall_seconds"):
    """The busiest load-generator process's CPU share of the phase."""
    shares = [a[key] / a[wall] for a in answers if a.get(wall)]
    return max(shares) if shares else 0.0


def settle(meter, quiet=0.15, timeout=20.0):
    """Wait (bounded) until the servers stop working off a backlog (under ``quiet`` of a core)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        cpu0 = meter.cpu_us()
        time.sleep(0.5)
        if (meter.cpu_us() - cpu0) / 0.5e6 < quiet:
            return True
    return False


def merge_counts(answers, key):
    total = {}
    for a in answers:
        for k, v in a.get(key, {}).items():
            total[k] = total.get(k, 0) + v
    return total


def bench_setup(setup, profile, clients_count, soak=False):
    """Run every phase against one started setup; returns its figures."""
    p = profile
    meter = Meter(setup.pids())
    result = {"name": setup.name, "workers": setup.workers, "phases": {}}
    tag = "".join(ch for ch in setup.name if ch.isalnum())[:12] + str(int(time.time()) % 100000)
    clients = Clients(clients_count, tag=tag)
    first_only = lambda command: [command] + [{"op": "ping"}] * (clients_count - 1)  # noqa: E731
    try:
        # Warm up: the first sockets load code and start the worker's services.
        clients.run(first_only({"op": "open_pairs", "bases": setup.bases, "pairs": 2}), 60)
        clients.run(first_only({"op": "relay", "phase": 0, "mode": "full", "seconds": 1, "max_messages": 200, "drain": 1}), 30)
        clients.run(first_only({"op": "close_pairs"}), 30)
        settle(meter, timeout=min(5, p["settle_seconds"]))
        setup.check_alive()

        # 1. Open the idle peers (the soak opens more, holds them longer, and stops there).
        idle, hold, open_seconds = p["idle_peers"], p["idle_hold"], p["open_seconds"]
        if soak:
            idle, hold, open_seconds = p["soak_peers"], p["soak_hold"], p["soak_open_seconds"]
        result["soak"] = soak
        rss0, cpu0, t0 = meter.rss_kb(), meter.cpu_us(), time.monotonic()
        answers = clients.run(
            [
                {"op": "open_idle", "bases": setup.bases, "count": n, "concurrency": 50, "seconds": open_seconds}
                for n in split(idle, clients_count)
            ],
            timeout=open_seconds + 90,
        )
        wall = time.monotonic() - t0
        cpu = meter.cpu_us() - cpu0
        opened = sum(a["opened"] for a in answers)
        latency = loadgen.merge_histograms(a["open_latency_us"] for a in answers)
        result["phases"]["open"] = {
            "requested": idle,
            "opened": opened,
            "failures": merge_counts(answers, "failures"),
            "wall_seconds": wall,
            "opens_per_second": opened / wall if wall else None,
            "server_cpu_us": cpu,
            "cpu_us_per_open": cpu / opened if opened else None,
            "open_latency_us": loadgen.percentiles(latency),
            "client_cpu_share": client_load(answers),
        }
        # 2. Hold them, heartbeating; memory after the hold.
        cpu0 = meter.cpu_us()
        answers = clients.all({"op": "hold", "seconds": hold}, timeout=hold + 60)
        rss1 = meter.rss_kb()
        hold_cpu = meter.cpu_us() - cpu0
        setup.check_alive()
        result["phases"]["idle"] = {
            "requested": idle,
            "peers": opened,
            "hold_seconds": hold,
            "dropped": sum(a["dropped"] for a in answers),
            "alive": sum(a["alive"] for a in answers),
            "close_codes": merge_counts(answers, "close_codes"),
            "rss_before_kb": rss0,
            "rss_after_kb": rss1,
            "kb_per_idle_peer": (rss1 - rss0) / opened if opened else None,
            "server_cpu_share_holding": hold_cpu / 1e6 / hold,
        }
        if soak:
            return result  # the server is stopped with its peers: thousands of closes would only cost time
        cpu0, t0 = meter.cpu_us(), time.monotonic()
        clients.all({"op": "close_idle"}, timeout=120)
        settled = settle(meter, timeout=p["settle_seconds"])
        close_cpu = meter.cpu_us() - cpu0
        result["phases"]["close"] = {
            "wall_seconds": time.monotonic() - t0,
            "settled": settled,  # False: the server was still working off the closes when relaying began
            "cpu_us_per_close": close_cpu / opened if opened else None,
        }
        setup.check_alive()

        # 3. Relay between pairs; with two workers each pair's peers are on different ones.
        pairs = split(p["pairs"], clients_count)
        clients.run([{"op": "open_pairs", "bases": setup.bases, "pairs": n} for n in pairs], timeout=90)
        settle(meter, timeout=p["settle_seconds"])
        phases = [
            ("paced_1000", {"mode": "paced", "rate": 1000, "seconds": p["paced_seconds"]}),
            ("paced_2000", {"mode": "paced", "rate": 2000, "seconds": p["paced_seconds"]}),
            ("full", {"mode": "full", "seconds": p["full_seconds"], "window": 16}),
        ]
        relay_cpu0 = meter.cpu_us()
        notes_later = result["relay_notes"] = []
        for number, (name, spec) in enumerate(phases, start=1):
            commands = []
            for n in pairs:
                share = n / p["pairs"]
                command = {"op": "relay", "phase": number, "drain": p["drain_seconds"], **spec}
                if spec["mode"] == "paced":
                    command["rate"] = spec["rate"] * share
                else:
                    command["max_messages"] = int(p["full_max_messages"] * share)
                commands.append(command)
            cpu0, t0 = meter.cpu_us(), time.monotonic()
            answers = clients.run(commands, timeout=spec["seconds"] + p["drain_seconds"] + 60)
            wall = time.monotonic() - t0
            cpu = meter.cpu_us() - cpu0
            setup.check_alive()
            received = sum(a["received"] for a in answers)
            send_seconds = max(a["send_seconds"] for a in answers)
            if all(a.get("no_pairs") for a in answers):
                notes_later.append(f"{name}: no open pair left (the server had closed them)")
            share = client_load(answers, wall="wall_seconds")
            client_cpu = sum(a.get("client_cpu_seconds", 0.0) for a in answers)
            result["phases"][name] = {
                "target_rate": spec.get("rate"),
                "sent": sum(a["sent"] for a in answers),
                "received": received,
                "lost": sum(a["lost"] for a in answers),
                "duplicated": sum(a["duplicated"] for a in answers),
                "reordered": sum(a["reordered"] for a in answers),
                "messages_per_second": received / wall if wall and received else None,
                "send_seconds": send_seconds,
                "wall_seconds": wall,
                "server_cpu_us": cpu,
                # None when the server fell behind: its CPU then went to an earlier backlog.
                "cpu_us_per_message": cpu / received if received and received >= 0.9 * sum(a["sent"] for a in answers) else None,
                "server_cpu_share": cpu / 1e6 / wall,
                "latency_us": loadgen.percentiles(loadgen.merge_histograms(a["latency_us"] for a in answers)),
                "max_schedule_lag_ms": max(a["max_schedule_lag_ms"] for a in answers),
                "client_cpu_share": share,
                "client_bound": share > CLIENT_BOUND,
                "client_cpu_us_per_message": client_cpu * 1e6 / received if received else None,
                # Servers and load generators together, of all the machine's cores.
                "machine_share": (cpu / 1e6 + client_cpu) / wall / (os.cpu_count() or 1),
            }
            settle(meter, timeout=p["settle_seconds"] / 2)
        answers = clients.all({"op": "close_pairs", "wait": p["drain_seconds"] * 2}, timeout=90)
        relay_cpu = meter.cpu_us() - relay_cpu0
        result["phases"]["relay_dropped"] = sum(a["dropped"] for a in answers)
        result["phases"]["relay_close_codes"] = merge_counts(answers, "close_codes")
        delivered = 0
        for number, (name, _) in enumerate(phases, start=1):
            phase = result["phases"][name]
            never = sum(a["never_delivered"].get(str(number), 0) for a in answers)
            phase["late"] = phase["lost"] - never  # arrived, but after the phase's drain time
            phase["lost"] = never
            delivered += phase["sent"] - never
        # Over all relay phases, up to the last late message: the figure that still
        # means something when a server falls behind and works off a backlog.
        result["phases"]["relay_overall"] = {
            "delivered": delivered,
            "server_cpu_us": relay_cpu,
            "cpu_us_per_message": relay_cpu / delivered if delivered else None,
        }
        # 4. The first frame of new pairs: a receiver opens (on the second
        # worker of a cluster) and a sender at once sends it an OFFER.
        if setup.kind == "ours" or setup.name == "reference":
            (answer, *_rest) = clients.run(
                first_only({"op": "first_frames", "bases": setup.bases, "count": p["first_pairs"]}), timeout=120
            )
            result["phases"]["first_frame"] = {
                "pairs": answer["pairs"],
                "missed": answer["missed"],
                "latency_us": loadgen.percentiles(loadgen.merge_histograms([answer["latency_us"]])),
            }
        stats = clients.all({"op": "stats"}, timeout=30)
        result["unexpected_frames"] = merge_counts(stats, "unexpected")
        result["extensions"] = merge_counts(stats, "extensions")
        return result
    finally:
        clients.stop()


def bench_storm(setup, profile, clients_count):
    """Issue 8: SIGKILL a worker holding many peers; they reconnect at once to the survivors.

    Three workers: the first holds the idle peers, pairs on the other two relay
    at 1 000 msgs/s meanwhile. Figures: seconds from the first dropped socket
    to the last peer open again, peers refused, and the survivors' own relay
    latency during the storm.
    """
    p = profile
    assert clients_count >= 2, "the storm needs two load-generator processes"
    clients = Clients(2, tag="storm" + str(int(time.time()) % 100000))
    doomed, survivors = setup.bases[0], setup.bases[1:]
    try:
        (held, _) = clients.run(
            [
                {"op": "open_idle", "bases": [doomed], "count": p["storm_peers"], "concurrency": 50,
                 "seconds": p["storm_timeout"]},
                {"op": "open_pairs", "bases": survivors, "pairs": 10},
            ],
            timeout=p["storm_timeout"] + 90,
        )
        setup.check_alive()
        relay_seconds = 4
        clients.send(
            [
                {"op": "storm", "bases": survivors, "timeout": p["storm_timeout"]},
                {"op": "relay", "phase": 1, "mode": "paced", "rate": 1000, "seconds": relay_seconds, "drain": 5},
            ]
        )
        time.sleep(1)  # the relay is under way
        doomed_worker = setup.worker_processes[0]
        doomed_worker.killed = True
        doomed_worker.proc.kill()  # SIGKILL, as a crash
        storm, relay = clients.collect(timeout=p["storm_timeout"] + relay_seconds + 60)
        return {
            "name": setup.name,
            "workers": setup.workers,
            "storm": {
                "held": held["opened"],
                "dropped": storm["dropped"],
                "reopened": storm["reopened"],
                "refused": storm["refused"],
                "still_closed": storm["still_closed"],
                "seconds": storm["seconds"],
                "reconnect_latency_us": loadgen.percentiles(loadgen.merge_histograms([storm["reconnect_latency_us"]])),
                "survivor_relay": {
                    "sent": relay["sent"],
                    "received": relay["received"],
                    "lost": relay["lost"],
                    "latency_us": loadgen.percentiles(loadgen.merge_histograms([relay["latency_us"]])),
                },
            },
        }
    finally:
        clients.stop()


def bench_burst(setup, profile):
    """Issue 8: open latency on a worker while one of its sockets bursts frames at an offline id."""
    p = profile
    clients = Clients(2, tag="burst" + str(int(time.time()) % 100000))
    base = setup.bases[0]
    opens = {"op": "open_idle", "bases": [base], "count": p["burst_opens"], "concurrency": 10, "seconds": 60}
    try:
        _, quiet = clients.run([{"op": "ping"}, opens], timeout=120)
        clients.run([{"op": "ping"}, {"op": "close_idle"}], timeout=60)
        burst, busy = clients.run([{"op": "burst", "base": base, "frames": p["burst_frames"]}, opens], timeout=180)
        clients.run([{"op": "ping"}, {"op": "close_idle"}], timeout=60)
        setup.check_alive()
        latency = lambda answer: loadgen.percentiles(loadgen.merge_histograms([answer["open_latency_us"]]))  # noqa: E731
        return {
            "name": setup.name,
            "burst": {
                "frames": burst["sent"],
                "burst_seconds": burst["send_seconds"],
                "opened_quiet": quiet["opened"],
                "opened_during_burst": busy["opened"],
                "open_latency_quiet_us": latency(quiet),
                "open_latency_during_burst_us": latency(busy),
            },
        }
    finally:
        clients.stop()


def bench_unfinished(setup, profile):
    """Issue 12: what a worker holds for sockets that start a message and never finish it."""
    p = profile
    clients = Clients(1, tag="unfinished" + str(int(time.time()) % 100000))
    meter = Meter(setup.pids())
    base = setup.bases[0]
    count = p["unfinished_sockets"]
    try:
        rss0 = meter.rss_kb()
        (at_cap,) = clients.run([{"op": "unfinished", "base": base, "count": count, "size": MAX_FRAME_BYTES}], timeout=120)
        rss1 = meter.rss_kb()
        clients.run([{"op": "close_unfinished"}], timeout=60)
        (over,) = clients.run([{"op": "unfinished", "base": base, "count": count, "size": 15 * 1024 * 1024}], timeout=300)
        rss2 = meter.rss_kb()
        clients.run([{"op": "close_unfinished"}], timeout=60)
        setup.check_alive()
        return {
            "name": setup.name,
            "unfinished": {
                "sockets": count,
                "held_at_cap": at_cap["opened"] - at_cap["closed_by_server"],
                "kb_per_socket_at_cap": (rss1 - rss0) / count,
                "over_cap_closed_by_server": over["closed_by_server"],
                "kb_per_socket_over_cap": (rss2 - rss1) / count,
            },
        }
    finally:
        clients.stop()


# Reporting.


def _ms(us):
    return None if us is None else us / 1000


def _phase(name, *keys):
    def get(result):
        v = result["phases"][name]
        for key in keys:
            v = v[key]
        return v

    return get


def _relay_sum(key):
    return lambda r: sum(r["phases"][name][key] for name in RELAY_PHASES)


def _latency(name, p):
    return lambda r: _ms(r["phases"][name]["latency_us"][p])


RELAY_PHASES = ("paced_1000", "paced_2000", "full")
COUNTS = ("lost", "duplicated", "reordered")  # must be zero; "late" is reported beside them
# key -> (label, getter, format); the table's rows in order.
ROWS = {
    "open_us": ("open: server CPU µs/socket", _phase("open", "cpu_us_per_open"), "{:.0f}"),
    "open_rate": ("open: sockets/s", _phase("open", "opens_per_second"), "{:.0f}"),
    "open_p99": ("open: latency p99 ms", lambda r: _ms(r["phases"]["open"]["open_latency_us"]["p99"]), "{:.1f}"),
    "close_us": ("close: server CPU µs/socket", _phase("close", "cpu_us_per_close"), "{:.0f}"),
    "idle_kb": ("idle: KB RSS/peer", _phase("idle", "kb_per_idle_peer"), "{:.1f}"),
    "idle_peers": ("idle: peers held", _phase("idle", "peers"), "{:.0f}"),
    "idle_dropped": ("idle: dropped", _phase("idle", "dropped"), "{:.0f}"),
    "relay_us": ("relay full: CPU µs/msg", _phase("full", "cpu_us_per_message"), "{:.1f}"),
    "relay_rate": ("relay full: msgs/s", _phase("full", "messages_per_second"), "{:.0f}"),
    "relay_client_us": ("relay full: load generators' CPU µs/msg", _phase("full", "client_cpu_us_per_message"), "{:.1f}"),
    "relay_machine": ("relay full: share of the machine's cores", _phase("full", "machine_share"), "{:.2f}"),
    "full_p50": ("relay full: p50 ms", _latency("full", "p50"), "{:.2f}"),
    "full_p99": ("relay full: p99 ms", _latency("full", "p99"), "{:.2f}"),
    "relay_all_us": ("relay all phases: CPU µs/msg", _phase("relay_overall", "cpu_us_per_message"), "{:.1f}"),
    "relay2000_us": ("relay 2000/s: CPU µs/msg", _phase("paced_2000", "cpu_us_per_message"), "{:.1f}"),
    "relay1000_us": ("relay 1000/s: CPU µs/msg", _phase("paced_1000", "cpu_us_per_message"), "{:.1f}"),
    "p1000_p50": ("relay 1000/s: p50 ms", _latency("paced_1000", "p50"), "{:.2f}"),
    "p1000_p95": ("relay 1000/s: p95 ms", _latency("paced_1000", "p95"), "{:.2f}"),
    "p1000_p99": ("relay 1000/s: p99 ms", _latency("paced_1000", "p99"), "{:.2f}"),
    "p2000_p50": ("relay 2000/s: p50 ms", _latency("paced_2000", "p50"), "{:.2f}"),
    "p2000_p95": ("relay 2000/s: p95 ms", _latency("paced_2000", "p95"), "{:.2f}"),
    "p2000_p99": ("relay 2000/s: p99 ms", _latency("paced_2000", "p99"), "{:.2f}"),
    "first_p50": ("first frame of a new pair: p50 ms", _latency("first_frame", "p50"), "{:.2f}"),
    "first_p99": ("first frame of a new pair: p99 ms", _latency("first_frame", "p99"), "{:.2f}"),
    "lost": ("lost (never delivered)", _relay_sum("lost"), "{:.0f}"),
    "late": ("late (> drain time)", _relay_sum("late"), "{:.0f}"),
    "duplicated": ("duplicated", _relay_sum("duplicated"), "{:.0f}"),
    "reordered": ("reordered", _relay_sum("reordered"), "{:.0f}"),
}


def value(key, result):
    if result is None or "error" in result:
        return None
    if "phases" not in result and "figures" in result:
        return result["figures"].get(key)  # a median of several runs
    try:
        return ROWS[key][1](result)
    except (KeyError, TypeError):
        return None


def figures(result):
    """The table's figures of one setup, by key (for the JSON and for medians)."""
    return {key: value(key, result) for key in ROWS}


def table(results):
    """The figures of every setup, with each one's ratio to the reference."""
    names = [r["name"] for r in results]
    reference = next((r for r in results if r["name"] == "reference" and "error" not in r), None)
    width = max(len(label) for label, _, _ in ROWS.values()) + 2
    col = max(16, max(len(n) for n in names) + 2)
    lines = ["".ljust(width) + "".join(n.rjust(col) for n in names)]
    for key, (label, _, fmt) in ROWS.items():
        ref = value(key, reference)
        cells = []
        for r in results:
            v = value(key, r)
            if v is None:
                cells.append("-".rjust(col))
                continue
            text = fmt.format(v)
            if r is not reference and ref and key not in COUNTS + ("late", "idle_peers"):
                text += f" ({v / ref:.1f}x)"
            cells.append(text.rjust(col))
        lines.append(label.ljust(width) + "".join(cells))
    return "\n".join(lines)


def notes_for(results):
    notes = []
    for r in results:
        if "error" in r:
            notes.append(f"{r['name']}: FAILED: {r['error'].splitlines()[0]}")
            continue
        for name in RELAY_PHASES + ("open",):
            phase = r["phases"].get(name, {})
            if phase.get("client_cpu_share", 0) > CLIENT_BOUND:
                notes.append(
                    f"{r['name']} {name}: the load generator was the bottleneck (a client process at "
                    f"{phase['client_cpu_share']:.0%} of a core): the server was not saturated"
                )
        full = r["phases"].get("full", {})
        if full.get("machine_share", 0) > MACHINE_BOUND and full.get("cpu_us_per_message"):
            notes.append(
                f"{r['name']} full: servers and load generators used {full['machine_share']:.0%} of the "
                f"machine's {os.cpu_count()} cores: msgs/s compares their CPU per message together "
                f"({full['cpu_us_per_message']:.1f} + {full['client_cpu_us_per_message']:.1f} µs), not the servers' alone"
            )
        for name in ("paced_1000", "paced_2000"):
            phase = r["phases"].get(name, {})
            if phase.get("messages_per_second") and phase["messages_per_second"] < 0.95 * phase["target_rate"]:
                notes.append(f"{r['name']} {name}: only {phase['messages_per_second']:.0f} msgs/s delivered")
        opened = r["phases"].get("open", {})
        if opened.get("failures"):
            notes.append(f"{r['name']}: {opened['opened']} of {opened['requested']} opened; {opened['failures']}")
        if r["phases"].get("relay_dropped"):
            notes.append(
                f"{r['name']}: {r['phases']['relay_dropped']} relay peers closed by the server "
                f"(close codes {r['phases'].get('relay_close_codes')})"
            )
        for text in r.get("relay_notes", ()):
            notes.append(f"{r['name']} {text}")
        if r.get("unexpected_frames"):
            notes.append(f"{r['name']}: frames other than the relayed ones came back: {r['unexpected_frames']}")
        if r.get("extensions") and set(r["extensions"]) != {"none"}:
            notes.append(f"{r['name']}: negotiated {r['extensions']} (the load generator offers it, as browsers do)")
    return notes


def fault_lines(results):
    """The fault and abuse phases, in words."""
    lines = []
    for r in results:
        if "error" in r and any(tag in r["name"] for tag in ("storm", "burst", "unfinished")):
            lines.append(f"{r['name']}: FAILED: {r['error'].splitlines()[0]}")
        if "storm" in r:
            s = r["storm"]
            relay = s["survivor_relay"]
            seconds = "-" if s["seconds"] is None else f"{s['seconds']:.2f}"
            lines.append(
                f"reconnect storm ({r['name']}): a worker holding {s['held']} peers SIGKILLed; {s['reopened']} of "
                f"{s['dropped']} reconnected to the survivors in {seconds} s (reconnect p50 "
                f"{_ms(s['reconnect_latency_us'].get('p50')) or 0:.1f} ms, p99 {_ms(s['reconnect_latency_us'].get('p99')) or 0:.1f} ms), "
                f"refused {s['refused'] or 0}, not back {s['still_closed']}; survivors' own relay meanwhile: "
                f"{relay['received']}/{relay['sent']} delivered, p50 {_ms(relay['latency_us'].get('p50')) or 0:.2f} ms, "
                f"p99 {_ms(relay['latency_us'].get('p99')) or 0:.2f} ms"
            )
        if "burst" in r:
            b = r["burst"]
            quiet, busy = b["open_latency_quiet_us"], b["open_latency_during_burst_us"]
            lines.append(
                f"burst ({r['name']}): one socket sent {b['frames']} frames to an offline id in {b['burst_seconds']:.2f} s; "
                f"opens on that worker: p50 {_ms(quiet.get('p50')) or 0:.1f} / p99 {_ms(quiet.get('p99')) or 0:.1f} ms quiet, "
                f"p50 {_ms(busy.get('p50')) or 0:.1f} / p99 {_ms(busy.get('p99')) or 0:.1f} ms during the burst "
                f"({b['opened_during_burst']} of {b['opened_quiet']} opened)"
            )
        if "unfinished" in r:
            u = r["unfinished"]
            lines.append(
                f"unfinished messages ({r['name']}): {u['sockets']} sockets each holding a message at the cap "
                f"({MAX_FRAME_BYTES // 1024} KiB, all but one byte sent): {u['kb_per_socket_at_cap']:.0f} KB RSS per socket; "
                f"a 15 MB message is refused at its header: {u['over_cap_closed_by_server']} of {u['sockets']} closed "
                f"by the server, {u['kb_per_socket_over_cap']:.0f} KB RSS per socket"
            )
    return lines


def check_targets(results):
    """The issue's targets against the best uvicorn worker, the cluster and the soak."""
    lines = []
    ok = [r for r in results if "error" not in r]
    singles = [r for r in ok if r["name"].startswith("uvicorn")]
    clusters = [r for r in ok if r["name"].startswith("2x")]
    picks = []
    if singles:
        picks.append(("single", min(singles, key=lambda r: value("relay_us", r) or 1e9)))
    picks += [("cluster", r) for r in clusters]
    reference = next((r for r in ok if r["name"] == "reference"), None)
    for r in clusters:
        # Issue 11: a cluster signals at one worker's speed, against the reference in the same run.
        ref_rate, ref_us = value("relay_rate", reference), value("relay_us", reference)
        rate, us = value("relay_rate", r), value("relay_us", r)
        checks = [
            ("msgs/s vs reference (>= 0.5x)", rate / ref_rate if rate and ref_rate else None, 0.5, ">="),
            ("CPU µs/msg vs reference (<= 3x)", us / ref_us if us and ref_us else None, 3.0, "<="),
            ("p99 ms at 2000 msgs/s", value("p2000_p99", r), 10.0, "<="),
            ("first frame of a new pair p50 ms", value("first_p50", r), 2.0, "<="),
            ("lost+duplicated+reordered", sum(value(k, r) or 0 for k in COUNTS), 0, "<="),
        ]
        for label, v, limit, sense in checks:
            met = v is not None and (v >= limit if sense == ">=" else v <= limit)
            verdict = "no figure" if v is None else "met" if met else "MISSED"
            shown = "-" if v is None else f"{v:.2f}"
            lines.append(f"issue11  {r['name']:26} {label:34} {shown:>9} {sense} {limit:<5} {verdict}")
    for r in ok:
        storm = r.get("storm")
        if storm:
            p99 = _ms(storm["survivor_relay"]["latency_us"].get("p99"))
            refused = sum(storm["refused"].values()) + storm["still_closed"]
            for label, v, limit in (
                ("seconds until all reconnected", storm["seconds"], 10.0),
                ("peers refused or not back", refused, 0),
                ("survivors' relay p99 ms", p99, 50.0),
            ):
                verdict = "no figure" if v is None else "met" if v <= limit else "MISSED"
                shown = "-" if v is None else f"{v:.2f}"
                lines.append(f"issue8   {r['name']:26} {label:34} {shown:>9} <= {limit:<5} {verdict}")
    for kind, r in picks:
        t = TARGETS[kind]
        checks = [
            ("relay CPU µs/msg (full speed)", value("relay_us", r), t["relay_us"])
            if value("relay_us", r) is not None
            else ("relay CPU µs/msg (all phases)", value("relay_all_us", r), t["relay_us"]),
            ("open CPU µs/socket", value("open_us", r), t["open_us"]),
            ("KB per idle peer", value("idle_kb", r), t["idle_kb"]),
            ("p99 ms at 2000 msgs/s", value("p2000_p99", r), t["p99_2000_ms"]),
            ("lost+duplicated+reordered", sum(value(k, r) or 0 for k in COUNTS), 0),
        ]
        for label, v, limit in checks:
            if v is None:
                verdict = "no figure"
            elif v <= limit:
                verdict = "met"
            else:
                verdict = f"MISSED by {v - limit:.1f}" + (f" ({v / limit:.1f}x)" if limit else "")
            shown = "-" if v is None else f"{v:.1f}"
            lines.append(f"{kind:8} {r['name']:26} {label:30} {shown:>9} <= {limit:<5} {verdict}")
    for r in ok:
        if r.get("soak"):
            idle = r["phases"]["idle"]
            met = idle["dropped"] == 0 and idle["peers"] >= idle["requested"]
            lines.append(
                f"soak     {r['name']:26} {idle['peers']} of {idle['requested']} idle peers opened, held "
                f"{idle['hold_seconds']} s, {idle['dropped']} dropped -> {'met' if met else 'MISSED'}"
            )
    return lines


def summarize(paths):
    """Medians of the figures of several runs' JSON files, as one table (issue 5 asks for medians of 3)."""
    runs = [json.loads(Path(path).read_text()) for path in paths]
    names = []
    for run in runs:
        for r in run["results"]:
            if r["name"] not in names:
                names.append(r["name"])
    medians = []
    for name in names:
        merged = {"name": name, "figures": {}}
        for key in ROWS:
            values = [
                r["figures"][key]
                for run in runs
                for r in run["results"]
                if r["name"] == name and r.get("figures", {}).get(key) is not None
            ]
            merged["figures"][key] = statistics.median(values) if values else None
        merged["runs"] = sum(1 for run in runs for r in run["results"] if r["name"] == name and "error" not in r)
        if merged["runs"]:
            medians.append(merged)
    return medians


def setups(args, work, project):
    chosen = [Setup("reference", work, "reference", project=project)]
    if args.daphne:
        chosen.append(Setup("daphne", work, "ours", server="daphne", project=project))
    for ws in args.ws:
        chosen.append(Setup(f"uvicorn-{ws}", work, "ours", server="uvicorn", ws=ws, project=project))
    for server in args.cluster:
        ws = args.ws[0]
        name = "2xdaphne+redis" if server == "daphne" else f"2xuvicorn-{ws}+redis"
        chosen.append(Setup(name, work, "ours", server=server, ws=ws, workers=2, project=project))
    if args.only:
        chosen = [s for s in chosen if s.name in args.only or s.name == "reference"]
    return chosen


def migrate(work, project):
    db = Path(work) / "template.sqlite3"
    env = {**os.environ, **OUR_ENV, "DATABASE_URL": f"sqlite:///{db}"}
    subprocess.run([python(), "manage.py", "migrate", "--noinput", "-v0"], cwd=project, env=env, check=True, timeout=120)
    return db


def snapshot(rev, work):
    """The project's files at git revision ``rev``, unpacked beside the run (the work tree is untouched)."""
    target = Path(work) / "src"
    target.mkdir()
    archive = subprocess.run(["git", "archive", rev], cwd=ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return target


def raise_fd_limit():
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def main(argv=None):
    parser = argparse.ArgumentParser(description="The reference PeerServer and this project, side by side.")
    parser.add_argument("--quick", action="store_true", help="a run of about a minute (smaller counts)")
    parser.add_argument("--clients", type=int, default=2, help="load-generator processes (default 2)")
    parser.add_argument(
        "--ws", nargs="+", help="uvicorn WebSocket implementations to compare; the first one is used for the "
        "cluster; IMPL-nodeflate refuses permessage-deflate (default: %s; --quick: the first only)" % " ".join(DEFAULT_WS),
    )
    parser.add_argument(
        "--cluster", nargs="*", help="servers to run as two workers + Redis (default: uvicorn daphne; --quick: uvicorn)"
    )
    parser.add_argument("--no-soak", action="store_true", help="skip the 10 000-idle-peer, 60 s soak of the best uvicorn worker")
    parser.add_argument("--only", nargs="*", help="run only these setups (and the reference); 'faults' the burst, "
                        "unfinished and storm phases, 'storm' the storm alone")
    parser.add_argument("--storm-peers", type=int, help="peers the storm's doomed worker holds (default 5 000; issue 25: 15 000)")
    parser.add_argument("--storm-postgres", metavar="ADMIN_URL",
                        help="run the storm's workers on a fresh database of this PostgreSQL server, as production "
                        "does (e.g. postgres://postgres@127.0.0.1:5432/postgres), not on SQLite")
    parser.add_argument("--rev", help="benchmark the project at this git revision (default: the work tree as it is)")
    parser.add_argument("--out", default=str(BENCH / "results"), help="where the JSON goes")
    parser.add_argument("--summarize", nargs="+", metavar="JSON", help="print the medians of earlier runs' JSON files and exit")
    args = parser.parse_args(argv)
    if args.summarize:
        medians = summarize(args.summarize)
        print(f"medians of {len(args.summarize)} runs ({', '.join(str(m['runs']) for m in medians)} runs per setup)")
        print(table(medians))
        for line in check_targets(medians):
            print(f"  {line}")
        return 0
    profile = dict(PROFILES["quick" if args.quick else "full"])
    if args.ws is None:
        args.ws = DEFAULT_WS[: profile["setups"]]
    if args.cluster is None:
        args.cluster = ["uvicorn", "daphne"][: profile["setups"]]
    args.daphne = profile["daphne"] or "daphne" in (args.only or ())
    started = time.monotonic()
    deadline = started + profile["deadline"]
    fd_limit = raise_fd_limit()
    if args.storm_peers:
        profile["storm_peers"] = args.storm_peers
    for key in ("soak_peers", "idle_peers", "storm_peers"):
        profile[key] = min(profile[key], max(0, fd_limit - 500))  # the server holds them all in one process

    work = tempfile.mkdtemp(prefix="peerjs-bench-")
    results = []
    interrupted = []

    def on_signal(signum, frame):
        interrupted.append(signum)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "mode": "quick" if args.quick else "full",
        "profile": profile,
        "clients": args.clients,
        "cpus": os.cpu_count(),
        "machine": platform.platform(),
        "python": platform.python_version(),
        "node": subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip(),
        "loadavg_at_start": os.getloadavg(),
        "rev": args.rev or "work tree",
        "git": subprocess.run(["git", "rev-parse", "--short", args.rev or "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip(),
        "git_dirty": bool(not args.rev and subprocess.run(["git", "status", "--porcelain", "--", "signaling", "p2psite"], cwd=ROOT, capture_output=True, text=True).stdout.strip()),
    }
    print(
        f"bench: {info['mode']} run of {info['git']}{' + uncommitted changes' if info['git_dirty'] else ''}, "
        f"{args.clients} load-generator processes, load average {info['loadavg_at_start'][0]:.2f}",
        flush=True,
    )
    try:
        if not (BENCH / "node_modules" / "peer").is_dir():
            raise SystemExit("bench/node_modules is missing: run bench/run.sh (it runs npm ci)")
        project = snapshot(args.rev, work) if args.rev else ROOT
        template = migrate(work, project)
        chosen = setups(args, work, project)
        # The soak runs on the best single uvicorn worker once those are measured,
        # before the clusters; 2 daphne workers come last, if time allows.
        plan = [s for s in chosen if s.workers == 1] + ["soak"] + [s for s in chosen if s.workers > 1]
        plan.sort(key=lambda s: s != "soak" and s.name in OPTIONAL)
        # Faults and abuse, on the production worker (issues 8 and 12).
        if not args.only or "faults" in args.only or "storm" in args.only:
            ws = args.ws[0]
            faults = [
                ("burst", Setup(f"burst-uvicorn-{ws}", work, "ours", server="uvicorn", ws=ws, project=project)),
                ("unfinished", Setup(f"unfinished-uvicorn-{ws}", work, "ours", server="uvicorn", ws=ws, project=project)),
                ("storm", Setup(f"storm-3xuvicorn-{ws}+redis{'+postgres' if args.storm_postgres else ''}", work, "ours",
                                server="uvicorn", ws=ws, workers=3, project=project)),
            ]
            if args.only and "faults" not in args.only:
                faults = [f for f in faults if f[0] == "storm"]  # --only storm
            plan += faults
        for setup in plan:
            if isinstance(setup, tuple):
                kind, setup = setup
                if time.monotonic() > deadline - 30:
                    results.append({"name": setup.name, "error": "skipped: the run's time budget is spent"})
                    continue
                print(f"bench: {setup.name} ...", flush=True)
                t0 = time.monotonic()
                database = None
                try:
                    if kind == "storm" and args.storm_postgres:
                        import scale  # its Database and migrate: a database of the run's own, dropped after

                        database = scale.Database(args.storm_postgres)
                        scale.migrate(database.url)
                        setup.database_url = database.url
                    setup.start(template)
                    if kind == "storm":
                        results.append(bench_storm(setup, profile, args.clients))
                    elif kind == "burst":
                        results.append(bench_burst(setup, profile))
                    else:
                        results.append(bench_unfinished(setup, profile))
                except KeyboardInterrupt:
                    raise
                except Exception as exc:
                    results.append({"name": setup.name, "error": f"{type(exc).__name__}: {exc}"})
                    print(f"bench: {setup.name} FAILED: {exc}", flush=True)
                finally:
                    setup.stop()
                    if database is not None:
                        database.drop()
                print(f"bench: {setup.name} done in {time.monotonic() - t0:.0f}s", flush=True)
                continue
            if setup == "soak":
                if not profile["soak_peers"] or args.no_soak:
                    continue
                singles = [r for r in results if r["name"].startswith("uvicorn") and "error" not in r]
                if not singles:
                    continue
                best = min(singles, key=lambda r: value("relay_us", r) or 1e9)
                ws = best["name"].split("-", 1)[1]
                setup = Setup(f"soak-{best['name']}", work, "ours", server="uvicorn", ws=ws, project=project)
                soak = True
                needs = profile["soak_open_seconds"] + profile["soak_hold"] + 30
            else:
                soak = False
                needs = 5 if args.quick else 75 if setup.name in OPTIONAL else 50
            if time.monotonic() > deadline - needs:
                results.append({"name": setup.name, "error": "skipped: the run's time budget is spent"})
                print(f"bench: {setup.name} skipped: the time budget is spent", flush=True)
                continue
            print(f"bench: {setup.name} ...", flush=True)
            t0 = time.monotonic()
            try:
                setup.start(template)
                results.append(bench_setup(setup, profile, args.clients, soak=soak))
            except KeyboardInterrupt:
                raise
            except Exception as exc:
                results.append({"name": setup.name, "error": f"{type(exc).__name__}: {exc}", "soak": soak})
                print(f"bench: {setup.name} FAILED: {exc}", flush=True)
            finally:
                setup.stop()
            print(f"bench: {setup.name} done in {time.monotonic() - t0:.0f}s", flush=True)
    except KeyboardInterrupt:
        print("bench: interrupted; servers stopped", flush=True)
    finally:
        info["seconds"] = time.monotonic() - started
        info["loadavg_at_end"] = os.getloadavg()
        # Keep the servers' logs that say something went wrong (tracebacks, warnings).
        kept = Path(args.out) / f"logs-{datetime.datetime.now().strftime('%Y%m%d-%H%M%S')}"
        for log in sorted(Path(work).glob("*.log")):
            text = log.read_text(errors="replace")
            if "Traceback" in text or "ERROR" in text or "WARNING" in text:
                kept.mkdir(parents=True, exist_ok=True)
                shutil.copy(log, kept / log.name)
        if kept.exists():
            info["server_logs"] = str(kept)
            print(f"bench: server logs with errors or warnings kept in {kept}", flush=True)
        shutil.rmtree(work, ignore_errors=True)
    if not results:
        return 1
    compared = [r for r in results if not any(k in r for k in ("storm", "burst", "unfinished"))]
    text = table(compared)
    notes = notes_for(compared)
    faults = fault_lines(results)
    targets = check_targets(results)
    print()
    print(text)
    if faults:
        print()
        for line in faults:
            print(line)
    if notes:
        print()
        for note in notes:
            print(f"note: {note}")
    if targets:
        print()
        print("targets (issue 5 for one worker and the cluster's basics; issue 11 for the cluster against the reference; issue 8 for the storm):")
        for line in targets:
            print(f"  {line}")
    for r in compared:
        r["figures"] = figures(r)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = out / f"bench-{stamp}{'-quick' if args.quick else ''}.json"
    path.write_text(json.dumps({"info": info, "results": results, "table": text, "notes": notes, "targets": targets}, indent=2))
    shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    print(f"\nbench: {info['seconds']:.0f}s in all; JSON in {shown}")
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
