"""Whose address the registry records: X-Forwarded-For only behind our proxy.

Workers are started as production starts them, through
deploy/worker-entrypoint.sh with uvicorn, and the address is read back from
the registry row (what the admin shows operators).
"""
import pytest

from signaling.conf import _validated
from signaling.http import client_address
from tests.client import connect
from tests.conftest import TEST_ENV
from tests.servers import Worker

pytestmark = pytest.mark.db

FORGED = "203.0.113.66"


def address_of(worker, peer_id):
    # Text on SQLite; PostgreSQL's inet column comes back as an ipaddress object.
    return str(worker.database.query("SELECT address FROM signaling_peer WHERE peer_id = ?", (peer_id,))[0][0])


@pytest.fixture(scope="module")
def direct_worker():
    """Not behind a proxy: PEERJS_PROXIED off."""
    worker = Worker(env={**TEST_ENV, "PEERJS_PROXIED": "0"}, server="uvicorn", name="direct")
    yield worker
    worker.stop()


@pytest.fixture(scope="module")
def proxied_worker():
    """Behind a proxy on 127.0.0.1, the default trusted proxy address."""
    worker = Worker(env={**TEST_ENV, "PEERJS_PROXIED": "1"}, server="uvicorn", name="proxied")
    yield worker
    worker.stop()


@pytest.fixture(scope="module")
def worker_behind_another_proxy():
    """PEERJS_PROXIED on, but the trusted proxy is elsewhere: these test sockets come past it."""
    env = {**TEST_ENV, "PEERJS_PROXIED": "1", "PEERJS_TRUSTED_PROXIES": "192.0.2.1"}
    worker = Worker(env=env, server="uvicorn", name="elsewhere")
    yield worker
    worker.stop()


async def test_a_client_that_comes_past_the_proxy_is_known_by_its_own_address(worker_behind_another_proxy):
    peer = await connect(worker_behind_another_proxy, additional_headers={"X-Forwarded-For": FORGED})
    try:
        assert address_of(worker_behind_another_proxy, peer.peer_id) == "127.0.0.1"
    finally:
        await peer.close()


async def test_without_a_proxy_a_forged_forwarded_for_is_ignored(direct_worker):
    # The request comes from 127.0.0.1, which uvicorn trusts by default.
    peer = await connect(direct_worker, additional_headers={"X-Forwarded-For": FORGED})
    try:
        assert address_of(direct_worker, peer.peer_id) == "127.0.0.1"
    finally:
        await peer.close()


async def test_behind_the_proxy_the_last_line_s_last_entry_counts(proxied_worker):
    # A client's own line first, then the line a proxy appended: only the
    # proxy's entry (the last of the last line) is one we can believe.
    headers = [
        ("X-Forwarded-For", f"{FORGED}, 198.51.100.1"),
        ("X-Forwarded-For", "192.0.2.10, 192.0.2.20"),
    ]
    peer = await connect(proxied_worker, additional_headers=headers)
    try:
        assert address_of(proxied_worker, peer.peer_id) == "192.0.2.20"
    finally:
        await peer.close()


def test_client_address_rules():
    def scope(*lines, peer="10.0.0.5"):
        return {"client": (peer, 4000), "headers": [(b"x-forwarded-for", line) for line in lines]}

    direct = _validated({})
    proxied = _validated({"PROXIED": True, "TRUSTED_PROXIES": ["10.0.0.0/24"]})
    assert client_address(scope(b"1.1.1.1"), direct) == "10.0.0.5"
    assert client_address(scope(b"1.1.1.1, 2.2.2.2"), proxied) == "2.2.2.2"
    assert client_address(scope(b"1.1.1.1, 2.2.2.2", b"3.3.3.3 , 4.4.4.4 "), proxied) == "4.4.4.4"
    assert client_address(scope(), proxied) == "10.0.0.5"  # no header: the proxy's own request
    assert client_address(scope(b"1.1.1.1, not-an-address"), proxied) is None
    # A client that reaches the worker past the proxy is known by its own address.
    assert client_address(scope(b"2.2.2.2", peer="198.51.100.7"), proxied) == "198.51.100.7"
    anyone = _validated({"PROXIED": True, "TRUSTED_PROXIES": ["*"]})
    assert client_address(scope(b"2.2.2.2", peer="198.51.100.7"), anyone) == "2.2.2.2"
