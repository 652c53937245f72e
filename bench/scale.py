"""make bench-scale: 100 000 idle peers on one machine, held for 10 minutes.

The production topology on one host, every part real: a private
``redis-server``, a fresh database on PostgreSQL, and ``--workers`` production
workers (uvicorn with signaling.servers' protocols, as
deploy/worker-entrypoint.sh runs them), each on its own port. ``--clients``
load-generator processes (``loadgen.py serve``) open the idle peers with
``loadgen.LeanSocket``, each from its own loopback address (127.0.0.2,
127.0.0.3, ...): one source address reaches one server port from at most the
~28 000 ports of ``net.ipv4.ip_local_port_range``, and one process holds at
most its descriptor limit. Each peer is spread round-robin over the workers
and sends PeerJS's ``HEARTBEAT`` every 5 s from the moment it opens.

Phases:

1. **open**: every idle peer opens (50 at a time per load-generator process);
   the workers' CPU per open (heartbeats of the peers already open included),
   opens refused or failed.
2. **hold** (``--hold`` s, 10 minutes by default): the peers stay and
   heartbeat while ``--pairs`` pairs of peers (one side on the first worker,
   the other on the second) relay OFFER/CANDIDATE frames at ``--rate`` msgs/s
   in all. Reported each minute: peers still open, peers the server dropped.
   At the end: the workers' CPU per 1 000 peers (heartbeats and the liveness
   sweep, net of the workers' CPU with no peer, measured ``--baseline`` s before the
   open; the pair's few frames are in it too), per heartbeat, the
   workers' RSS per peer, the registry's rows, and the pair's one-way latency.
3. **close**: every peer leaves; RSS once the workers are quiet.

Targets (issue 25): none dropped, none refused, the pair's relay p99 ≤ 10 ms.
JSON goes to bench/results/scale-*.json. Needs a descriptor limit of
peers / workers + 1 000 per worker and peers / clients + 500 per load
generator (this machine's hard limit is 20 000: at least six workers and six
load generators for 100 000 peers), redis-server, and a PostgreSQL server the
run may create a database on (``--postgres``).
"""
import argparse
import datetime
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

import psycopg

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
import loadgen  # noqa: E402
import run  # noqa: E402
from run import ROOT, Clients, Meter, Setup, settle, split  # noqa: E402

PRODUCTION = "websockets-sansio-nodeflate"  # run.py's name for the worker deploy/worker-entrypoint.sh runs
HEARTBEAT_PERIOD = 5.0
REPORT_EVERY = 60.0  # seconds between the hold's progress lines
# Every idle peer is of the one default app: its cluster-wide cap must not be what refuses them.
SCALE_ENV = {"PEERJS_CONCURRENT_LIMIT": "1000000"}


