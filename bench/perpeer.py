"""What one idle peer costs: memory per peer, CPU per open, and whether it all comes back.

``make bench-perpeer`` (``bench/run.sh --perpeer``) runs, for the reference
PeerServer and one production worker (uvicorn with signaling.servers'
protocols, permessage-deflate refused, as deploy/worker-entrypoint.sh runs it),
one after the other and each fresh:

1. rounds of N idle peers (default 1 000, 5 000, 10 000, then 10 000 twice
   more: three open/close cycles of 10 000), each size on a freshly started
   server (a server reuses the memory an earlier round freed, which would
   hide what a peer costs). Each round opens its N peers
   (server CPU per open, from /proc of the server's processes), holds them
   while they send HEARTBEAT every 5 s (RSS per idle peer: VmRSS after the
   hold minus before the round, over N; server CPU per heartbeat), and closes
   them (CPU per close; RSS once the server is quiet again);
2. the leak check: RSS after each 10 000 cycle against the RSS before the
   first round.

The peers are opened with ``loadgen.LeanSocket`` by ``--clients`` load-generator
processes, 50 opens at a time each: its CPU is small beside the servers'.
``--concurrency 1`` opens them one after another instead, as opens trickle into a
worker outside a storm.

With ``--tracemalloc`` the worker runs under tracemalloc
(``bench/traced_worker.py``; its CPU and RSS figures are then not comparable)
and the run prints the allocations that grew most around 10 000 opens, by
file:line, and the object types that grew, per peer.

The machine's 2 cores are shared: CPU per open is taken as the minimum over
the rounds and the ``--runs``, and always beside the reference's in the same
run; RSS is steady. JSON goes to bench/results/perpeer-*.json.
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
import tracemalloc
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
import run  # noqa: E402
from run import ROOT, Clients, Meter, Setup, settle, split  # noqa: E402

PRODUCTION = "websockets-sansio-nodeflate"  # run.py's name for the worker deploy/worker-entrypoint.sh runs
HEARTBEAT_PERIOD = 5.0


class TracedSetup(Setup):
    """The production worker started under bench/traced_worker.py."""

    def __init__(self, *args, snapshots, **kwargs):
        super().__init__(*args, **kwargs)
        self.snapshots = snapshots

    def _command(self, port):
        command = super()._command(port)
        assert command[1:3] == ["-m", "uvicorn"]
        return [command[0], str(BENCH / "traced_worker.py"), *command[3:]]

    def start(self, template_db):
        os.environ["PERPEER_SNAPSHOTS"] = str(self.snapshots)
        super().start(template_db)

    def snapshot(self):
        n = len(list(Path(self.snapshots).glob("*.done")))
        os.kill(self.worker_processes[0].pid, signal.SIGUSR1)
        run.wait_for(lambda: (Path(self.snapshots) / f"{n}.done").exists(), 120, "a tracemalloc snapshot")
        return n


def open_round(setup, clients, meter, count, hold, concurrency):
    """Open ``count`` idle peers (``concurrency`` at a time per load generator), hold them, close them: the round's figures."""
    n_clients = len(clients.procs)
    rss0, cpu0, t0 = meter.rss_kb(), meter.cpu_us(), time.monotonic()
    answers = clients.run(
        [
            {"op": "open_idle", "bases": setup.bases, "count": n, "concurrency": concurrency, "seconds": 600, "lean": True}
            for n in split(count, n_clients)
        ],
        timeout=720,
    )
    open_wall = time.monotonic() - t0
    open_cpu = meter.cpu_us() - cpu0
    opened = sum(a["opened"] for a in answers)
    failures = run.merge_counts(answers, "failures")
    cpu1 = meter.cpu_us()
    answers = clients.all({"op": "hold", "seconds": hold}, timeout=hold + 60)
    hold_cpu = meter.cpu_us() - cpu1
    rss1 = meter.rss_kb()
    setup.check_alive()
    dropped = sum(a["dropped"] for a in answers)
    cpu2 = meter.cpu_us()
    clients.all({"op": "close_idle"}, timeout=180)
    settle(meter, timeout=30)
    close_cpu = meter.cpu_us() - cpu2
    # A worker collects its closed sockets' garbage once the closes have been
    # calm for a while (signaling.garbage.CALM_SECONDS, checked every second).
    time.sleep(8)
    rss2 = meter.rss_kb()
    heartbeats = opened * hold / HEARTBEAT_PERIOD
    return {
        "peers": count,
        "opened": opened,
        "failures": failures,
        "dropped": dropped,
        "opens_per_second": opened / open_wall if open_wall else None,
        "cpu_us_per_open": open_cpu / opened if opened else None,
        "cpu_us_per_heartbeat": hold_cpu / heartbeats if heartbeats else None,
        "cpu_us_per_close": close_cpu / opened if opened else None,
        "rss_before_kb": rss0,
        "rss_open_kb": rss1,
        "rss_after_close_kb": rss2,
        "kb_per_idle_peer": (rss1 - rss0) / opened if opened else None,
        "client_cpu_share": run.client_load(answers),
    }


