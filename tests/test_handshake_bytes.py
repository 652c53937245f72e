"""Which first bytes of a connection the production worker hands straight to its WebSocket protocol.

signaling.servers.uvicorn.HTTPProtocol skips h11 for a handshake that came
whole and is one uvicorn would upgrade; anything else takes uvicorn's path
(a plain request, a handshake still arriving, one written unusually). The
real worker: tests/test_hostile_clients.py (frames behind the handshake) and
every socket test.
"""
import pytest

from signaling.servers.uvicorn import _is_websocket_handshake

pytestmark = pytest.mark.fast  # the first tier: no server (tests/test_consumer.py)

HANDSHAKE = (
    b"GET /peerjs/myapp/peerjs?key=peerjs&id=a&token=t HTTP/1.1\r\nHost: x\r\n{upgrade}\r\n{connection}\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def handshake(upgrade=b"Upgrade: websocket", connection=b"Connection: Upgrade"):
    return HANDSHAKE.replace(b"{upgrade}", upgrade).replace(b"{connection}", connection)


@pytest.mark.parametrize("data", [
    handshake(),
    handshake(b"upgrade: WebSocket", b"connection: keep-alive, Upgrade"),  # Firefox's
    handshake(b"Upgrade:websocket ", b"Connection:upgrade"),
    handshake() + b"\x81\x80\0\0\0\0",  # a frame right behind it
])
def test_a_whole_websocket_handshake_goes_straight_to_the_websocket_protocol(data):
    assert _is_websocket_handshake(data)


@pytest.mark.parametrize("data", [
    b"GET /peerjs/myapp/peerjs/id HTTP/1.1\r\nHost: x\r\n\r\n",  # plain HTTP
    handshake()[:-2],  # not whole yet
    handshake(connection=b"Connection: keep-alive"),  # no upgrade asked for
    handshake(upgrade=b"Upgrade: h2c"),
    handshake(upgrade=b"Upgrade: websocketx"),
    handshake().replace(b"GET ", b"POST ", 1),
    b"",
])
def test_anything_else_takes_uvicorns_path(data):
    assert not _is_websocket_handshake(data)
