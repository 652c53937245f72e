"""The HTTP API under the seed's base, against a real daphne."""
import json
import re
import urllib.error
import urllib.request

import pytest

from tests.client import connect
from tests.servers import BASE

pytestmark = pytest.mark.db

UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def get(worker, path, headers=None, method="GET"):
    request = urllib.request.Request(worker.http + path, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read().decode()


def test_info_names_the_server(server):
    status, headers, body = get(server, f"{BASE}/")
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert set(json.loads(body)) == {"name", "description", "website"}


def test_id_is_a_fresh_uuid4_each_time(server):
    ids = {get(server, f"{BASE}/peerjs/id?ts=123&version=1.5.5")[2] for _ in range(5)}
    assert len(ids) == 5 and all(UUID4.match(i) for i in ids)


async def test_id_is_usable_on_the_socket(server):
    status, _, peer_id = get(server, f"{BASE}/peerjs/id")
    client = await connect(server, peer_id=peer_id)
    await client.close()


def test_wrong_key_for_peers_is_401(server):
    status, _, body = get(server, f"{BASE}/nokey/peers")
    assert status == 401 and body == "Invalid key provided"


async def test_an_id_for_a_wrong_key_is_refused_on_the_socket_with_the_references_message(server):
    """/id answers for any key, as the reference does: the key is checked on the socket.

    A 401 from /id reaches a PeerJS app as an error with an empty message;
    this way it hears "Invalid key provided" (tests/browser shows it).
    """
    status, _, peer_id = get(server, f"{BASE}/nokey/id")
    assert status == 200 and UUID4.match(peer_id)
    client = await connect(server, peer_id=peer_id, key="nokey", expect_open=False)
    code, frames = await client.closed()
    assert frames == [{"type": "ERROR", "payload": {"msg": "Invalid key provided"}}]


def test_peers_is_401_unless_discovery_is_allowed(server):
    status, _, body = get(server, f"{BASE}/peerjs/peers")
    assert status == 401 and "Discovery is not allowed" in body


async def test_peers_lists_connected_ids_with_discovery(make_server):
    worker = make_server({"PEERJS_ALLOW_DISCOVERY": "true"}, own=True)
    a, b = await connect(worker), await connect(worker)
    status, _, body = get(worker, f"{BASE}/peerjs/peers")
    assert status == 200 and sorted(json.loads(body)) == sorted([a.peer_id, b.peer_id])
    await b.close()
    await a.ws.send('{"type":"HEARTBEAT"}')  # b's close is processed; the list follows
    # The list is read from the registry: wait for b's row to go.
    from tests.servers import wait_until

    wait_until(lambda: json.loads(get(worker, f"{BASE}/peerjs/peers")[2]) == [a.peer_id], 10, "b to leave the list")


def test_cors_allows_any_origin_by_default(server):
    _, headers, _ = get(server, f"{BASE}/peerjs/id", {"Origin": "http://elsewhere.example"})
    assert headers["Access-Control-Allow-Origin"] == "*"


def test_cors_preflight_is_answered(server):
    status, headers, _ = get(
        server, f"{BASE}/peerjs/id", {"Origin": "http://a.example", "Access-Control-Request-Method": "GET"}, "OPTIONS"
    )
    assert status == 204 and "GET" in headers["Access-Control-Allow-Methods"]


async def test_cors_origin_list_governs_http_and_socket(make_server):
    worker = make_server({"PEERJS_CORS_ORIGINS": "http://stage.example, http://booth.example"})
    _, headers, _ = get(worker, f"{BASE}/peerjs/id", {"Origin": "http://booth.example"})
    assert headers["Access-Control-Allow-Origin"] == "http://booth.example"
    _, headers, _ = get(worker, f"{BASE}/peerjs/id", {"Origin": "http://evil.example"})
    assert "Access-Control-Allow-Origin" not in headers
    await connect(worker, origin="http://stage.example")
    import websockets

    with pytest.raises(websockets.InvalidStatus) as refused:
        await connect(worker, origin="http://evil.example")
    assert refused.value.response.status_code == 403
