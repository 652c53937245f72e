import asyncio
import gc
import os
import signal

import pytest

from tests.cluster_command import STOP_TIMEOUT, TIMEOUT, ClusterCommand, command_line
from tests.servers import Certificates, Database, PrivatePostgres, RedisServer, TurnServer, Worker

# Timers short enough for tests, still in the reference's proportions.
TEST_ENV = {
    "PEERJS_EXPIRE_TIMEOUT": "1000",
    "PEERJS_CLEANUP_OUT_MSGS": "100",
    "PEERJS_WORKER_BEAT": "500",
    "PEERJS_WORKER_TIMEOUT": "3000",
}
# coturn's --static-auth-secret in the TURN tests, and the workers' PEERJS_TURN_SECRET.
TURN_SECRET = "tests-only-turn-secret-8c1f4e2a"


@pytest.fixture(scope="session")
def database(server):
    """The database of the session's ``server``: what a test reads to see what that worker wrote.

    SQLite by default; PostgreSQL when PEERJS_TEST_DATABASE_URL names one
    (a fresh database is created beside it and dropped at the end).
    """
    return server.database


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup):
    """pytest-django's test database; the threads of in-process code let go of it before it is dropped.

    Their connections stay open between calls (CONN_MAX_AGE), and PostgreSQL
    refuses to drop a database one is still on: the pools of each test's hub,
    and the thread Django's async ORM calls run on from a test's event loop.
    """
    yield
    from asgiref.sync import sync_to_async
    from django.db import connections

    from signaling import db

    db.close_all()
    asyncio.run(sync_to_async(connections.close_all)())
    gc.collect()  # connections of threads that ended: Django's DatabaseWrapper is in reference cycles


class Pool:
    """Workers shared by tests, one per set of options, each on a database of its own.

    Two workers without Redis on one database would be two servers that do
    not know of each other sharing a registry: each would sweep the other's
    queue and tell its senders EXPIRE through its own sockets, which do not
    hold them. A worker with Redis is part of a cluster, which brings its own.
    """

    def __init__(self):
        self.workers = {}

    def get(self, env, kwargs):
        key = (tuple(sorted(env.items())), tuple(sorted(kwargs.items())))
        worker = self.workers.get(key)
        if worker is None or worker.proc.poll() is not None:
            database = worker.database if worker is not None else Database()
            worker = self.workers[key] = Worker(database, {**TEST_ENV, **env}, **kwargs)
        return worker

    def stop(self):
        for worker in self.workers.values():
            worker.stop()
            worker.database.drop()


@pytest.fixture(scope="session")
def default_workers():
    """Workers with the default options, shared by the whole session (see make_server)."""
    pool = Pool()
    yield pool
    pool.stop()


@pytest.fixture(scope="module")
def worker_pool():
    """Workers shared by a module's tests, one per set of options (see make_server)."""
    pool = Pool()
    yield pool
    pool.stop()


@pytest.fixture(scope="session")
def server(default_workers):
    """One daphne worker with the default options (short timers)."""
    return default_workers.get({}, {})


@pytest.fixture
def make_server(worker_pool, default_workers):
    """A worker with extra PEERJS_* options (and Worker's keywords, e.g. ``server="uvicorn"``).

    Workers are shared: the tests of a module that ask for the same options
    get the same process (with no extra options: the session's), and keep
    out of each other's way by their keys and ids (tests.client.uid). Each
    has a database of its own (``worker.database``). A test that stops,
    signals or counts on a worker alone (every row: the concurrent limit,
    discovery) asks for ``own=True``: a worker and a database of its own,
    stopped and dropped after the test.
    """
    started, databases = [], []

    def make(env=None, own=False, **kwargs):
        if not own:
            return (worker_pool if env else default_workers).get(env or {}, kwargs)
        db = Database()
        databases.append(db)
        worker = Worker(db, {**TEST_ENV, **(env or {})}, **kwargs)
        started.append(worker)
        return worker

    yield make
    for worker in started:
        worker.stop()
    for db in databases:
        db.drop()