def bench_one(setup, template, rounds, hold, clients_count, concurrency, traced=False):
    setup.start(template)
    meter = Meter(setup.pids())
    clients = Clients(clients_count, tag=f"pp{setup.kind[:3]}{int(time.time()) % 100000}", compression=False)
    result = {"name": setup.name, "rounds": []}
    try:
        # Warm up: the first sockets load code and start the worker's services.
        clients.all({"op": "open_idle", "bases": setup.bases, "count": 50, "concurrency": 10, "lean": True}, 60)
        clients.all({"op": "close_idle"}, 60)
        settle(meter, timeout=10)
        time.sleep(1)
        result["rss_baseline_kb"] = meter.rss_kb()
        for i, count in enumerate(rounds):
            if traced and "snapshots" not in result:
                before = setup.snapshot()
                figures = open_round_traced(setup, clients, meter, count, hold, concurrency)
                result["snapshots"] = figures.pop("snapshots") | {"before": before}
            else:
                figures = open_round(setup, clients, meter, count, hold, concurrency)
            figures["fresh"] = i == 0  # the server's first round: no memory freed by an earlier one to reuse
            result["rounds"].append(figures)
            print(
                f"  {setup.name}: {figures['opened']:>6} peers  {figures['kb_per_idle_peer']:6.1f} KB/peer  "
                f"{figures['cpu_us_per_open']:6.0f} µs/open  {figures['cpu_us_per_heartbeat']:5.1f} µs/heartbeat  "
                f"{figures['cpu_us_per_close']:5.0f} µs/close  RSS after close "
                f"{(figures['rss_after_close_kb'] - result['rss_baseline_kb']) / 1024:+.1f} MB  "
                f"dropped {figures['dropped']}  failures {figures['failures'] or 0}",
                flush=True,
            )
    finally:
        clients.stop()
        setup.stop()
    top = max(rounds)
    cycles = [r for r in result["rounds"] if r["peers"] == top]
    result["leak"] = {
        "cycles": len(cycles),
        "rss_after_each_cycle_minus_baseline_kb": [r["rss_after_close_kb"] - result["rss_baseline_kb"] for r in cycles],
        "growth_first_to_last_cycle_kb": cycles[-1]["rss_after_close_kb"] - cycles[0]["rss_after_close_kb"] if cycles else None,
    }
    return result


def merge_sessions(results):
    """One result from the fresh servers of one setup: every round, the last server's leak check."""
    results = list(results)
    merged = dict(results[-1])
    merged["rounds"] = [r for res in results for r in res["rounds"]]
    return merged


def open_round_traced(setup, clients, meter, count, hold, concurrency):
    """As open_round, with a snapshot once the peers are open and one once they are closed."""
    snaps = {}
    original = clients.all

    def all_with_snapshots(command, timeout):
        if command["op"] == "close_idle":
            snaps["open"] = setup.snapshot()
            answers = original(command, timeout)
            settle(meter, timeout=30)
            snaps["closed"] = setup.snapshot()
            return answers
        return original(command, timeout)

    clients.all = all_with_snapshots
    try:
        figures = open_round(setup, clients, meter, count, hold, concurrency)
    finally:
        clients.all = original
    figures["snapshots"] = snaps
    return figures


