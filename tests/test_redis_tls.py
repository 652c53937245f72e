"""Redis over TLS (``rediss://``): workers relay through a redis-server that speaks TLS only.

A real redis-server with a TLS port and no plain one, its certificate signed
by a throwaway CA that the workers trust through ``SSL_CERT_FILE`` (as a
managed Redis's CA is trusted on a real machine); two production workers
(uvicorn). Every path that talks to Redis goes over it: the bus between the
workers, the channel layer's groups (an operator's Disconnect), the rate
limits, and the readiness probe.
"""
import json

import pytest

from tests.client import connect, roundtrip
from tests.servers import Certificates, RedisServer
from tests.test_cluster import Cluster, disconnect_in_the_admin

pytestmark = [pytest.mark.cluster, pytest.mark.servers]  # servers of the module's own (tests/conftest.py)


@pytest.fixture(scope="module")
def certificates(tmp_path_factory):
    return Certificates(tmp_path_factory.mktemp("redis-tls"))


@pytest.fixture(scope="module")
def tls_redis(certificates):
    redis = RedisServer(tls=certificates)
    yield redis
    redis.stop()


@pytest.fixture(scope="module")
def cluster(tls_redis, certificates):
    cluster = Cluster(tls_redis, server="uvicorn", env={"SSL_CERT_FILE": str(certificates.ca)})
    yield cluster
    cluster.stop()


async def test_signaling_crosses_workers_through_a_tls_only_redis(cluster, tls_redis):
    assert tls_redis.url.startswith("rediss://")
    w1, w2 = cluster.workers
    a, b = await connect(w1), await connect(w2)
    await roundtrip(a, b)
    await roundtrip(b, a)
    for n in range(20):  # in order across the hop
        await a.relay("CANDIDATE", b.peer_id, n)
    assert [(await b.expect("CANDIDATE"))["payload"] for _ in range(20)] == list(range(20))
    for worker in cluster.workers:
        status, _headers, body = worker.get("/readyz")  # asked with redis-py, as the rate limits are
        assert status == 200 and json.loads(body)["redis"] == "ok", body
        assert "Traceback" not in worker.read_log()


async def test_an_operator_s_disconnect_reaches_the_peer_s_worker_through_tls_redis(cluster):
    """The admin on one worker, the peer on the other: the Channels group message crosses over TLS."""
    w1, w2 = cluster.workers
    await disconnect_in_the_admin(w1, cluster.database, await connect(w2))


async def test_a_worker_that_does_not_trust_the_certificate_is_not_ready_and_says_why(tls_redis):
    """No CA for the Redis certificate: the worker starts, but /readyz says Redis is unreachable, and why."""
    cluster = Cluster(tls_redis, count=1, server="uvicorn")
    try:
        (worker,) = cluster.workers
        status, _headers, body = worker.get("/readyz")
        assert status == 503 and json.loads(body)["redis"].startswith("unreachable"), body
        assert "certificate verify failed" in worker.read_log(), worker.read_log()
    finally:
        cluster.stop()