class Database:
    """A database of its own on a PostgreSQL server, dropped at the end."""

    def __init__(self, admin_url):
        self.admin_url = admin_url
        self.name = f"peerjs_scale_{os.getpid()}"
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE DATABASE "{self.name}"')
        parts = urllib.parse.urlsplit(admin_url)
        self.url = urllib.parse.urlunsplit(parts._replace(path=f"/{self.name}"))

    def rows(self):
        with psycopg.connect(self.url, connect_timeout=5) as conn:
            return conn.execute("SELECT count(*) FROM signaling_peer").fetchone()[0]

    def drop(self):
        with psycopg.connect(self.admin_url, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


def migrate(database_url):
    env = {**os.environ, **run.OUR_ENV, "DATABASE_URL": database_url}
    subprocess.run([run.python(), "manage.py", "migrate", "--noinput", "-v0"], cwd=ROOT, env=env, check=True, timeout=300)


def check_limits(args, fd_limit):
    per_worker = -(-args.peers // args.workers) + 1000
    per_client = -(-args.peers // args.clients) + 500
    problems = []
    if per_worker > fd_limit:
        problems.append(f"a worker would hold {per_worker} descriptors: raise --workers (or the limit, ulimit -Hn)")
    if per_client > fd_limit:
        problems.append(f"a load generator would hold {per_client} descriptors: raise --clients")
    if args.clients > 250:
        problems.append("at most 250 load generators (127.0.0.2-127.0.0.251)")
    if problems:
        raise SystemExit(f"bench-scale: the descriptor limit is {fd_limit}; " + "; ".join(problems))


def worker_rss_kb(setup):
    return sum(run.rss_kb(p.pid) for p in setup.worker_processes)


def bench_scale(args, setup, database):
    workers = Meter(p.pid for p in setup.worker_processes)
    redis = Meter(p.pid for p in setup.processes if p not in setup.worker_processes)
    tag = f"s{int(time.time()) % 100000}"
    idle = Clients(args.clients, tag=tag, compression=False, sources=[f"127.0.0.{2 + i}" for i in range(args.clients)])
    pairs = Clients(1, tag=tag + "p")
    result = {"peers": args.peers, "workers": args.workers, "clients": args.clients, "hold_seconds": args.hold}
    try:
        settle(workers)
        rss0 = worker_rss_kb(setup)
        # What the workers cost with no peer at all (their beats, the sweeps' timers):
        # subtracted from the hold's CPU to get what the peers cost.
        cpu0, wall0 = workers.cpu_us(), time.monotonic()
        time.sleep(args.baseline)
        baseline_cores = (workers.cpu_us() - cpu0) / 1e6 / (time.monotonic() - wall0)
        result["baseline_worker_cores"] = round(baseline_cores, 4)

        # 1. open
        cpu0, wall0 = workers.cpu_us(), time.monotonic()
        counts = split(args.peers, args.clients)
        answers = idle.run(
            [{"op": "open_idle", "bases": setup.bases, "count": n, "concurrency": 50, "lean": True,
              "timeout": 60, "seconds": args.open_cap} for n in counts],
            timeout=args.open_cap + 180,
        )
        open_seconds = time.monotonic() - wall0
        opened = sum(a["opened"] for a in answers)
        failures = run.merge_counts(answers, "failures")
        settle(workers, quiet=0.5, timeout=30)
        open_cpu = workers.cpu_us() - cpu0
        result["open"] = {
            "opened": opened,
            "failures": failures,
            "seconds": round(open_seconds, 1),
            "opens_per_second": round(opened / open_seconds),
            "worker_cpu_us_per_open": round(open_cpu / max(opened, 1)),
            "client_cpu_seconds": round(sum(a["client_cpu_seconds"] for a in answers), 1),
            "latency_us": loadgen.percentiles(loadgen.merge_histograms(a["open_latency_us"] for a in answers)),
        }
        print(f"bench-scale: {opened} of {args.peers} open in {open_seconds:.0f} s "
              f"({result['open']['worker_cpu_us_per_open']} µs of worker CPU per open), failures {failures or 'none'}", flush=True)
        setup.check_alive()
        pairs.run([{"op": "open_pairs", "bases": setup.bases[:2], "pairs": args.pairs}], timeout=120)

        # 2. hold
        settle(workers, quiet=0.5, timeout=30)
        rss_held = worker_rss_kb(setup)
        cpu0, redis0, wall0 = workers.cpu_us(), redis.cpu_us(), time.monotonic()
        pairs.send([{"op": "relay", "phase": 1, "mode": "paced", "rate": args.rate, "seconds": args.hold, "drain": 5}])
        minutes = []
        left = args.hold
        while left > 0:
            step = min(REPORT_EVERY, left)
            states = idle.all({"op": "hold", "seconds": step}, timeout=step + 60)
            left -= step
            state = {
                "at_seconds": round(time.monotonic() - wall0),
                "alive": sum(s["alive"] for s in states),
                "dropped": sum(s["dropped"] for s in states),
                "worker_cores": round((workers.cpu_us() - cpu0) / 1e6 / (time.monotonic() - wall0), 3),
            }
            minutes.append(state)
            print(f"bench-scale: {state['at_seconds']} s: {state['alive']} open, {state['dropped']} dropped, "
                  f"workers at {state['worker_cores']} of a core", flush=True)
            setup.check_alive()
        hold_seconds = time.monotonic() - wall0
        hold_cpu = workers.cpu_us() - cpu0
        redis_cpu = redis.cpu_us() - redis0
        (relay,) = pairs.collect(timeout=120)
        rows = database.rows()
        held = opened + 2 * args.pairs
        heartbeats = held * hold_seconds / HEARTBEAT_PERIOD
        peers_cpu = hold_cpu - baseline_cores * 1e6 * hold_seconds
        result["hold"] = {
            "seconds": round(hold_seconds),
            "alive_at_end": minutes[-1]["alive"],
            "dropped": minutes[-1]["dropped"],
            "minutes": minutes,
            "registry_rows": rows,
            "worker_cores": round(hold_cpu / 1e6 / hold_seconds, 3),
            # Net of the baseline: what holding the peers costs.
            "worker_cpu_ms_per_second_per_1000_peers": round(peers_cpu / 1e3 / hold_seconds / (held / 1000), 3),
            "worker_cpu_us_per_heartbeat": round(peers_cpu / heartbeats, 1),
            "redis_cores": round(redis_cpu / 1e6 / hold_seconds, 4),
            "worker_rss_mb": round(rss_held / 1024),
            "worker_rss_kb_per_peer": round((rss_held - rss0) / held, 2),
            "relay": {
                "rate": args.rate,
                "sent": relay["sent"],
                "received": relay["received"],
                "lost": relay["lost"],
                "duplicated": relay["duplicated"],
                "reordered": relay["reordered"],
                "latency_us": loadgen.percentiles(loadgen.merge_histograms([relay["latency_us"]])),
            },
        }

        # 3. close
        cpu0 = workers.cpu_us()
        idle.all({"op": "close_idle"}, timeout=600)
        pairs.run([{"op": "close_pairs"}], timeout=120)
        settle(workers, timeout=60)
        result["close"] = {
            "worker_cpu_us_per_close": round((workers.cpu_us() - cpu0) / held),
            "worker_rss_mb_after": round(worker_rss_kb(setup) / 1024),
            "worker_rss_mb_before_open": round(rss0 / 1024),
        }
        return result
    finally:
        idle.stop()
        pairs.stop()


def verdicts(result):
    """The issue's targets, met or not."""
    hold = result["hold"]
    p99 = hold["relay"]["latency_us"].get("p99")
    return [
        ("none refused or failed to open", not result["open"]["failures"] and result["open"]["opened"] == result["peers"]),
        ("none dropped during the hold", hold["dropped"] == 0 and hold["alive_at_end"] == result["open"]["opened"]),
        ("every relayed frame arrived once, in order",
         hold["relay"]["lost"] == 0 and hold["relay"]["duplicated"] == 0 and hold["relay"]["reordered"] == 0),
        (f"the pair's relay p99 {p99 / 1000 if p99 else '?'} ms ≤ 10 ms", p99 is not None and p99 <= 10_000),
    ]


def main(argv=None):
    parser = argparse.ArgumentParser(description="100 000 idle peers on one machine (issue 25).")
    parser.add_argument("--peers", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=6, help="production workers (default 6)")
    parser.add_argument("--clients", type=int, default=8, help="load-generator processes, one loopback address each")
    parser.add_argument("--hold", type=float, default=600.0, help="seconds the peers are held (default 600)")
    parser.add_argument("--pairs", type=int, default=5, help="pairs relaying across the first two workers during the hold")
    parser.add_argument("--rate", type=float, default=20.0, help="the pairs' messages per second in all (few: their CPU counts in the per-peer figures)")
    parser.add_argument("--baseline", type=float, default=10.0, help="seconds the workers' CPU is measured with no peer")
    parser.add_argument("--open-cap", type=float, default=900.0, help="no open starts after this many seconds")
    parser.add_argument("--postgres", default=os.environ.get("PEERJS_TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/postgres"),
                        help="a PostgreSQL server the run may create (and drop) a database on")
    parser.add_argument("--out", default=str(BENCH / "results"))
    args = parser.parse_args(argv)
    fd_limit = run.raise_fd_limit()
    check_limits(args, fd_limit)
    if args.workers < 2:
        raise SystemExit("bench-scale: the pair relays across two workers: --workers 2 or more")
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git": git,
        "machine": platform.platform(),
        "cpus": os.cpu_count(),
        "memory_mb": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20,
        "descriptor_limit": fd_limit,
        "somaxconn": Path("/proc/sys/net/core/somaxconn").read_text().strip(),
        "ip_local_port_range": Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split(),
        "loadavg_at_start": os.getloadavg(),
    }
    print(f"bench-scale: {args.peers} peers, {args.workers} workers, {args.clients} load generators, "
          f"hold {args.hold:.0f} s; {git}, load average {info['loadavg_at_start'][0]:.2f}", flush=True)
    # SIGTERM (and SIGINT, which a background job ignores) end the run through
    # its cleanup: the workers, the load generators and the database.
    def interrupted(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGINT, interrupted)
    work = tempfile.mkdtemp(prefix="peerjs-scale-")
    database = Database(args.postgres)
    setup = None
    try:
        migrate(database.url)
        setup = Setup("scale", work, "ours", server="uvicorn", ws=PRODUCTION, workers=args.workers,
                      database_url=database.url, env=SCALE_ENV)
        setup.start(None)
        result = bench_scale(args, setup, database)
    finally:
        if setup is not None:
            setup.stop()
        database.drop()
    result["verdicts"] = [{"target": what, "met": met} for what, met in verdicts(result)]
    hold = result["hold"]
    print(
        f"bench-scale: held {hold['alive_at_end']} peers for {hold['seconds']} s on {args.workers} workers: "
        f"{hold['worker_cpu_ms_per_second_per_1000_peers']} ms of CPU per second per 1 000 peers "
        f"({hold['worker_cpu_us_per_heartbeat']} µs per heartbeat, {hold['worker_cores']} cores in all), "
        f"{hold['worker_rss_kb_per_peer']} KB RSS per peer; relay p99 "
        f"{(hold['relay']['latency_us'].get('p99') or 0) / 1000:.2f} ms; close {result['close']['worker_cpu_us_per_close']} µs each"
    )
    for item in result["verdicts"]:
        print(f"  {'met ' if item['met'] else 'MISSED'} {item['target']}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"scale-{datetime.datetime.now():%Y%m%d-%H%M%S}.json"
    path.write_text(json.dumps({"info": info, "result": result}, indent=1))
    print(f"bench-scale: wrote {path}")
    return 0 if all(item["met"] for item in result["verdicts"]) else 1


if __name__ == "__main__":
    sys.exit(main())
