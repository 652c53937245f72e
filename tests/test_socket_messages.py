"""What the server does with each frame (PROTOCOL.md, "Messages" and the reference's gaps)."""
import asyncio
import contextlib
import datetime
import json

import pytest
import websockets

from tests.client import connect, roundtrip, uid
from tests.servers import wait_until

pytestmark = [pytest.mark.db, pytest.mark.postgres]

POLICY, TOO_BIG = 4008, 4009  # 1008 and 1009 where daphne reserves the standard range


@pytest.mark.parametrize("kind", ["OFFER", "ANSWER", "CANDIDATE", "LEAVE", "EXPIRE"])
async def test_relayed_types_reach_dst_with_server_set_src(server, kind):
    a, b = await connect(server), await connect(server)
    payload = {"sdp": "v=0\r\no=- 1 2 IN IP4 127.0.0.1", "connectionId": "dc_1", "metadata": {"x": [1, None]}}
    await a.send({"type": kind, "dst": b.peer_id, "src": "someone-else", "extra": "dropped", "payload": payload})
    assert await b.recv() == {"type": kind, "src": a.peer_id, "dst": b.peer_id, "payload": payload}


async def test_heartbeat_is_not_relayed_and_keeps_the_socket(server):
    a, b = await connect(server), await connect(server)
    await a.send({"type": "HEARTBEAT"})
    await roundtrip(a, b)  # b's first frame is the CANDIDATE: nothing came of the HEARTBEAT
    await roundtrip(b, a)


async def test_message_for_offline_peer_is_delivered_when_it_connects(server):
    a, later = await connect(server), uid()
    await a.relay("OFFER", later, {"sdp": "x"})
    await roundtrip(a, await connect(server))  # the OFFER was handled before this
    b = await connect(server, peer_id=later)
    assert await b.recv() == {"type": "OFFER", "src": a.peer_id, "dst": later, "payload": {"sdp": "x"}}


async def test_leave_and_expire_for_offline_peer_are_dropped(server):
    a, later = await connect(server), uid()
    await a.relay("LEAVE", later)
    await a.relay("EXPIRE", later)
    await a.relay("OFFER", later, "kept")
    await roundtrip(a, await connect(server))
    b = await connect(server, peer_id=later)
    assert (await b.recv())["payload"] == "kept"  # the first frame after OPEN


async def test_unclaimed_messages_expire_with_one_expire_per_sender(server):
    a, c, nobody = await connect(server), await connect(server), uid()
    for n in range(3):
        await a.relay("CANDIDATE", nobody, n)
    await c.relay("OFFER", nobody, "c")
    assert await a.recv(timeout=5) == {"type": "EXPIRE", "src": nobody, "dst": a.peer_id}
    assert await c.recv(timeout=5) == {"type": "EXPIRE", "src": nobody, "dst": c.peer_id}
    # Exactly one each: the next frame either gets is a fresh relay.
    await roundtrip(c, a)
    await roundtrip(a, c)
    # And the expired messages are gone: the late peer gets only OPEN and new frames.
    late = await connect(server, peer_id=nobody)
    await roundtrip(a, late)


async def test_leave_without_dst_unregisters_the_sender(server):
    a = await connect(server)
    await a.send({"type": "LEAVE"})
    code, frames = await a.closed()
    assert code == 1000 and frames == []
    # The id is free: another client may take it.
    await connect(server, peer_id=a.peer_id, token="someone-else")


