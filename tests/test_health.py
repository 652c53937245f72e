"""/healthz and /readyz on real workers, with real outages of Redis and PostgreSQL.

Outages are real: the test's own redis-server is stopped, a private
PostgreSQL server (never the machine's shared one) is stopped or frozen with
SIGSTOP, and a worker is sent SIGTERM while the test holds the lock its drain
needs, so that the drain can be watched.
"""
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import TEST_ENV
from tests.servers import ROOT, Database, RedisServer, Worker, free_port, wait_until

pytestmark = pytest.mark.db

PROBE_BOUND = 2.0  # signaling/health.py CHECK_TIMEOUT
OUTAGE_TIMEOUT = 20  # how long a test waits for a probe to notice an outage or a recovery


def readiness(worker, headers=None):
    status, response_headers, body = worker.get("/readyz", headers)
    return status, json.loads(body), response_headers


def wait_for_readiness(worker, predicate, what):
    """Poll /readyz until ``predicate(status, body)``; the last answer."""
    answers = []

    def check():
        status, body, _ = readiness(worker)
        answers.append((status, body))
        return predicate(status, body)

    try:
        wait_until(check, OUTAGE_TIMEOUT, what, interval=0.2)
    except TimeoutError:
        raise AssertionError(f"{what}; last answer {answers[-1:]}") from None
    return answers[-1]


@pytest.fixture(scope="module")
def ready_worker(redis_server):
    """A production-like uvicorn worker on a database of its own and the session's Redis."""
    worker = Worker(Database(), {**TEST_ENV, "REDIS_URL": redis_server.url}, server="uvicorn", name="health")
    yield worker
    worker.stop()
    worker.database.drop()


# --- healthz ---------------------------------------------------------------------


def test_healthz_says_the_process_answers_and_is_never_cached(ready_worker):
    status, headers, body = ready_worker.get("/healthz")
    assert status == 200
    assert json.loads(body) == {"status": "ok"}
    assert "no-store" in headers["Cache-Control"]


# --- readyz when all is well -------------------------------------------------------


def test_readyz_is_ready_on_a_healthy_worker(ready_worker):
    status, body, headers = readiness(ready_worker)
    assert status == 200
    assert body == {"ready": True, "database": "ok", "redis": "ok", "draining": False}
    assert "no-store" in headers["Cache-Control"]


def test_readyz_works_under_daphne_too(make_server):
    # manage.py runserver serves with daphne, which has no lifespan: no hub
    # yet, so nothing is draining.
    worker = make_server()
    status, body, _ = readiness(worker)
    assert status == 200
    assert body["ready"] is True and body["database"] == "ok" and body["draining"] is False
    assert "REDIS_URL" in body["redis"]  # not used, and it says why


def test_probes_answer_whatever_host_the_orchestrator_sends(ready_worker):
    # A Docker health check or a Kubernetes probe sends its own Host (a pod
    # IP, a container name): not a name the site serves, but still a probe.
    foreign = {"Host": "10.1.2.3:8000"}
    assert ready_worker.get("/peerjs/myapp/", foreign)[0] == 400  # ALLOWED_HOSTS still guards the site
    assert ready_worker.get("/healthz", foreign)[0] == 200
    status, body, _ = readiness(ready_worker, foreign)
    assert status == 200 and body["ready"] is True


# --- the Docker health check (deploy/healthcheck.py) ---------------------------------


