"""GET /metrics on real workers: what a worker counts is what its clients did.

Workers are real uvicorn and daphne processes; clients open real sockets with
each outcome a client can provoke and relay real frames, on one worker and
across two sharing a private redis-server. The scraped text is checked by the
real promtool. Access is checked from the test's own address, which the
worker is told is not allowed.
"""
import collections
import json
import re
import subprocess
import types
import urllib.parse
from pathlib import Path

import pytest
import websockets
import yaml
from prometheus_client.parser import text_string_to_metric_families

from signaling import metrics
from tests.client import connect, socket_url, uid
from tests.servers import Database, Worker, free_port, http_get, wait_until
from tests.test_cluster import Cluster

pytestmark = pytest.mark.db

ROOT = Path(__file__).resolve().parent.parent
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
TOKEN = "metrics-token-for-tests-7c1e9a4f2b8d6e0a3c5f"
OUTCOMES = ["open", "taken", "full", "error", "refused", "retry"]


def scrape(worker, headers=None):
    status, _, body = worker.get("/metrics", headers)
    assert status == 200, body
    return body


def samples(text):
    """{(sample name, labels as a sorted tuple): value} of an exposition."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(found, name, **labels):
    return found[(name, tuple(sorted(labels.items())))]


def counts(worker):
    """What a user reads off /metrics, as a plain dict."""
    found = samples(scrape(worker))
    result = {f"opened {o}": value(found, "peerjs_sockets_opened_total", outcome=o) for o in OUTCOMES}
    for path in ["same_worker", "other_worker"]:
        result[f"relayed {path}"] = value(found, "peerjs_frames_relayed_total", path=path)
    for name in ["frames_queued", "expire_sent"]:
        result[name] = value(found, f"peerjs_{name}_total")
    result["peers"] = value(found, "peerjs_connected_peers")
    result["sockets"] = value(found, "peerjs_open_sockets")
    result["opens timed"] = value(found, "peerjs_open_latency_seconds_count")
    return result


def wait_for_counts(worker, expected):
    """Scrape until the counts are ``expected``: sockets a worker refused
    leave its books a moment after the client saw the close."""
    seen = []

    def matches():
        seen.append(counts(worker))
        return seen[-1] == expected

    try:
        wait_until(matches, 10, "the expected counts", interval=0.1)
    except TimeoutError:
        assert seen[-1] == expected
    return seen[-1]


def promtool_check_metrics(text):
    return subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)


# --- what a worker counts -----------------------------------------------------------


@pytest.fixture
def busy_worker(make_server):
    """The production server with room for two peers and one allowed origin."""
    return make_server(
        {
            "PEERJS_CONCURRENT_LIMIT": "2",
            "PEERJS_CORS_ORIGINS": "https://app.example",
            # A network, not just the default addresses.
            "PEERJS_METRICS_ALLOW": "127.0.0.0/8,::1",
        },
        own=True,
        server="uvicorn",
    )


async def test_sockets_and_frames_are_counted_as_clients_saw_them(busy_worker):
    w = busy_worker
    a, b = await connect(w), await connect(w)

    # refused: a page on an origin the server does not serve
    with pytest.raises(websockets.InvalidStatus) as refused:
        await websockets.connect(socket_url(w, uid(), "t"), origin="https://evil.example")
    assert refused.value.response.status_code == 403
    # error: an id outside the client's rule, and a wrong key
    bad_id = await connect(w, peer_id="not.an.id", expect_open=False)
    assert (await bad_id.recv())["type"] == "ERROR"
    bad_key = await connect(w, key="nope", expect_open=False)
    assert (await bad_key.recv())["payload"]["msg"] == "Invalid key provided"
    # taken: b's id with another token
    thief = await connect(w, peer_id=b.peer_id, token="other", expect_open=False)
    assert (await thief.recv())["type"] == "ID-TAKEN"
    # full: a third peer past the limit of two
    third = await connect(w, expect_open=False)
    assert (await third.recv())["payload"]["msg"] == "Server has reached its concurrent user limit"
    for refused_client in (bad_id, bad_key, thief, third):
        await refused_client.closed()

    # five frames between two peers of this worker
    await a.relay("OFFER", b.peer_id, "offer")
    await b.expect("OFFER")
    await b.relay("ANSWER", a.peer_id, "answer")
    await a.expect("ANSWER")
    for n in range(3):
        await a.relay("CANDIDATE", b.peer_id, n)
        await b.expect("CANDIDATE")
    # one frame for a peer nobody holds: queued, then EXPIRE to its sender
    nobody = uid()
    await a.relay("OFFER", nobody, "anyone?")
    assert await a.recv(timeout=10) == {"type": "EXPIRE", "src": nobody, "dst": a.peer_id}

    assert wait_for_counts(w, {
        "opened open": 2, "opened taken": 1, "opened full": 1, "opened error": 2,
        "opened refused": 1, "opened retry": 0,
        "relayed same_worker": 5, "relayed other_worker": 0,
        "frames_queued": 1, "expire_sent": 1,
        "peers": 2, "sockets": 2, "opens timed": 2,
    })

    # The production server's fast paths (signaling.servers.uvicorn) took
    # frames: an upgrade of uvicorn that turned them off would show here.
    found = samples(scrape(w))
    assert value(found, "peerjs_fast_path_frames_total", way="received") > 0
    assert value(found, "peerjs_fast_path_frames_total", way="written") > 0
    assert value(found, "peerjs_fast_path_frames_total", way="opened") == 2  # each OPEN with its 101

    # A peer that leaves is no longer connected.
    await b.close()
    wait_until(lambda: counts(w)["peers"] == 1 and counts(w)["sockets"] == 1, 10, "b to leave the books")


async def test_open_latency_is_a_histogram_of_real_opens(busy_worker):
    clients = [await connect(busy_worker) for _ in range(2)]
    found = samples(scrape(busy_worker))
    buckets = sorted(
        (float(dict(labels)["le"]), count)
        for (name, labels), count in found.items()
        if name == "peerjs_open_latency_seconds_bucket"
    )
    assert buckets[-1] == (float("inf"), 2)
    assert [count for _, count in buckets] == sorted(count for _, count in buckets)  # cumulative
    total = value(found, "peerjs_open_latency_seconds_sum")
    # Each open took some time, and far less than the test's whole run.
    assert 0 < total < 10
    for client in clients:
        await client.close()


def test_histogram_buckets_hold_values_up_to_their_bound():
    histogram = metrics.Histogram("peerjs_test_seconds", "A test histogram.", [0.1, 1])
    for seconds in [0.05, 0.1, 0.5, 1, 3]:
        histogram.observe(seconds)
    found = {s.labels.get("le"): s.value for s in histogram.family().samples if s.name.endswith("_bucket")}
    # le is "less or equal": 0.1 counts in the 0.1 bucket, 1 in the 1 bucket.
    assert found == {"0.1": 2, "1.0": 4, "+Inf": 5}
    assert sum(histogram.counts) == 5 and histogram.sum == pytest.approx(4.65)


@pytest.mark.cluster
async def test_frames_to_another_worker_are_counted_by_the_worker_that_sent_them(redis_server):
    cluster = Cluster(redis_server, server="uvicorn")
    try:
        w1, w2 = cluster.workers
        a, b = await connect(w1), await connect(w2)
        # b first: w2 announced b to w1 before it relayed b's frames, so once a
        # has one of them, w1 knows where b is (a frame sent at once might
        # take the registry's way instead, through the queue).
        for n in range(2):
            await b.relay("CANDIDATE", a.peer_id, n)
            await a.expect("CANDIDATE")
        for n in range(3):
            await a.relay("CANDIDATE", b.peer_id, n)
            await b.expect("CANDIDATE")
        # Each worker answers for itself: its own opens, peers and sends.
        common = {
            "opened open": 1, "opened taken": 0, "opened full": 0, "opened error": 0,
            "opened refused": 0, "opened retry": 0, "relayed same_worker": 0,
            "frames_queued": 0, "expire_sent": 0, "peers": 1, "sockets": 1, "opens timed": 1,
        }
        assert wait_for_counts(w1, {**common, "relayed other_worker": 3})
        assert wait_for_counts(w2, {**common, "relayed other_worker": 2})
    finally:
        cluster.stop()


async def test_worker_info_names_the_worker_and_its_server(busy_worker, server):
    for worker, kind in [(busy_worker, "uvicorn"), (server, "daphne")]:
        client = await connect(worker)  # under daphne the hub starts with the first socket
        (info,) = [labels for (name, labels), v in samples(scrape(worker)).items() if name == "peerjs_worker_info"]
        info = dict(info)
        assert info["server"] == kind
        # The name the admin's worker list shows for it.
        rows = worker.database.query("SELECT name FROM signaling_worker WHERE name = ?", (info["worker"],))
        assert rows == [(info["worker"],)]
        await client.close()


async def test_promtool_accepts_the_exposition(busy_worker):
    a, b = await connect(busy_worker), await connect(busy_worker)
    await a.relay("OFFER", b.peer_id, "x")
    await b.expect("OFFER")
    text = scrape(busy_worker)
    result = promtool_check_metrics(text)
    assert result.returncode == 0, result.stdout + result.stderr
    # promtool is strict: a counter without _total or a metric without help fails.
    broken = text.replace("# HELP peerjs_floods_total", "# HELP peerjs_floods")
    assert promtool_check_metrics(broken).returncode != 0


def test_every_metric_the_example_alerts_use_is_exported(server):
    exported = {name for name, _labels in samples(scrape(server))}
    rules = yaml.safe_load(ALERTS.read_text())
    used = set()
    for group in rules["groups"]:
        for rule in group["rules"]:
            used |= set(re.findall(r"\bpeerjs_\w+", rule["expr"]))
    assert used, "the example alerts use no peerjs_ metric"
    assert used <= exported, f"alerts use metrics no worker exports: {sorted(used - exported)}"


# --- who may read it ----------------------------------------------------------------


@pytest.fixture
def guarded_worker(make_server):
    # 192.0.2.1 (TEST-NET-1) is never this test's address.
    return make_server({"PEERJS_METRICS_ALLOW": "192.0.2.1", "PEERJS_METRICS_TOKEN": TOKEN})


def test_a_stranger_gets_403_and_no_metrics(guarded_worker):
    for headers in [
        None,
        # Not behind a proxy: a forged header names no one.
        {"X-Forwarded-For": "192.0.2.1"},
        {"Authorization": "Bearer wrong-token-wrong-token-wrong-token-0000"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": f"Bearer {TOKEN[:-1]}"},
    ]:
        status, _, body = guarded_worker.get("/metrics", headers)
        assert status == 403, headers
        assert "peerjs_" not in body


def test_the_bearer_token_opens_it_whatever_the_host(guarded_worker):
    status, headers, body = guarded_worker.get("/metrics", {"Authorization": f"Bearer {TOKEN}"})
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain")
    assert "no-store" in headers["Cache-Control"]
    assert "peerjs_sockets_opened_total" in body
    # Prometheus names a worker by its container name, not a host the site serves.
    assert guarded_worker.get("/peerjs/myapp/", {"Host": "worker1:8000"})[0] == 400
    status, _, body = guarded_worker.get("/metrics", {"Host": "worker1:8000", "Authorization": f"bearer {TOKEN}"})
    assert status == 200 and "peerjs_open_sockets" in body


def test_this_machine_may_read_it_by_default(server):
    status, _, body = server.get("/metrics")
    assert status == 200 and "peerjs_open_sockets" in body


def test_behind_the_proxy_the_address_the_proxy_saw_decides():
    # As make cluster runs workers: nginx on 127.0.0.1, PEERJS_PROXIED on.
    worker = Worker(Database(), {"PEERJS_PROXIED": "1"}, server="uvicorn", name="proxied-metrics")
    try:
        # A public client through the local proxy is not this machine...
        assert worker.get("/metrics", {"X-Forwarded-For": "203.0.113.9"})[0] == 403
        # ...nor made so by a first entry of its own.
        assert worker.get("/metrics", {"X-Forwarded-For": "127.0.0.1, 203.0.113.9"})[0] == 403
        # A client on this machine through the proxy, or straight to the worker, is.
        assert worker.get("/metrics", {"X-Forwarded-For": "127.0.0.1"})[0] == 200
        assert worker.get("/metrics")[0] == 200
    finally:
        worker.stop()
        worker.database.drop()



# --- a real Prometheus ---------------------------------------------------------------


@pytest.fixture
def prometheus_for(tmp_path):
    """Start Debian's prometheus scraping ``worker`` every second with ``token``; its API URL."""
    started = []

    def start(worker, token):
        (tmp_path / "token").write_text(token)
        config = {
            "global": {"scrape_interval": "1s"},
            "scrape_configs": [{
                "job_name": "peerserver",
                "authorization": {"credentials_file": str(tmp_path / "token")},
                "static_configs": [{"targets": [f"127.0.0.1:{worker.port}"]}],
            }],
        }
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        port = free_port()
        log = open(tmp_path / "prometheus.log", "wb")
        proc = subprocess.Popen(
            ["prometheus", f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=log, stderr=subprocess.STDOUT,
        )
        started.append((proc, log))
        return f"http://127.0.0.1:{port}"

    yield start
    for proc, log in started:
        proc.terminate()
        proc.wait(30)
        log.close()


def query(api, promql):
    """The values of an instant query, or [] while Prometheus is not up yet."""
    try:
        status, _, body = http_get(f"{api}/api/v1/query?query={urllib.parse.quote(promql)}")
    except OSError:
        return []
    if status != 200:
        return []
    return [float(result["value"][1]) for result in json.loads(body)["data"]["result"]]


async def test_a_real_prometheus_scrapes_a_worker_with_the_token(guarded_worker, prometheus_for):
    a, b = await connect(guarded_worker), await connect(guarded_worker)
    await a.relay("OFFER", b.peer_id, "x")
    await b.expect("OFFER")
    api = prometheus_for(guarded_worker, TOKEN)
    # The scrape succeeds (up is 1) and Prometheus read the worker's own counts.
    wait_until(lambda: query(api, 'up{job="peerserver"}') == [1], 30, "Prometheus to scrape the worker")
    assert query(api, 'peerjs_sockets_opened_total{outcome="open"}') == [2]
    assert query(api, 'peerjs_frames_relayed_total{path="same_worker"}') == [1]
    assert query(api, "peerjs_connected_peers") == [2]
    assert query(api, "peerjs_open_latency_seconds_count") == [2]


def test_what_a_worker_writes_at_its_beat_counts_the_last_minute_beside_its_totals():
    """The admin overview's rates (signaling.metrics.Recent): counts over at most a minute of beats."""
    clock = [100.0]
    hub = types.SimpleNamespace(
        loop=types.SimpleNamespace(time=lambda: clock[0]),
        stats=collections.Counter({"frames_relayed:same_worker": 7}),  # before the beat watched: in the totals only
        local={("peerjs", "a"): None},
        connections={"c1": None, "c2": None},
        waiting=lambda: {"outboxes": 1, "offline": 0, "other_workers": 2},
    )
    recent = metrics.Recent(hub)
    snapshots = []
    for _beat in range(10):  # a beat every 10 s, 30 frames between beats
        clock[0] += 10
        hub.stats["frames_relayed:same_worker"] += 30
        snapshots.append(recent.snapshot())
    young, old = snapshots[2], snapshots[-1]
    # 30 s in: everything since the beat began to watch.
    assert young["recent"] == {"seconds": 30, "counts": {"frames_relayed:same_worker": 90}}
    # 100 s in: the last minute only, and the totals since the start.
    assert old["recent"] == {"seconds": 60, "counts": {"frames_relayed:same_worker": 180}}
    assert old["totals"] == {"frames_relayed:same_worker": 307}
    assert (old["peers"], old["sockets"], old["waiting"]) == (1, 2, {"outboxes": 1, "offline": 0, "other_workers": 2})
    json.dumps(old)  # what the beat writes to a JSONField