def report_tracemalloc(result, snapshots_dir, top=30):
    snaps = result["snapshots"]
    opened = next(r["opened"] for r in result["rounds"] if r["peers"] == max(r2["peers"] for r2 in result["rounds"]))
    load = lambda n: tracemalloc.Snapshot.load(str(Path(snapshots_dir) / f"{n}.snap"))  # noqa: E731
    before, during, after = load(snaps["before"]), load(snaps["open"]), load(snaps["closed"])
    lines = []
    diff = during.compare_to(before, "lineno")
    total = sum(d.size_diff for d in diff)
    lines.append(f"tracemalloc: {total / opened:.0f} B per open peer traced ({opened} peers); top lines:")
    for d in diff[:top]:
        frame = d.traceback[0]
        name = frame.filename.split("site-packages/")[-1].replace(str(ROOT) + "/", "")
        lines.append(f"  {d.size_diff / opened:8.1f} B/peer {d.count_diff / opened:6.2f} blocks/peer  {name}:{frame.lineno}")
    leftover = sum(d.size_diff for d in after.compare_to(before, "lineno"))
    lines.append(f"after closing them: {leftover / 1024:+.0f} KB traced beside before ({leftover / opened:+.1f} B per peer)")
    types = lambda n: json.loads((Path(snapshots_dir) / f"{n}.types.json").read_text())  # noqa: E731
    t0, t1 = types(snaps["before"]), types(snaps["open"])
    grown = sorted(((t1.get(k, 0) - t0.get(k, 0)) / opened, k) for k in set(t0) | set(t1))
    lines.append("objects tracked by the collector, per peer:")
    for per, name in reversed(grown[-20:]):
        if per >= 0.05:
            lines.append(f"  {per:6.2f}  {name}")
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description="Memory per idle peer and CPU per open, beside the reference.")
    parser.add_argument("--peers", type=int, nargs="+", default=[1000, 5000, 10000], help="peers per round")
    parser.add_argument("--cycles", type=int, default=3, help="open/close cycles of the largest round (leak check)")
    parser.add_argument("--hold", type=float, default=5.0, help="seconds each round's peers are held")
    parser.add_argument("--runs", type=int, default=1, help="repeat the whole run (CPU figures: the minimum)")
    parser.add_argument("--clients", type=int, default=2, help="load-generator processes")
    parser.add_argument(
        "--concurrency", type=int, default=50,
        help="opens under way at a time per load generator (1: one after another, as opens trickle into a worker)",
    )
    parser.add_argument("--only", nargs="*", choices=["reference", "uvicorn"], help="one of the two servers")
    parser.add_argument("--tracemalloc", action="store_true", help="the worker under tracemalloc: where its memory goes")
    parser.add_argument("--out", default=str(BENCH / "results"))
    args = parser.parse_args(argv)
    fd_limit = run.raise_fd_limit()
    if max(args.peers) + 500 > fd_limit:
        raise SystemExit(f"perpeer: {max(args.peers)} peers need more descriptors than the limit {fd_limit}")
    if not (BENCH / "node_modules" / "peer").is_dir():
        raise SystemExit("bench/node_modules is missing: run bench/run.sh (it runs npm ci)")
    # One fresh server per size; the largest one's server goes on to the leak cycles.
    rounds = [[n] for n in args.peers[:-1]] + [[args.peers[-1]] * args.cycles]
    work = tempfile.mkdtemp(prefix="peerjs-perpeer-")
    template = run.migrate(work, ROOT)
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git": git,
        "git_dirty": bool(subprocess.run(["git", "status", "--porcelain", "--", "signaling", "p2psite"], cwd=ROOT, capture_output=True, text=True).stdout.strip()),
        "machine": platform.platform(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "loadavg_at_start": os.getloadavg(),
        "rounds": rounds,
        "tracemalloc": args.tracemalloc,
        "concurrency": args.concurrency,
    }
    print(f"perpeer: {git}{' + uncommitted changes' if info['git_dirty'] else ''}, rounds {rounds}, load average {info['loadavg_at_start'][0]:.2f}", flush=True)
    runs = []
    for r in range(args.runs):
        results = {}
        for which in args.only or ["reference", "uvicorn"]:
            traced = args.tracemalloc and which == "uvicorn"
            snapshots = Path(work) / f"snapshots{r}"

            def fresh():
                if which == "reference":
                    return Setup("reference", work, "reference")
                if traced:
                    snapshots.mkdir(exist_ok=True)
                    return TracedSetup(f"uvicorn-{PRODUCTION}", work, "ours", server="uvicorn", ws=PRODUCTION, snapshots=snapshots)
                return Setup(f"uvicorn-{PRODUCTION}", work, "ours", server="uvicorn", ws=PRODUCTION)

            results[which] = merge_sessions(
                bench_one(fresh(), template, counts, args.hold, args.clients, args.concurrency,
                          traced=traced and counts[0] == max(args.peers))
                for counts in rounds
            )
            if args.tracemalloc and which == "uvicorn":
                results[which]["tracemalloc"] = report_tracemalloc(results[which], snapshots)
                print("\n".join(results[which]["tracemalloc"]))
        runs.append(results)
    summary = summarize(runs)
    print_summary(summary)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"perpeer-{datetime.datetime.now():%Y%m%d-%H%M%S}.json"
    path.write_text(json.dumps({"info": info, "runs": runs, "summary": summary}, indent=1))
    print(f"perpeer: wrote {path}")
    return 0


