"""IPv6 clients: workers and nginx listen on both families, and an IPv6 client counts as its network.

The families are real: workers started as production starts them (ASGI_HOST
unset) are reached over 127.0.0.1 and over ::1. Clients spread over one IPv6
/64 are played with X-Forwarded-For on workers with PEERJS_PROXIED on (the
rule the server takes every address by), so that a test can have many
addresses of one network without a network of its own.
"""
import asyncio
import datetime
import itertools
import uuid

import pytest

from signaling import conf
from signaling.http import client_group
from tests.client import Client, connect, roundtrip, uid
from tests.conftest import TEST_ENV
from tests.servers import BASE, Database, Nginx, Worker, http_get

pytestmark = pytest.mark.db

_networks = itertools.count(1)


def network():
    """A /64 of the documentation range no other test uses, as a prefix to append a host part to."""
    return f"2001:db8:{next(_networks):x}:1::"


def xff(address):
    return {"X-Forwarded-For": address}


# --- what a client is -----------------------------------------------------------


def test_an_ipv6_client_is_its_network_and_an_ipv4_client_its_address():
    o = conf._validated({})
    assert client_group("203.0.113.5", o) == "203.0.113.5"
    assert client_group("2001:db8:1:2:aaaa:bbbb:cccc:dddd", o) == "2001:db8:1:2::"
    assert client_group("2001:db8:1:2::1", o) == client_group("2001:db8:1:2:ffff::9", o)
    assert client_group("2001:db8:1:3::1", o) != client_group("2001:db8:1:2::1", o)
    assert client_group("::ffff:198.51.100.7", o) == "198.51.100.7"  # a dual-stack socket's IPv4 client
    assert client_group(None, o) is None
    wider = conf._validated({"IPV6_PREFIX": 48})
    assert client_group("2001:db8:1:3::1", wider) == client_group("2001:db8:1:2::1", wider) == "2001:db8:1::"
    exact = conf._validated({"IPV6_PREFIX": 128})
    assert client_group("2001:db8:1:2::1", exact) == "2001:db8:1:2::1"


def test_a_prefix_longer_than_an_address_stops_start_up():
    with pytest.raises(conf.ImproperlyConfigured, match="PEERJS_IPV6_PREFIX"):
        conf._validated({"IPV6_PREFIX": 129})


# --- both families, on real sockets ------------------------------------------------


@pytest.fixture(scope="module", params=["uvicorn", "daphne"])
def dual_stack(request):
    """A worker started with ASGI_HOST unset, as the image starts it."""
    worker = Worker(Database(), TEST_ENV, server=request.param, host=None, name=f"dual-{request.param}")
    yield worker
    worker.stop()
    worker.database.drop()


def socket_url(worker, host, peer_id, token):
    return f"ws://{host}:{worker.port}{BASE}/peerjs?key=peerjs&id={peer_id}&token={token}&version=1.5.5"


async def connect_from(worker, host, peer_id=None, expect_open=True):
    peer_id, token = peer_id or uid(), uuid.uuid4().hex[:10]
    return await connect(worker, peer_id, token, url=socket_url(worker, host, peer_id, token), expect_open=expect_open)


def recorded_address(worker, peer_id):
    (address,), = worker.database.query("SELECT address FROM signaling_peer WHERE peer_id = ?", (peer_id,))
    return str(address)


async def test_a_worker_serves_both_families_and_records_each_clients_own_address(dual_stack):
    over_v6 = await connect_from(dual_stack, "[::1]")
    over_v4 = await connect_from(dual_stack, "127.0.0.1")
    await roundtrip(over_v6, over_v4)
    await roundtrip(over_v4, over_v6)
    assert recorded_address(dual_stack, over_v6.peer_id) == "::1"
    # daphne's one dual-stack socket sees it as ::ffff:127.0.0.1: the same client.
    assert recorded_address(dual_stack, over_v4.peer_id) == "127.0.0.1"
    for path in ("/healthz", f"{BASE}/"):
        assert http_get(f"http://[::1]:{dual_stack.port}{path}")[0] == 200
    await over_v6.close()
    await over_v4.close()


