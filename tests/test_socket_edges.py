"""What the WebSocket layers of both servers do with what no PeerJS client sends.

Each case runs on the server where it happens: daphne (``manage.py
runserver``) and uvicorn as production runs it (deploy/worker-entrypoint.sh).
Whatever a client sends, it hears why it is refused -- an HTTP status, an
ERROR frame or a close frame with a code -- never a dropped connection, and
the worker logs no traceback for it. signaling/servers/ adapts the servers
where they fell short. The options are the defaults.
"""
import asyncio
import contextlib
import json

import pytest
import websockets

from tests.client import connect, roundtrip, socket_url, uid

pytestmark = pytest.mark.db

SERVERS = ["daphne", "uvicorn"]
MAX_FRAME = 256 * 1024  # PEERJS_MAX_FRAME_BYTES: relayed
MAX_MESSAGE = 1024 * 1024  # PEERJS_MAX_MESSAGE_BYTES: refused at the frame header


@pytest.fixture(params=SERVERS)
def worker(request, make_server):
    return make_server(server=request.param)


def server_of(worker):
    return worker.env["ASGI_SERVER"]


def assert_no_traceback(worker):
    log = worker.read_log()
    assert "Traceback" not in log, log


async def test_invalid_utf8_is_closed_with_1007_and_a_close_frame(worker):
    a, b = await connect(worker), await connect(worker)
    await a.ws.send(b'{"type":"OFFER","dst":"\xff\xfe"}', text=True)
    code, frames = await a.closed()
    assert code == 1007 and frames == []  # a close frame came (code None would mean a dropped connection)
    await roundtrip(b, await connect(worker))
    assert_no_traceback(worker)


def frame_of(kind, dst, size):
    """A frame of exactly ``size`` bytes."""
    frame = json.dumps({"type": kind, "dst": dst, "payload": ""})
    return frame.replace('""', '"' + "x" * (size - len(frame)) + '"')


async def test_frames_over_the_size_limits(worker):
    """The relay cap (256 KiB), and the hard limit (1 MiB) past which the server does not even read a frame."""
    a, b, c = await connect(worker), await connect(worker), await connect(worker)
    await a.send(frame_of("CANDIDATE", b.peer_id, MAX_FRAME))
    assert (await b.expect("CANDIDATE"))["src"] == a.peer_id  # the cap itself passes, src added
    # Over the cap, for a peer (PeerJS's OFFER with an app's 300 KB of
    # metadata): EXPIRE for that message (PeerJS: peer-unavailable), and the
    # socket carries on. An ERROR would end the sender's whole Peer.
    await a.send(frame_of("OFFER", b.peer_id, 300_000))
    assert await a.recv() == {"type": "EXPIRE", "src": b.peer_id, "dst": a.peer_id}
    await roundtrip(a, b)
    await roundtrip(b, a)
    # Over the cap and for nobody: ERROR.
    await a.send(json.dumps({"type": "HEARTBEAT", "padding": "x" * MAX_FRAME}))
    assert await a.recv() == {"type": "ERROR", "payload": {"msg": f"Message too big: the limit is {MAX_FRAME} bytes"}}
    # Over the hard limit: closed with 1009 as the frame arrives, never buffered whole.
    await a.send(frame_of("OFFER", b.peer_id, MAX_MESSAGE + 1))
    code, frames = await a.closed()
    assert code == 1009 and frames == []
    await roundtrip(b, c)
    assert_no_traceback(worker)


# What answers an id too long for the URL: the server's ERROR when the
# request reaches it, else the HTTP layer's status (over websockets' 8 KiB
# line limit under uvicorn, over Twisted's 16 KiB line limit under daphne).
OVERLONG = {
    ("daphne", 10_000): "ERROR",
    ("daphne", 30_000): 400,
    ("uvicorn", 10_000): 414,
    ("uvicorn", 30_000): 414,
}


@pytest.mark.parametrize("length", [10_000, 30_000])
async def test_an_overlong_socket_url_is_answered(worker, length):
    url = socket_url(worker, "a" * length, "token")
    expected = OVERLONG[server_of(worker), length]
    if expected == "ERROR":
        client = await connect(worker, url=url, expect_open=False)
        code, frames = await client.closed()
        assert frames == [{"type": "ERROR", "payload": {"msg": "Invalid id: longer than 255 characters"}}]
        assert code == 4008
    else:
        with pytest.raises(websockets.InvalidStatus) as refused:
            await websockets.connect(url, open_timeout=10)
        assert refused.value.response.status_code == expected
    a, b = await connect(worker), await connect(worker)
    await roundtrip(a, b)
    assert_no_traceback(worker)


async def send_regardless(client, frames):
    """Send ``frames`` back to back, whatever the server has done meanwhile."""
    with contextlib.suppress(websockets.ConnectionClosed):
        for frame in frames:
            await client.ws.send(frame)


async def test_frames_after_the_server_closed_the_socket_are_ignored_quietly(worker):
    b = await connect(worker)
    # After LEAVE the server closes the socket; the client keeps talking.
    leaving = await connect(worker)
    await send_regardless(leaving, ['{"type":"LEAVE"}'] + [json.dumps({"type": "CANDIDATE", "dst": b.peer_id, "payload": n}) for n in range(50)])
    code, _ = await leaving.closed()
    assert code in (1000, 4000)
    # Refused at connect (a wrong key): the client talks before it reads the ERROR.
    refused = await connect(worker, key="wrong", expect_open=False)
    await send_regardless(refused, [json.dumps({"type": "OFFER", "dst": b.peer_id, "payload": n}) for n in range(50)])
    code, frames = await refused.closed()
    assert frames == [{"type": "ERROR", "payload": {"msg": "Invalid key provided"}}] and code in (1008, 4008)
    # Closed for garbage: more garbage, and binary frames, after the close.
    garbage = await connect(worker)
    await send_regardless(garbage, ["not json"] * 30 + [b"\x00\x01"] * 10)
    code, frames = await garbage.closed()
    assert code in (1008, 4008) and {f["type"] for f in frames} == {"ERROR"}
    # Nothing reached b, and the worker carries on.
    c = await connect(worker)
    await roundtrip(c, b)
    await asyncio.sleep(0.5)  # what the server does with the leftovers, it does now
    assert_no_traceback(worker)


async def test_a_handshake_to_another_path_is_refused_quietly(worker):
    """Not the socket's path: 404 under uvicorn (403 under daphne, which lets an app
    answer a handshake no other way), and a line in the log at most once a minute."""
    for n in range(50):
        with pytest.raises(websockets.InvalidStatus) as refused:
            await websockets.connect(f"{worker.ws}/not/the/socket/{n}", open_timeout=10)
        assert refused.value.response.status_code == (404 if server_of(worker) == "uvicorn" else 403)
    a, b = await connect(worker), await connect(worker)
    await roundtrip(a, b)
    log = worker.read_log()
    assert_no_traceback(worker)
    assert log.count("paths that are not the socket") == 1, log


async def test_a_client_that_vanishes_while_it_is_answered_leaves_no_traceback(worker):
    for _ in range(20):
        ws = await websockets.connect(socket_url(worker, uid(), "token"))
        ws.transport.abort()  # gone before OPEN reaches it
    a, b = await connect(worker), await connect(worker)
    await roundtrip(a, b)
    await asyncio.sleep(0.5)
    assert_no_traceback(worker)