def summarize(runs):
    """Per server: RSS per idle peer at each size, CPU per open (minimum over rounds and runs), the leak check."""
    summary = {}
    for which in runs[0]:
        results = [r[which] for r in runs]
        rounds = [x for res in results for x in res["rounds"]]
        sizes = sorted({x["peers"] for x in rounds})
        summary[which] = {
            "kb_per_idle_peer": {
                str(n): min(x["kb_per_idle_peer"] for x in rounds if x["peers"] == n and x["fresh"])
                for n in sizes
            },
            "cpu_us_per_open_min": min(x["cpu_us_per_open"] for x in rounds if x["cpu_us_per_open"]),
            "cpu_us_per_open_all": [round(x["cpu_us_per_open"]) for x in rounds if x["cpu_us_per_open"]],
            "cpu_us_per_heartbeat_min": min(x["cpu_us_per_heartbeat"] for x in rounds if x["cpu_us_per_heartbeat"]),
            "cpu_us_per_close_min": min(x["cpu_us_per_close"] for x in rounds if x["cpu_us_per_close"]),
            "dropped": sum(x["dropped"] for x in rounds),
            "leak": [res["leak"] for res in results],
        }
    return summary


def print_summary(summary):
    ref = summary.get("reference")
    for which, s in summary.items():
        ratio = lambda key: f" ({s[key] / ref[key]:.2f}×)" if ref and which != "reference" and ref[key] else ""  # noqa: E731
        kb = "  ".join(
            f"{n}: {v:.1f} KB" + (f" ({v / ref['kb_per_idle_peer'][n]:.2f}×)" if ref and which != "reference" and n in ref["kb_per_idle_peer"] else "")
            for n, v in s["kb_per_idle_peer"].items()
        )
        print(f"{which}: per idle peer {kb}")
        print(
            f"{which}: CPU per open {s['cpu_us_per_open_min']:.0f} µs{ratio('cpu_us_per_open_min')} "
            f"(all rounds {s['cpu_us_per_open_all']}), per heartbeat {s['cpu_us_per_heartbeat_min']:.1f} µs, "
            f"per close {s['cpu_us_per_close_min']:.0f} µs{ratio('cpu_us_per_close_min')}, dropped {s['dropped']}"
        )
        for leak in s["leak"]:
            print(
                f"{which}: RSS after each of {leak['cycles']} cycles, beside the baseline: "
                f"{', '.join(f'{v / 1024:+.1f} MB' for v in leak['rss_after_each_cycle_minus_baseline_kb'])}; "
                f"first to last cycle {leak['growth_first_to_last_cycle_kb'] / 1024:+.1f} MB"
            )


if __name__ == "__main__":
    sys.exit(main())