async def test_relay_to_a_dead_registration_waits_for_the_peer_then_expires(server, database):
    """A registration whose socket no longer exists (its worker died without
    cleaning up): the frame waits in the queue for the peer to come back,
    and its sender hears EXPIRE when it does not. No LEAVE: the PeerJS client
    would close its live connections with that peer, which may well have
    outlived its signaling socket. The dead worker's row is reaped.
    """
    ghost = uid("ghost")
    database.query(
        "INSERT INTO signaling_peer (peer_id, key, token_hash, worker, connection, address, connected_at, last_seen)"
        " VALUES (?, 'peerjs', 'x', 'crashed-worker', 'c0', NULL, ?, ?)",
        (ghost, datetime.datetime.now(datetime.UTC), datetime.datetime.now(datetime.UTC)),
    )
    a = await connect(server)
    await a.relay("OFFER", ghost, "hello?")
    assert await a.recv(timeout=5) == {"type": "EXPIRE", "src": ghost, "dst": a.peer_id}
    wait_until(lambda: not database.query("SELECT 1 FROM signaling_peer WHERE peer_id = ?", (ghost,)), 5, "row reaped")
    await connect(server, peer_id=ghost, token="a-stranger")  # the id is free


async def test_peer_closing_while_a_message_is_in_flight_never_means_silence_nor_leave(make_server):
    """The message reaches the closing peer before its close, or the sender hears EXPIRE.

    On the production worker (uvicorn), which reports a write to a socket it
    knows is closed. daphne drops such a write without a word (docs/cluster.md,
    failure modes), so ``manage.py runserver`` cannot make this promise.
    """
    server = make_server(server="uvicorn", own=True)
    for _round in range(10):
        a, b = await connect(server), await connect(server)
        b_frames = asyncio.create_task(b.closed())  # everything b receives until closed
        await asyncio.gather(b.ws.close(), a.relay("OFFER", b.peer_id, "racing"))
        _code, received = await b_frames
        if any(f.get("payload") == "racing" for f in received):
            continue
        assert await a.recv(timeout=5) == {"type": "EXPIRE", "src": b.peer_id, "dst": a.peer_id}


async def test_message_to_a_peer_that_just_closed_ends_in_expire(server):
    for _round in range(5):
        a, b = await connect(server), await connect(server)
        await b.close()
        await a.relay("OFFER", b.peer_id, "too late")
        assert await a.recv(timeout=5) == {"type": "EXPIRE", "src": b.peer_id, "dst": a.peer_id}


async def test_a_socket_that_closes_tells_nobody(server, database):
    """No LEAVE when a peer leaves the server: PeerJS would close its live connections.

    b closes right after the last ICE candidates reached it, which is what a
    PeerJS peer that disconnects once connected does.
    """
    a, b, c = await connect(server), await connect(server), await connect(server)
    for n in range(3):
        await a.relay("CANDIDATE", b.peer_id, n)
    for n in range(3):
        await b.expect("CANDIDATE")
    await b.close()
    wait_until(lambda: not database.query("SELECT 1 FROM signaling_peer WHERE peer_id = ?", (b.peer_id,)), 5, "b gone")
    await roundtrip(c, a)  # a's next frame is c's: nothing about b came first


async def test_any_frame_counts_as_a_sign_of_life(make_server):
    worker = make_server({"PEERJS_ALIVE_TIMEOUT": "1500"})
    silent, chatty, listener = await connect(worker), await connect(worker), await connect(worker)
    # chatty sends only relayed frames, never HEARTBEAT, for longer than alive_timeout.
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 3
    while loop.time() < deadline:
        await roundtrip(chatty, listener)
        await listener.send({"type": "HEARTBEAT"})
        await asyncio.sleep(0.2)  # pacing the traffic, not synchronising
    code, _ = await silent.closed(timeout=5)
    assert code == 4101
    await roundtrip(chatty, listener)


async def test_alive_timeout_frees_the_id(make_server):
    worker = make_server({"PEERJS_ALIVE_TIMEOUT": "1000"})
    silent = await connect(worker)
    code, _ = await silent.closed(timeout=5)
    assert code == 4101
    wait_until(lambda: not worker.database.query("SELECT 1 FROM signaling_peer WHERE peer_id = ?", (silent.peer_id,)), 5, "row")
    await connect(worker, peer_id=silent.peer_id, token="someone-else")


