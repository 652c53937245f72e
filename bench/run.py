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

# The targets (issue 5, part 2), checked for the production worker and the cluster.
TARGETS = {
    "single": {"relay_us": 40, "open_us": 1500, "idle_kb": 40, "p99_2000_ms": 10},
    "cluster": {"relay_us": 150, "open_us": 1500, "idle_kb": 40, "p99_2000_ms": 50},
}

PROFILES = {
    # Whole run under 10 minutes on 2 cores.
    "full": {
        "idle_peers": 5000,
        "idle_hold": 12,
        "pairs": 50,
        "paced_seconds": 5,
        "full_seconds": 5,
        "full_max_messages": 200_000,
        "soak_peers": 10000,
        "soak_hold": 60,
        "deadline": 570,
    },
    # About a minute: the same phases, smaller.
    "quick": {
        "idle_peers": 500,
        "idle_hold": 6,
        "pairs": 20,
        "paced_seconds": 2,
        "full_seconds": 2,
        "full_max_messages": 40_000,
        "soak_peers": 0,
        "soak_hold": 0,
        "deadline": 150,
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

    def __init__(self, name, work, kind, server=None, ws=None, workers=1):
        self.name = name
        self.work = work
        self.kind = kind  # "reference" or "ours"
        self.server = server
        self.ws = ws
        self.workers = workers
        self.processes = []
        self.bases = []

    def label(self):
        return self.name

    def start(self, template_db):
        try:
            if self.kind == "reference":
                port = free_port()
                p = Process(self.name, ["node", str(BENCH / "reference_server.js"), str(port), HOST], log_dir=self.work)
                self.processes.append(p)
                self._wait(p, port)
                self.bases = [f"ws://{HOST}:{port}"]
                return
            db = Path(self.work) / f"{self.name}.sqlite3"
            shutil.copy(template_db, db)
            env = {**os.environ, **OUR_ENV, "DATABASE_URL": f"sqlite:///{db}", "PYTHONUNBUFFERED": "1"}
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
                p = Process(f"{self.name}-w{i}", self._command(port), env=env, log_dir=self.work)
                self.processes.append(p)
                self._wait(p, port)
                self.bases.append(f"ws://{HOST}:{port}")
        except BaseException:
            self.stop()
            raise

    def _command(self, port):
        if self.server == "daphne":
            return [python(), "-m", "daphne", "-b", HOST, "-p", str(port), "p2psite.asgi:application"]
        return [
            python(), "-m", "uvicorn", "p2psite.asgi:application", "--host", HOST, "--port", str(port),
            "--ws", self.ws, "--lifespan", "off", "--log-level", "warning", "--no-access-log",
        ]

    def _wait(self, process, port):
        wait_for(lambda: http_ok(port) or not process.alive(), 40, f"{process.name} on port {port}")
        if not process.alive():
            raise RuntimeError(f"{process.name} exited:\n{process.tail()}")

    def pids(self):
        return [p.pid for p in self.processes]

    def check_alive(self):
        dead = [p for p in self.processes if not p.alive()]
        if dead:
            raise RuntimeError(f"{dead[0].name} died:\n{dead[0].tail()}")

    def stop(self):
        for p in reversed(self.processes):
            with contextlib.suppress(Exception):
                p.stop()


OUR_ENV = {
    "DJANGO_SECRET_KEY": "bench",
    "DJANGO_DEBUG": "0",
    "PEERJS_FLOOD_LIMIT": "0",
    "PEERJS_CONCURRENT_LIMIT": "100000",
    "DJANGO_LOG_LEVEL": "WARNING",
}


# Load-generator processes.


class Clients:
    """Several ``loadgen.py serve`` processes driven in lock step."""

    def __init__(self, count, tag, compression=True):
        self.procs = []
        for i in range(count):
            command = [python(), str(BENCH / "loadgen.py"), "serve", "--prefix", f"{tag}c{i}"]
            if not compression:
                command.append("--no-compression")
            self.procs.append(
                subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=BENCH)
            )

    def pids(self):
        return [p.pid for p in self.procs]

    def run(self, commands, timeout):
        """Send command i to process i, wait for every answer (bounded)."""
        for proc, command in zip(self.procs, commands):
            proc.stdin.write(json.dumps(command) + "\n")
            proc.stdin.flush()
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


def bench_setup(setup, profile, clients_count, soak=False):
    """Run every phase against one started setup; returns its figures."""
    p = profile
    meter = Meter(setup.pids())
    result = {"name": setup.name, "pids": setup.pids(), "phases": {}}
    clients = Clients(clients_count, tag=f"{setup.name.replace('-', '').replace('+', '')[:10]}{int(time.time()) % 100000}")
    try:
        # Warm up: the first socket loads code and starts the worker's services.
        clients.run([{"op": "open_pairs", "bases": setup.bases, "pairs": 2}] + [{"op": "ping"}] * (clients_count - 1), 60)
        clients.run([{"op": "relay", "phase": 0, "mode": "full", "seconds": 2, "max_messages": 400}] + [{"op": "ping"}] * (clients_count - 1), 30)
        clients.run([{"op": "close_pairs"}] + [{"op": "ping"}] * (clients_count - 1), 30)
        time.sleep(1.0)
        setup.check_alive()

        # 1. Open the idle peers.
        idle = p["soak_peers"] if soak else p["idle_peers"]
        hold = p["soak_hold"] if soak else p["idle_hold"]
        rss0, cpu0, t0 = meter.rss_kb(), meter.cpu_us(), time.monotonic()
        answers = clients.run(
            [{"op": "open_idle", "bases": setup.bases, "count": n, "concurrency": 50} for n in split(idle, clients_count)],
            timeout=240,
        )
        wall = time.monotonic() - t0
        cpu = meter.cpu_us() - cpu0
        opened = sum(a["opened"] for a in answers)
        failures = {}
        for a in answers:
            for k, v in a["failures"].items():
                failures[k] = failures.get(k, 0) + v
        latency = loadgen.merge_histograms(a["open_latency_us"] for a in answers)
        result["phases"]["open"] = {
            "requested": idle,
            "opened": opened,
            "failures": failures,
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
        dropped = sum(a["dropped"] for a in answers)
        codes = {}
        for a in answers:
            for k, v in a["close_codes"].items():
                codes[k] = codes.get(k, 0) + v
        result["phases"]["idle"] = {
            "peers": opened,
            "hold_seconds": hold,
            "dropped": dropped,
            "alive": sum(a["alive"] for a in answers),
            "close_codes": codes,
            "rss_before_kb": rss0,
            "rss_after_kb": rss1,
            "kb_per_idle_peer": (rss1 - rss0) / opened if opened else None,
            "server_cpu_us_per_peer_second": hold_cpu / opened / hold if opened else None,
        }
        cpu0, t0 = meter.cpu_us(), time.monotonic()
        clients.all({"op": "close_idle"}, timeout=180)
        time.sleep(0.5)
        close_cpu = meter.cpu_us() - cpu0
        result["phases"]["close"] = {
            "wall_seconds": time.monotonic() - t0,
            "cpu_us_per_close": close_cpu / opened if opened else None,
        }
        time.sleep(1.0)  # let the server finish unregistering before measuring relays
        setup.check_alive()
        if soak:
            return result

        # 3. Relay between pairs, each pair's peers on different workers when there are two.
        pairs = split(p["pairs"], clients_count)
        clients.run([{"op": "open_pairs", "bases": setup.bases, "pairs": n} for n in pairs], timeout=60)
        phases = [
            ("paced_1000", {"mode": "paced", "rate": 1000, "seconds": p["paced_seconds"]}),
            ("paced_2000", {"mode": "paced", "rate": 2000, "seconds": p["paced_seconds"]}),
            ("full", {"mode": "full", "seconds": p["full_seconds"], "window": 16}),
        ]
        for number, (name, spec) in enumerate(phases, start=1):
            commands = []
            for n in pairs:
                share = n / p["pairs"]
                command = {"op": "relay", "phase": number, **spec}
                if spec["mode"] == "paced":
                    command["rate"] = spec["rate"] * share
                else:
                    command["max_messages"] = int(p["full_max_messages"] * share)
                commands.append(command)
            cpu0, t0 = meter.cpu_us(), time.monotonic()
            answers = clients.run(commands, timeout=spec["seconds"] + loadgen.DRAIN_TIMEOUT + 60)
            wall = time.monotonic() - t0
            cpu = meter.cpu_us() - cpu0
            setup.check_alive()
            received = sum(a["received"] for a in answers)
            send_seconds = max(a["send_seconds"] for a in answers)
            histogram = loadgen.merge_histograms(a["latency_us"] for a in answers)
            share = client_load(answers, wall="wall_seconds")
            result["phases"][name] = {
                "target_rate": spec.get("rate"),
                "sent": sum(a["sent"] for a in answers),
                "received": received,
                "lost": sum(a["lost"] for a in answers),
                "duplicated": sum(a["duplicated"] for a in answers),
                "reordered": sum(a["reordered"] for a in answers),
                "messages_per_second": received / send_seconds if send_seconds else None,
                "wall_seconds": wall,
                "server_cpu_us": cpu,
                "cpu_us_per_message": cpu / received if received else None,
                "server_cpu_share": cpu / 1e6 / wall,
                "latency_us": loadgen.percentiles(histogram),
                "max_schedule_lag_ms": max(a["max_schedule_lag_ms"] for a in answers),
                "client_cpu_share": share,
                "client_bound": share > CLIENT_BOUND,
            }
        answers = clients.all({"op": "close_pairs"}, timeout=60)
        result["phases"]["relay_dropped"] = sum(a["dropped"] for a in answers)
        stats = clients.all({"op": "stats"}, timeout=30)
        unexpected = {}
        for a in stats:
            for k, v in a["unexpected"].items():
                unexpected[k] = unexpected.get(k, 0) + v
        result["unexpected_frames"] = unexpected
        return result
    finally:
        clients.stop()


# Reporting.

ROWS = [
    # (label, getter, format, lower is better)
    ("open: server CPU µs/socket", lambda r: r["phases"]["open"]["cpu_us_per_open"], "{:.0f}"),
    ("open: sockets/s", lambda r: r["phases"]["open"]["opens_per_second"], "{:.0f}"),
    ("open: latency p99 ms", lambda r: _ms(r["phases"]["open"]["open_latency_us"]["p99"]), "{:.1f}"),
    ("close: server CPU µs/socket", lambda r: r["phases"]["close"]["cpu_us_per_close"], "{:.0f}"),
    ("idle: KB RSS/peer", lambda r: r["phases"]["idle"]["kb_per_idle_peer"], "{:.1f}"),
    ("idle: peers held", lambda r: r["phases"]["idle"]["peers"], "{:.0f}"),
    ("idle: dropped", lambda r: r["phases"]["idle"]["dropped"], "{:.0f}"),
    ("relay full: CPU µs/msg", lambda r: r["phases"]["full"]["cpu_us_per_message"], "{:.1f}"),
    ("relay full: msgs/s", lambda r: r["phases"]["full"]["messages_per_second"], "{:.0f}"),
    ("relay full: p50 ms", lambda r: _ms(r["phases"]["full"]["latency_us"]["p50"]), "{:.2f}"),
    ("relay full: p99 ms", lambda r: _ms(r["phases"]["full"]["latency_us"]["p99"]), "{:.2f}"),
    ("relay 2000/s: CPU µs/msg", lambda r: r["phases"]["paced_2000"]["cpu_us_per_message"], "{:.1f}"),
    ("relay 1000/s: p50 ms", lambda r: _ms(r["phases"]["paced_1000"]["latency_us"]["p50"]), "{:.2f}"),
    ("relay 1000/s: p95 ms", lambda r: _ms(r["phases"]["paced_1000"]["latency_us"]["p95"]), "{:.2f}"),
    ("relay 1000/s: p99 ms", lambda r: _ms(r["phases"]["paced_1000"]["latency_us"]["p99"]), "{:.2f}"),
    ("relay 2000/s: p50 ms", lambda r: _ms(r["phases"]["paced_2000"]["latency_us"]["p50"]), "{:.2f}"),
    ("relay 2000/s: p95 ms", lambda r: _ms(r["phases"]["paced_2000"]["latency_us"]["p95"]), "{:.2f}"),
    ("relay 2000/s: p99 ms", lambda r: _ms(r["phases"]["paced_2000"]["latency_us"]["p99"]), "{:.2f}"),
    ("lost", lambda r: _sum_relay(r, "lost"), "{:.0f}"),
    ("duplicated", lambda r: _sum_relay(r, "duplicated"), "{:.0f}"),
    ("reordered", lambda r: _sum_relay(r, "reordered"), "{:.0f}"),
]

RELAY_PHASES = ("paced_1000", "paced_2000", "full")


def _ms(us):
    return None if us is None else us / 1000


def _sum_relay(result, key):
    return sum(result["phases"][name][key] for name in RELAY_PHASES)


def value(getter, result):
    try:
        return getter(result)
    except (KeyError, TypeError):
        return None


def table(results):
    """The figures of every setup, with each one's ratio to the reference."""
    names = [r["name"] for r in results]
    reference = next((r for r in results if r["name"] == "reference" and "error" not in r), None)
    width = max(len(label) for label, _, _ in ROWS) + 2
    col = max(18, max(len(n) for n in names) + 2)
    lines = ["".ljust(width) + "".join(n.rjust(col) for n in names)]
    for label, getter, fmt in ROWS:
        cells = []
        ref = value(getter, reference) if reference else None
        for r in results:
            v = value(getter, r) if "error" not in r else None
            if v is None:
                cells.append("-".rjust(col))
                continue
            text = fmt.format(v)
            if r is not reference and ref and ref > 0 and label not in ("lost", "duplicated", "reordered"):
                text += f" ({v / ref:.1f}x)"
            cells.append(text.rjust(col))
        lines.append(label.ljust(width) + "".join(cells))
    notes = []
    for r in results:
        if "error" in r:
            notes.append(f"{r['name']}: FAILED: {r['error'].splitlines()[0]}")
            continue
        for name in RELAY_PHASES + ("open",):
            phase = r["phases"].get(name, {})
            if phase.get("client_cpu_share", 0) > CLIENT_BOUND:
                notes.append(
                    f"{r['name']} {name}: the load generator was the bottleneck "
                    f"(a client process at {phase['client_cpu_share']:.0%} CPU); the server was not saturated"
                )
        for name in ("paced_1000", "paced_2000"):
            phase = r["phases"].get(name, {})
            if phase.get("messages_per_second") and phase["messages_per_second"] < 0.95 * phase["target_rate"]:
                notes.append(f"{r['name']} {name}: only {phase['messages_per_second']:.0f} msgs/s reached")
        if r.get("unexpected_frames"):
            notes.append(f"{r['name']}: unexpected frames {r['unexpected_frames']}")
        if r["phases"].get("relay_dropped"):
            notes.append(f"{r['name']}: {r['phases']['relay_dropped']} relay peers dropped by the server")
        failures = r["phases"].get("open", {}).get("failures")
        if failures:
            notes.append(f"{r['name']}: failed opens {failures}")
    return "\n".join(lines), notes


def check_targets(results, soak):
    """The issue's targets against the best single worker and the cluster."""
    lines = []
    singles = [r for r in results if r["name"].startswith("uvicorn") and "error" not in r]
    clusters = [r for r in results if r["name"].startswith("2x") and "error" not in r]
    picks = []
    if singles:
        picks.append(("single", min(singles, key=lambda r: value(ROWS[7][1], r) or 1e9)))
    if clusters:
        picks.append(("cluster", min(clusters, key=lambda r: value(ROWS[7][1], r) or 1e9)))
    for kind, r in picks:
        t = TARGETS[kind]
        checks = [
            ("relay CPU µs/msg (full speed)", value(ROWS[7][1], r), t["relay_us"]),
            ("open CPU µs/socket", value(ROWS[0][1], r), t["open_us"]),
            ("KB per idle peer", value(ROWS[4][1], r), t["idle_kb"]),
            ("p99 ms at 2000 msgs/s", value(ROWS[17][1], r), t["p99_2000_ms"]),
            ("lost+duplicated+reordered", sum(value(ROWS[i][1], r) or 0 for i in (18, 19, 20)), 0),
        ]
        for label, v, limit in checks:
            if v is None:
                verdict = "no figure"
            else:
                verdict = "met" if v <= limit else f"MISSED by {v - limit:.1f} ({v / limit:.1f}x)" if limit else "MISSED"
            lines.append(f"{kind:8} {r['name']:22} {label:32} {'-' if v is None else f'{v:.1f}':>10} <= {limit:<6} {verdict}")
    if soak:
        if "error" in soak:
            lines.append(f"soak     {soak['name']:22} FAILED: {soak['error'].splitlines()[0]}")
        else:
            idle = soak["phases"]["idle"]
            ok = idle["dropped"] == 0 and idle["peers"] >= soak["requested"]
            lines.append(
                f"soak     {soak['name']:22} {idle['peers']} idle peers held {idle['hold_seconds']} s: "
                f"{idle['dropped']} dropped, {idle['kb_per_idle_peer']:.1f} KB/peer -> {'met' if ok else 'MISSED'}"
            )
    return lines


def setups(args, work):
    chosen = []
    add = chosen.append
    add(Setup("reference", work, "reference"))
    add(Setup("daphne", work, "ours", server="daphne"))
    for ws in args.ws:
        add(Setup(f"uvicorn-{ws}", work, "ours", server="uvicorn", ws=ws))
    for server in args.cluster:
        ws = args.ws[0]
        name = f"2x{server}+redis" if server == "daphne" else f"2xuvicorn-{ws}+redis"
        add(Setup(name, work, "ours", server=server, ws=ws, workers=2))
    if args.only:
        chosen = [s for s in chosen if s.name in args.only or s.name == "reference"]
    return chosen


def migrate(work):
    db = Path(work) / "template.sqlite3"
    env = {**os.environ, **OUR_ENV, "DATABASE_URL": f"sqlite:///{db}"}
    subprocess.run([python(), "manage.py", "migrate", "--noinput", "-v0"], cwd=ROOT, env=env, check=True, timeout=120)
    return db


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
        "--ws", nargs="+", default=["websockets", "websockets-sansio", "wsproto"],
        help="uvicorn WebSocket implementations to compare; the first is used for the cluster",
    )
    parser.add_argument("--cluster", nargs="*", default=["uvicorn", "daphne"], help="servers to run as two workers + Redis")
    parser.add_argument("--only", nargs="*", help="run only these setups (and the reference)")
    parser.add_argument("--no-soak", action="store_true", help="skip the 10 000-idle-peer soak of the best worker")
    parser.add_argument("--out", default=str(BENCH / "results"), help="where the JSON goes")
    args = parser.parse_args(argv)
    profile = dict(PROFILES["quick" if args.quick else "full"])
    started = time.monotonic()
    deadline = started + profile["deadline"]
    fd_limit = raise_fd_limit()
    if profile["soak_peers"] + 200 > fd_limit:
        profile["soak_peers"] = max(0, fd_limit - 1000)

    work = tempfile.mkdtemp(prefix="peerjs-bench-")
    results, soak = [], None
    stopping = []

    def on_signal(signum, frame):
        stopping.append(signum)
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
        "git": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip(),
    }
    print(f"bench: {info['mode']} run, {args.clients} load-generator processes, load average {info['loadavg_at_start'][0]:.2f}", flush=True)
    try:
        if not (BENCH / "node_modules" / "peer").is_dir():
            raise SystemExit("bench/node_modules is missing: run bench/run.sh (it runs npm ci)")
        template = migrate(work)
        for setup in setups(args, work):
            if time.monotonic() > deadline - 20:
                results.append({"name": setup.name, "error": "skipped: the run's time budget is spent"})
                continue
            print(f"bench: {setup.name} ...", flush=True)
            t0 = time.monotonic()
            try:
                setup.start(template)
                results.append(bench_setup(setup, profile, args.clients))
            except KeyboardInterrupt:
                raise
            except Exception as exc:
                results.append({"name": setup.name, "error": f"{type(exc).__name__}: {exc}"})
                print(f"bench: {setup.name} FAILED: {exc}", flush=True)
            finally:
                setup.stop()
            print(f"bench: {setup.name} done in {time.monotonic() - t0:.0f}s", flush=True)
        # The soak: the best single worker holds the full count of idle peers for a minute.
        if profile["soak_peers"] and not args.no_soak:
            singles = [r for r in results if r["name"].startswith("uvicorn") and "error" not in r]
            if singles:
                best = min(singles, key=lambda r: value(ROWS[7][1], r) or 1e9)
                need = profile["soak_hold"] + 60
                if time.monotonic() + need < deadline + 20:
                    ws = best["name"].split("-", 1)[1]
                    setup = Setup(f"soak-{best['name']}", work, "ours", server="uvicorn", ws=ws)
                    print(f"bench: soak {best['name']}: {profile['soak_peers']} idle peers for {profile['soak_hold']}s ...", flush=True)
                    try:
                        setup.start(template)
                        soak = bench_setup(setup, profile, args.clients, soak=True)
                        soak["requested"] = profile["soak_peers"]
                    except KeyboardInterrupt:
                        raise
                    except Exception as exc:
                        soak = {"name": setup.name, "error": f"{type(exc).__name__}: {exc}"}
                    finally:
                        setup.stop()
                else:
                    print("bench: soak skipped: not enough time left in the budget", flush=True)
    except KeyboardInterrupt:
        print("bench: interrupted; servers stopped", flush=True)
    finally:
        info["seconds"] = time.monotonic() - started
        info["loadavg_at_end"] = os.getloadavg()
        shutil.rmtree(work, ignore_errors=True)
    text, notes = table(results)
    targets = check_targets(results, soak)
    print()
    print(text)
    if notes:
        print()
        for note in notes:
            print(f"note: {note}")
    if targets:
        print()
        print("targets (issue 5):")
        for line in targets:
            print(f"  {line}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = out / f"bench-{stamp}{'-quick' if args.quick else ''}.json"
    path.write_text(json.dumps({"info": info, "results": results, "soak": soak, "table": text, "notes": notes, "targets": targets}, indent=2))
    print(f"\nbench: {info['seconds']:.0f}s; JSON in {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return 130 if stopping else 0


if __name__ == "__main__":
    sys.exit(main())
