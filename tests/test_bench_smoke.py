"""The benchmark's load generator, run small against a real daphne of this project.

``make bench`` is not part of the suite; this smoke run is: it proves that the
load generator speaks the protocol (OPEN, relayed OFFER/CANDIDATE frames with
``src`` set by the server) and that its loss, duplicate and order counting
reports every message of a healthy relay as delivered once, in order.
"""
import asyncio
import json
import subprocess
import sys

import pytest

from tests.client import connect
from tests.servers import ROOT

sys.path.insert(0, str(ROOT / "bench"))
import loadgen  # noqa: E402  (the bench's own module, not a package)

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


async def test_the_storms_lean_client_opens_hears_frames_and_notices_a_takeover(make_server):
    """The storm reconnects its 5 000 peers with loadgen.LeanSocket, not the websockets
    library: against a production worker it opens (OPEN checked), heartbeats, reads
    what is relayed to it, and notices when the server closes it."""
    worker = make_server(server="uvicorn", env={"PEERJS_FLOOD_LIMIT": "0"})
    generator = loadgen.Generator("lean", compression=None)
    heard = asyncio.Event()
    frames = []
    generator.on_frame = lambda peer, raw: (frames.append(json.loads(raw)), heard.set())
    drops = []
    generator.on_drop = drops.append
    peer = generator.new_peer(worker.ws)
    await peer.connect_lean(10)
    assert peer.open
    await peer.ws.send(loadgen.HEARTBEAT_FRAME)
    sender = await connect(worker)
    await sender.relay("CANDIDATE", peer.peer_id, "to the lean client")
    await asyncio.wait_for(heard.wait(), 10)
    assert frames == [{"type": "CANDIDATE", "src": sender.peer_id, "dst": peer.peer_id, "payload": "to the lean client"}]
    # Its id, taken by someone else, is refused; taken over with its own token, it is closed.
    impostor = loadgen.Peer(generator, peer.peer_id, worker.ws)
    impostor.url = loadgen.socket_url(worker.ws, peer.peer_id, "not-the-owners-token")
    with pytest.raises(loadgen.LoadError, match="ID-TAKEN"):
        await impostor.connect_lean(10)
    takeover = await connect(worker, peer_id=peer.peer_id, token=peer.token)
    await asyncio.wait_for(peer.ws.ended, 10)
    assert drops == [peer] and peer.dropped and not peer.open
    await takeover.close()


@pytest.mark.cluster
@pytest.mark.own_postgres
def test_bench_scale_holds_its_peers_across_workers_and_reports_them(private_postgres, tmp_path):
    """``make bench-scale`` at a hundredth of a thousandth of its size: two workers, two load generators."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "scale.py"), "--peers", "400", "--workers", "2", "--clients", "2",
         "--hold", "6", "--pairs", "1", "--baseline", "1", "--postgres", private_postgres.admin_url, "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=110, cwd=ROOT,
    )
    # 1: a target missed. Which one is asserted below: the latency target is a
    # benchmark's figure, not the suite's (a loaded machine misses it).
    assert done.returncode in (0, 1), done.stdout[-3000:] + done.stderr[-3000:]
    (path,) = tmp_path.glob("scale-*.json")
    result = json.loads(path.read_text())["result"]
    assert result["open"]["opened"] == 400 and not result["open"]["failures"]
    # The registry held every idle peer and the pair's two, from two source addresses.
    assert result["hold"]["registry_rows"] == 402
    assert result["hold"]["alive_at_end"] == 400 and result["hold"]["dropped"] == 0
    relay = result["hold"]["relay"]
    assert relay["sent"] > 0 and relay["received"] == relay["sent"] and relay["lost"] == 0
    met = [v["met"] for v in result["verdicts"]]
    assert len(met) == 4 and "p99" in result["verdicts"][3]["target"]
    assert met[:3] == [True] * 3  # none refused, none dropped, every frame once and in order
    assert done.returncode == (0 if met[3] else 1)