def test_nginx_listens_on_both_families(dual_stack):
    nginx = Nginx([dual_stack])
    try:
        for host in ("127.0.0.1", "[::1]"):
            status, _, body = http_get(f"http://{host}:{nginx.port}{BASE}/")
            assert status == 200 and "PeerJS" in body, host
    finally:
        nginx.stop()


async def test_a_ban_of_an_ipv6_address_refuses_its_whole_network(make_server):
    worker = make_server({"PEERJS_BAN_REFRESH": "200"}, own=True, server="uvicorn", host=None)
    now = datetime.datetime.now(datetime.UTC)
    stamp = now if worker.database.admin_url else now.strftime("%Y-%m-%d %H:%M:%S.%f")
    # ::5 is not the client's own address; ::1 is in its /64.
    worker.database.query(
        "INSERT INTO signaling_ban (key, peer_id, address, reason, created_at, created_by, expires_at) "
        "VALUES ('', '', '::5', 'the neighbours', ?, '', NULL)",
        (stamp,),
    )
    deadline = asyncio.get_running_loop().time() + 10
    while True:
        client = await connect_from(worker, "[::1]", expect_open=False)
        first = await client.recv()
        if first["type"] == "ERROR":
            break
        await client.close()
        assert asyncio.get_running_loop().time() < deadline, "the ban never reached ::1"
        await asyncio.sleep(0.05)  # pacing the polls
    assert first["payload"]["msg"].startswith("Banned: this address may not connect")
    assert (await client.closed())[0] == 4105
    await (await connect_from(worker, "127.0.0.1")).close()  # IPv4 is another client


# --- one /64, many addresses ---------------------------------------------------------


@pytest.fixture(scope="module")
def proxied():
    env = {
        **TEST_ENV,
        "PEERJS_PROXIED": "1",
        "PEERJS_RATE_LIMIT_OPENS": "3",
        "PEERJS_RATE_LIMIT_IDS": "3",
        "PEERJS_RATE_LIMIT_WINDOW": "60000",
        "PEERJS_MAX_SOCKETS_PER_ADDRESS": "2",
    }
    worker = Worker(Database(), env, server="uvicorn", name="proxied-v6")
    yield worker
    worker.stop()
    worker.database.drop()


async def open_from(worker, address):
    """A socket from ``address``: the client if it got OPEN, else the ERROR's message."""
    client = await connect(worker, expect_open=False, additional_headers=xff(address))
    first = await client.recv()
    if first["type"] == "OPEN":
        return client
    await client.closed()
    return first["payload"]["msg"]


async def test_fresh_addresses_of_one_network_share_its_rate_limits(proxied):
    net, elsewhere = network(), network()
    for host in (1, 2, 3):
        client = await open_from(proxied, f"{net}{host}")
        assert isinstance(client, Client), client
        await client.close()
    assert "opens too many sockets" in await open_from(proxied, f"{net}4")
    await (await open_from(proxied, f"{elsewhere}1")).close()  # another network: its own budget

    for host in (1, 2, 3):
        assert (await asyncio.to_thread(proxied.get, f"{BASE}/peerjs/id", xff(f"{net}a{host}")))[0] == 200
    assert (await asyncio.to_thread(proxied.get, f"{BASE}/peerjs/id", xff(f"{net}a4")))[0] == 429


async def test_the_socket_cap_counts_a_network_once(proxied):
    # The opens' limit (3 per window) is spent by the network of the test
    # above only; this one has its own.
    net = network()
    held = [await open_from(proxied, f"{net}{host}") for host in (1, 2)]
    assert all(isinstance(client, Client) for client in held), held
    assert await open_from(proxied, f"{net}3") == "Too many connections from your address"
    await held[0].close()
    await held[1].close()