@pytest.mark.parametrize(
    "frame, msg",
    [
        ("not json", "Invalid message: not JSON"),
        ("null", "Invalid message: not a JSON object"),
        ("123", "Invalid message: not a JSON object"),
        ('"text"', "Invalid message: not a JSON object"),
        ("{}", "Invalid message: no type"),
        ('{"type":"HELLO","dst":"x"}', "Invalid message: unknown type 'HELLO'"),
        (b"\x00\x01binary", "Invalid message: binary frames are not supported"),
        # Oversize and for nobody (one for a peer gets EXPIRE: tests/test_socket_edges.py).
        (json.dumps({"type": "HEARTBEAT", "padding": "a" * 300_000}), "Message too big: the limit is 262144 bytes"),
    ],
)
async def test_bad_frames_get_a_precise_error_and_nothing_else_breaks(server, frame, msg):
    a, b, bystander = await connect(server), await connect(server), await connect(server)
    await a.send(frame)
    assert await a.recv() == {"type": "ERROR", "payload": {"msg": msg}}
    await roundtrip(a, b)  # the sender's socket still works
    await roundtrip(bystander, b)  # and so does everyone else's


async def test_frames_for_ids_no_peer_can_hold_expire_like_any_unknown_peer(server):
    """peer.connect(12345) or to an impossible id: EXPIRE (peer-unavailable), never ERROR."""
    a, b = await connect(server), await connect(server)
    await a.send('{"type":"OFFER","payload":{"sdp":"x"},"dst":12345}')
    await a.send('{"type":"CANDIDATE","payload":{},"dst":12345}')
    await a.send('{"type":"OFFER","payload":{},"dst":"' + "z" * 300 + '"}')
    await a.send('{"type":"LEAVE","dst":12345}')
    expires = [await a.recv(timeout=5), await a.recv(timeout=5)]
    assert sorted(expires, key=str) == sorted(
        [{"type": "EXPIRE", "src": 12345, "dst": a.peer_id}, {"type": "EXPIRE", "src": "z" * 300, "dst": a.peer_id}],
        key=str,
    )
    await roundtrip(b, a)  # one EXPIRE per id, and the socket is still open


async def test_lone_surrogates_in_a_payload_are_relayed_as_the_browser_wrote_them(server):
    a, b = await connect(server), await connect(server)
    text = '{"type":"OFFER","payload":{"metadata":{"label":"\\ud83dx"}},"dst":"%s"}' % b.peer_id
    await a.send(text)
    frame = await b.recv()
    assert frame["payload"] == {"metadata": {"label": "\ud83dx"}} and frame["src"] == a.peer_id


async def test_invalid_utf8_closes_only_that_socket(server):
    a, b = await connect(server), await connect(server)
    await a.ws.send(b'{"type":"OFFER","dst":"\xff\xfe"}', text=True)
    code, frames = await a.closed()
    # The WebSocket layer closes it with 1007 and a close frame (under daphne
    # as signaling/servers/daphne.py sets it; tests/test_socket_edges.py has both servers).
    assert code == 1007 and frames == []
    await roundtrip(b, await connect(server))


async def test_a_socket_that_keeps_sending_garbage_is_closed(make_server):
    worker = make_server({"PEERJS_BAD_FRAME_LIMIT": "3"})
    a, b = await connect(worker), await connect(worker)
    for _ in range(3):
        await a.send("garbage")
    code, frames = await a.closed()
    assert code == POLICY and [f["type"] for f in frames] == ["ERROR"] * 3
    await roundtrip(b, await connect(worker))


async def test_repeated_oversize_frames_close_with_too_big(make_server):
    """Oversize frames that are not for a peer get ERROR, and a socket that keeps sending them is closed."""
    worker = make_server({"PEERJS_BAD_FRAME_LIMIT": "2", "PEERJS_MAX_FRAME_BYTES": "1000"})
    a = await connect(worker)
    for _ in range(2):
        await a.send(json.dumps({"type": "HEARTBEAT", "padding": "y" * 2000}))
    code, frames = await a.closed()
    assert code == TOO_BIG and [f["type"] for f in frames] == ["ERROR", "ERROR"]


