"""One worker serving HTTPS and WSS itself, started by deploy/worker-entrypoint.sh
with ASGI_TLS_CERT/ASGI_TLS_KEY (no nginx), under both ASGI servers.

Clients trust only the test's own certificate authority, as a browser trusts
one that mkcert installed.
"""
import json

import pytest

from tests.client import connect
from tests.conftest import TEST_ENV
from tests.servers import BASE, Certificates, Worker

pytestmark = pytest.mark.db


@pytest.fixture(scope="module")
def certificates(tmp_path_factory):
    return Certificates(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module", params=["uvicorn", "daphne"])
def tls_worker(request, certificates):
    env = {**TEST_ENV, "DJANGO_HTTPS": "1", "PEERJS_PROXIED": "0"}
    worker = Worker(env=env, server=request.param, tls=certificates, name=f"tls-{request.param}")
    yield worker
    worker.stop()


def test_the_api_and_pages_answer_over_https(tls_worker):
    status, headers, body = tls_worker.get(f"{BASE}/")
    assert status == 200 and json.loads(body)["name"]
    status, headers, body = tls_worker.get("/")
    assert status == 200 and "<html" in body.lower()
    assert headers["Strict-Transport-Security"] == "max-age=3600"
    # The health check finds its way to a worker that serves only HTTPS.
    from tests.test_health import docker_healthcheck

    result = docker_healthcheck(tls_worker.port, ASGI_TLS_CERT="set")
    assert result.returncode == 0, result.stdout


async def test_signaling_runs_over_wss(tls_worker):
    context = tls_worker.ssl_context
    a = await connect(tls_worker, ssl=context)
    b = await connect(tls_worker, ssl=context)
    try:
        await a.relay("OFFER", b.peer_id, {"sdp": "o"})
        assert await b.recv() == {"type": "OFFER", "src": a.peer_id, "dst": b.peer_id, "payload": {"sdp": "o"}}
    finally:
        await a.close()
        await b.close()