def docker_healthcheck(port, **env):
    """Run the image's health check as Docker does inside a worker's container."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ASGI_")}
    return subprocess.run(
        [sys.executable, str(ROOT / "deploy" / "healthcheck.py")],
        env={**clean, "ASGI_PORT": str(port), **env}, capture_output=True, text=True, timeout=30,
    )


def test_docker_healthcheck_passes_on_a_ready_worker(ready_worker):
    result = docker_healthcheck(ready_worker.port)
    assert result.returncode == 0, result.stdout
    assert json.loads(result.stdout)["ready"] is True


def test_docker_healthcheck_fails_when_nothing_answers():
    result = docker_healthcheck(free_port())
    assert result.returncode == 1
    assert "/readyz" in result.stdout


# --- readyz during outages -----------------------------------------------------------


def test_readyz_names_redis_while_it_is_down_and_recovers():
    redis = RedisServer()
    worker = Worker(Database(), {**TEST_ENV, "REDIS_URL": redis.url}, server="uvicorn", name="redis-outage")
    try:
        assert readiness(worker)[0] == 200

        redis.stop()
        status, body = wait_for_readiness(worker, lambda s, b: s == 503, "readyz to notice Redis is down")
        assert body["ready"] is False
        assert body["redis"].startswith("unreachable")
        assert body["database"] == "ok" and body["draining"] is False
        # Docker marks such a worker unhealthy, and says why.
        result = docker_healthcheck(worker.port)
        assert result.returncode == 1 and '"redis": "unreachable' in result.stdout

        redis.start()  # same port
        status, body = wait_for_readiness(worker, lambda s, b: s == 200, "readyz to see Redis back")
        assert body == {"ready": True, "database": "ok", "redis": "ok", "draining": False}
    finally:
        worker.stop()
        worker.database.drop()
        redis.stop()


METRICS_TOKEN = "tests-only-metrics-token-3f9a1c7e5b2d4f60"
PUBLIC = {"X-Forwarded-For": "203.0.113.50"}  # a client through the proxy: not allowed to read /metrics


@pytest.fixture
def postgres_worker(private_postgres):
    """A uvicorn worker whose database lives on the private PostgreSQL server, behind a proxy (the test)."""
    db = Database(private_postgres.admin_url)
    env = {**TEST_ENV, "PEERJS_PROXIED": "1", "PEERJS_METRICS_TOKEN": METRICS_TOKEN}
    worker = Worker(db, env, server="uvicorn", name="pg-outage")
    yield worker
    worker.stop()
    db.drop()


def test_readyz_names_the_database_while_it_is_down_and_recovers(private_postgres, postgres_worker):
    assert readiness(postgres_worker)[0] == 200
    try:
        private_postgres.stop()
        status, body, _ = readiness(postgres_worker)  # the check connects afresh: no wait needed
        assert status == 503
        assert body["ready"] is False
        assert body["database"].startswith("unreachable")
        assert body["draining"] is False
    finally:
        private_postgres.start()
    status, body, _ = readiness(postgres_worker)
    assert status == 200 and body["database"] == "ok"


def test_readyz_tells_anyone_which_part_fails_and_only_a_metrics_reader_why(private_postgres, postgres_worker):
    port = str(private_postgres.port)
    try:
        private_postgres.stop()
        status, body, _ = readiness(postgres_worker, PUBLIC)
        assert status == 503
        assert body == {"ready": False, "database": "unreachable", "redis": "not used", "draining": False}
        # Whoever may read /metrics (the bearer token, or an allowed address) reads why.
        status, body, _ = readiness(postgres_worker, {**PUBLIC, "Authorization": f"Bearer {METRICS_TOKEN}"})
        assert status == 503 and body["database"].startswith("unreachable: ") and port in body["database"]
        assert port in readiness(postgres_worker)[1]["database"]  # from 127.0.0.1, in PEERJS_METRICS_ALLOW
    finally:
        private_postgres.start()
    logged = [line for line in postgres_worker.read_log().splitlines() if "readiness: database unreachable: " in line]
    assert logged and port in logged[0]  # the operator's log has the details
    status, body, _ = readiness(postgres_worker, PUBLIC)
    assert status == 200 and body == {"ready": True, "database": "ok", "redis": "not used", "draining": False}


def postmaster_pid(pg):
    return int(Path(pg.dir, "data", "postmaster.pid").read_text().split()[0])


def test_readyz_answers_in_bounded_time_when_the_database_hangs(private_postgres, postgres_worker):
    # A frozen server accepts TCP connections and never answers, like a
    # database behind a dead link: the probe must not hang with it.
    pid = postmaster_pid(private_postgres)
    os.kill(pid, signal.SIGSTOP)
    try:
        for _ in range(3):  # hung checks must not make later probes slower
            started = time.monotonic()
            status, body, _ = readiness(postgres_worker)
            elapsed = time.monotonic() - started
            assert status == 503
            assert body["database"] == f"unreachable: no answer within {PROBE_BOUND:g} s"
            assert elapsed < PROBE_BOUND + 1.5, f"the probe took {elapsed:.1f} s"
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_for_readiness(postgres_worker, lambda s, b: s == 200, "readyz after the database thawed")


# --- readyz while draining ---------------------------------------------------------------


@contextlib.contextmanager
def drain_held_up(database, worker_name):
    """Hold the lock the draining worker needs to delete its registry row.

    Its drain then waits (up to the hub's 10 s bound) while reads, and so the
    readiness check, go on: the drain can be watched instead of raced.
    """
    if database.admin_url:
        import psycopg

        with psycopg.connect(database.url) as conn:  # one transaction until the block ends
            conn.execute("SELECT 1 FROM signaling_worker WHERE name = %s FOR UPDATE", [worker_name])
            yield
            conn.rollback()
    else:
        conn = sqlite3.connect(database.url.removeprefix("sqlite:///"), timeout=20, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")  # the write lock; WAL readers carry on
            yield
            conn.execute("ROLLBACK")
        finally:
            conn.close()


def test_readyz_says_draining_while_a_worker_drains_after_sigterm():
    database = Database()
    worker = Worker(database, TEST_ENV, server="uvicorn", name="draining")
    try:
        assert readiness(worker)[0] == 200
        (name,) = database.query("SELECT name FROM signaling_worker WHERE pid = ?", (worker.proc.pid,))[0]
        with drain_held_up(database, name):
            worker.signal(signal.SIGTERM)
            status, body = wait_for_readiness(worker, lambda s, b: b["draining"], "readyz to say draining")
            assert status == 503
            assert body["ready"] is False
            assert body["database"] == "ok"  # only the drain makes it unready
        # Once the lock is free the drain ends: the row is gone, the worker exits
        # (uvicorn re-raises the SIGTERM it handled, hence no exit status 0).
        assert worker.proc.wait(15) in (0, -signal.SIGTERM)
        assert database.query("SELECT count(*) FROM signaling_worker WHERE name = ?", (name,)) == [(0,)]
    finally:
        worker.stop()
        database.drop()