async def test_a_burst_of_a_thousand_frames_passes(server):
    """A page opening 100 connections at once sends about 1 000 frames in a burst."""
    a, b = await connect(server), await connect(server)
    for n in range(1000):
        await a.relay("CANDIDATE", b.peer_id, n)
    assert [(await b.expect("CANDIDATE"))["payload"] for _ in range(1000)] == list(range(1000))


async def test_a_fast_sender_is_slowed_down_not_cut_off(make_server):
    worker = make_server({"PEERJS_FLOOD_LIMIT": "200", "PEERJS_FLOOD_BURST": "20"})
    a, b = await connect(worker), await connect(worker)
    for n in range(600):  # three seconds' worth at the limit, sent at once
        await a.relay("CANDIDATE", b.peer_id, n)
    assert [(await b.expect("CANDIDATE"))["payload"] for _ in range(600)] == list(range(600))
    await roundtrip(a, b)


async def test_a_sustained_flood_closes_the_socket_and_spares_the_others(make_server):
    worker = make_server({"PEERJS_FLOOD_LIMIT": "50", "PEERJS_FLOOD_BURST": "50", "PEERJS_FLOOD_CUTOFF": "1000"})
    flooder, b, c = await connect(worker), await connect(worker), await connect(worker)

    async def flood():
        with contextlib.suppress(websockets.ConnectionClosed):
            while True:
                await flooder.send({"type": "HEARTBEAT"})
                await asyncio.sleep(0)  # let the reader see the close

    flooding = asyncio.create_task(flood())
    code, frames = await flooder.closed()
    await flooding
    assert code == POLICY and frames[-1] == {"type": "ERROR", "payload": {"msg": "Too many messages: slow down"}}
    await roundtrip(b, c)


@pytest.mark.parametrize("server", ["uvicorn", "daphne"])
async def test_a_client_sending_faster_than_its_socket_is_read_is_held_back_by_tcp_not_in_memory(make_server, server):
    """What the app has not taken yet stays in the client's buffers, not the worker's memory.

    daphne read a socket as fast as its client sent: 120 MB of heartbeats the
    app took one a second of sat in the worker (and parsing them starved its
    event loop until a flooder escaped its cutoff, in a CI run).
    """
    worker = make_server({"PEERJS_FLOOD_LIMIT": "1", "PEERJS_FLOOD_BURST": "1", "PEERJS_FLOOD_CUTOFF": "600000"}, server=server)
    flooder, b, c = await connect(worker), await connect(worker), await connect(worker)
    before = rss_mb(worker)
    frame = json.dumps({"type": "HEARTBEAT", "padding": "x" * 200_000})

    async def flood():
        for _ in range(600):
            await flooder.send(frame)

    # The kernel's buffers on both sides take tens of MB; then the client's sends wait.
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(flood(), 5)
    assert rss_mb(worker) - before < 30
    await roundtrip(b, c)  # the others are read as before
    flooder.ws.transport.abort()


def rss_mb(worker):
    with open(f"/proc/{worker.proc.pid}/status") as status:
        (kb,) = [line.split()[1] for line in status if line.startswith("VmRSS:")]
    return int(kb) / 1024


async def test_full_queue_refuses_with_expire(make_server):
    worker = make_server({"PEERJS_QUEUE_MAX_MESSAGES": "2", "PEERJS_EXPIRE_TIMEOUT": "60000"})
    a, nobody = await connect(worker), uid()
    for n in range(3):
        await a.relay("CANDIDATE", nobody, n)
    assert await a.recv() == {"type": "EXPIRE", "src": nobody, "dst": a.peer_id}
    late = await connect(worker, peer_id=nobody)
    assert [(await late.recv())["payload"] for _ in range(2)] == [0, 1]