def pytest_runtest_setup(item):
    item.worker_log_marks = {worker: worker.log_mark() for worker in list(Worker.running)}


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed test's report holds what every running worker logged during it: shared workers' logs are long."""
    report = yield
    if report.failed and call.when == "call":
        marks = getattr(item, "worker_log_marks", {})
        for worker in list(Worker.running):
            text = worker.read_log(since=marks.get(worker, 0))
            if text.strip():
                report.sections.append((f"log of {worker.log_path.name} during the test", text[-6000:]))
    return report


@pytest.fixture(scope="session")
def redis_server():
    redis = RedisServer()
    yield redis
    redis.stop()


@pytest.fixture(scope="session")
def private_postgres():
    """A PostgreSQL server the tests may stop and start (never the machine's own)."""
    pg = PrivatePostgres()
    yield pg
    pg.destroy()


@pytest.fixture(scope="session")
def turn_server():
    """A real coturn on loopback for the session, sharing TURN_SECRET with the workers that hand out credentials."""
    turn = TurnServer(TURN_SECRET)
    yield turn
    turn.stop()


@pytest.fixture(scope="session")
def tls_cluster(tmp_path_factory):
    """`make cluster` with TLS, once for the session: nginx serves HTTPS and WSS
    on ``tls_port`` with a certificate from the tests' own CA (``tls``), in
    front of two daphne workers on a private Redis; plain HTTP on ``port``
    redirects there. Shared by tests/test_cluster_command.py and the browser
    tests (one xdist group), because it takes a while to start. A test that
    may be the first to use it needs a timeout of CLUSTER_TEST_TIMEOUT
    (tests/cluster_command.py).

    It is started by ``make cluster`` and ends as the script's summary says
    (kill PID), and the teardown checks that it stopped every process it
    started, without an error (the daphne side of tests/test_cluster_command.py's
    test_make_cluster_stops_every_process_it_started_without_an_error).
    """
    from tests.test_cluster_command import assert_stopped_cleanly

    root = tmp_path_factory.mktemp("tls-cluster")
    command = ClusterCommand(root, server="daphne", tls=Certificates(root / "certificates"), make=True)
    try:
        command.wait_ready()
        yield command
        assert sum(" -m signaling.servers.daphne " in command_line(pid) for pid, _ in command.processes) == 2
        # The kill the script's summary prints.
        os.kill(command.script_pid, signal.SIGTERM)
        assert command.proc.wait(STOP_TIMEOUT) == 0, command.output
        assert command.ended.wait(TIMEOUT)
        assert_stopped_cleanly(command)
    finally:
        command.kill_leftovers()


# Fixtures that start server processes: a test that uses one is not of the first tier (-m "fast and not servers").
SERVERS = {"server", "database", "make_server", "worker_pool", "default_workers", "redis_server", "private_postgres", "turn_server", "tls_cluster", "chromium"}


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """How pytest-xdist (``--dist loadgroup``, scripts/test.sh) shares the tests out.

    A module's tests run in one process by default, so that its module-scoped
    servers start once. A module may say otherwise with ``XDIST_GROUPS``:

    - ``"test"``: its tests own their servers; spread them over the processes;
    - ``"fixture:NAME"``: the tests that use fixture NAME (a module-scoped
      server) run together, the others are spread;
    - ``"param:NAME"``: one group per value of parameter NAME (each value's
      servers start once, in a process of its own).
    """
    for item in items:
        if SERVERS & set(item.fixturenames):
            item.add_marker(pytest.mark.servers)  # out of the first tier, whatever its module says
        if item.get_closest_marker("xdist_group"):
            continue
        if "tls_cluster" in item.fixturenames:  # one session-wide cluster: its users in one process
            item.add_marker(pytest.mark.xdist_group("tls_cluster"))
            continue
        how = getattr(item.module, "XDIST_GROUPS", "module")
        group = item.module.__name__
        if how == "test":
            continue
        if how.startswith("fixture:"):
            fixture = how.split(":", 1)[1]
            if fixture not in item.fixturenames:
                continue
            group += f"[{fixture}]"
        elif how.startswith("param:"):
            callspec = getattr(item, "callspec", None)
            name = how.split(":", 1)[1]
            if callspec is not None and name in callspec.params:
                group += f"[{callspec.params[name]}]"
        item.add_marker(pytest.mark.xdist_group(group))
