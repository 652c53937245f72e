import os

import pytest

from tests.cluster_command import ClusterCommand
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
def database():
    """A migrated database shared by the server processes of the session.

    SQLite by default; PostgreSQL when PEERJS_TEST_DATABASE_URL names one
    (a fresh database is created beside it and dropped at the end).
    """
    db = Database(os.environ.get("PEERJS_TEST_DATABASE_URL"))
    yield db
    db.drop()


@pytest.fixture(scope="session")
def server(database):
    """One daphne worker with the default options (short timers)."""
    worker = Worker(database, TEST_ENV)
    yield worker
    worker.stop()


@pytest.fixture
def make_server(database):
    """Start a daphne worker with extra PEERJS_* options; stopped after the test.

    ``private=True`` gives it a database of its own, for tests that count
    every row (the concurrent limit, discovery).
    """
    started, databases = [], []

    def make(env=None, private=False, **kwargs):
        db = database
        if private:
            db = Database(os.environ.get("PEERJS_TEST_DATABASE_URL"))
            databases.append(db)
        worker = Worker(db, {**TEST_ENV, **(env or {})}, **kwargs)
        started.append(worker)
        return worker

    yield make
    for worker in started:
        worker.stop()
    for db in databases:
        db.drop()


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
    front of two uvicorn workers on a private Redis; plain HTTP on ``port``
    redirects there. Shared by tests/test_cluster_command.py and the browser
    tests, because it takes a while to start. A test that may be the first to
    use it needs a timeout of CLUSTER_TEST_TIMEOUT (tests/cluster_command.py).
    """
    root = tmp_path_factory.mktemp("tls-cluster")
    command = ClusterCommand(root, tls=Certificates(root / "certificates"))
    try:
        command.wait_ready()
        yield command
    finally:
        command.kill_leftovers()
