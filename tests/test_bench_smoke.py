"""The benchmark's load generator, run small against a real daphne of this project.

``make bench`` is not part of the suite; this smoke run is: it proves that the
load generator speaks the protocol (OPEN, relayed OFFER/CANDIDATE frames with
``src`` set by the server) and that its loss, duplicate and order counting
reports every message of a healthy relay as delivered once, in order.
"""
import json
import subprocess
import sys

import pytest

from tests.servers import ROOT

LOADGEN = ROOT / "bench" / "loadgen.py"
PAIRS = 2  # 4 peers
MESSAGES = 200  # per phase


def run_loadgen(*args, timeout=60):
    done = subprocess.run(
        [sys.executable, str(LOADGEN), *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )
    return done


def test_load_generator_relays_every_message_once_and_in_order(make_server):
    server = make_server(env={"PEERJS_FLOOD_LIMIT": "0"})
    done = run_loadgen("smoke", "--url", server.ws, "--pairs", str(PAIRS), "--messages", str(MESSAGES))
    assert done.returncode == 0, f"load generator failed:\n{done.stderr}\nserver log:\n{server.read_log()}"
    figures = json.loads(done.stdout)

    assert figures["opened"] == 2 * PAIRS
    assert figures["open_failures"] == {}
    assert figures["open_latency_us"]["p50"] > 0
    for name in ("paced", "full"):
        phase = figures[name]
        assert phase["sent"] == MESSAGES, name
        assert phase["received"] == MESSAGES, name
        assert (phase["lost"], phase["duplicated"], phase["reordered"]) == (0, 0, 0), name
        assert phase["never_delivered"] == 0, name
        latency = phase["latency_us"]
        assert 0 < latency["p50"] <= latency["p95"] <= latency["p99"] <= latency["max"], name
        assert phase["messages_per_second"] > 0, name
        assert phase["client_cpu_seconds"] > 0, name
    # Nothing but the relayed frames came back (no ERROR, EXPIRE or LEAVE), and no peer was dropped.
    assert figures["unexpected"] == {}
    assert figures["dropped"] == 0


@pytest.mark.parametrize("url", ["ws://10.0.0.1:8080", "ws://example.com:80", "ws://192.168.1.2:9000"])
def test_load_generator_refuses_targets_off_loopback(url):
    done = run_loadgen("smoke", "--url", url, "--pairs", "1", "--messages", "1", timeout=20)
    assert done.returncode != 0
    assert "loopback" in done.stderr
