"""The protocol table, in-process: the consumer and the hub under Channels' WebsocketCommunicator.

The first tier (``make test-fast``): no server process, no network, one row
of PROTOCOL.md per test. What a real server adds (its WebSocket layer, close
codes on the wire, timeouts, several workers) is tested against real uvicorn
and daphne workers in tests/test_socket_connect.py, test_socket_messages.py
and the rest.
"""
import asyncio
import json
import threading
import uuid

import pytest
from channels.testing import WebsocketCommunicator

from p2psite.asgi import application

pytestmark = [pytest.mark.fast, pytest.mark.django_db(transaction=True)]

BASE = "/peerjs/myapp"
TIMEOUT = 5


@pytest.fixture(autouse=True)
def short_timers(settings):
    """Expiry and its sweep in tenths of a second, as the real-server tests' workers have them."""
    settings.PEERJS = {**settings.PEERJS, "EXPIRE_TIMEOUT": 500, "CLEANUP_OUT_MSGS": 50}


def uid(prefix="p"):
    return f"{prefix}{uuid.uuid4().hex[:12]}"


class Peer:
    def __init__(self, communicator, peer_id, token):
        self.communicator, self.peer_id, self.token = communicator, peer_id, token

    async def send(self, frame):
        await self.communicator.send_to(text_data=frame if isinstance(frame, str) else json.dumps(frame))

    async def relay(self, kind, dst, payload=None):
        await self.send({"type": kind, "dst": dst, "payload": payload})

    async def recv(self):
        return json.loads(await self.communicator.receive_from(TIMEOUT))

    async def nothing_more(self):
        assert await self.communicator.receive_nothing(0.05)

    async def closed(self):
        """The frames the server sent before it closed the socket, and the close code."""
        frames = []
        while True:
            message = await self.communicator.receive_output(TIMEOUT)
            if message["type"] == "websocket.close":
                return message.get("code"), frames
            frames.append(json.loads(message["text"]))

    async def leave(self):
        await self.communicator.disconnect()


async def open_peer(peer_id=None, token=None, key="peerjs", query=None, expect="OPEN"):
    peer_id = peer_id or uid()
    token = token or uid("t")
    query = query if query is not None else f"key={key}&id={peer_id}&token={token}&version=1.5.5"
    communicator = WebsocketCommunicator(application, f"{BASE}/peerjs?{query}")
    await communicator.connect(TIMEOUT)
    peer = Peer(communicator, peer_id, token)
    if expect:
        frame = await peer.recv()
        assert frame["type"] == expect, frame
    return peer


async def roundtrip(sender, receiver, payload="ping"):
    await sender.relay("CANDIDATE", receiver.peer_id, payload)
    assert await receiver.recv() == {"type": "CANDIDATE", "src": sender.peer_id, "dst": receiver.peer_id, "payload": payload}


# --- connecting -----------------------------------------------------------------------


@pytest.mark.parametrize("query", ["key=peerjs&token=t", "key=peerjs&id=a", "id=a&token=t", "key=peerjs&id=&token=t"])
async def test_missing_id_token_or_key_is_an_error(query):
    peer = await open_peer(query=query, expect=None)
    code, frames = await peer.closed()
    assert frames == [{"type": "ERROR", "payload": {"msg": "No id, token, or key supplied to websocket server"}}]
    assert code == 1008


async def test_an_unknown_key_is_an_error():
    code, frames = await (await open_peer(key="not-the-key", expect=None)).closed()
    assert frames == [{"type": "ERROR", "payload": {"msg": "Invalid key provided"}}] and code == 1008


async def test_an_id_held_with_another_token_is_taken_and_the_holder_is_unaffected():
    holder = await open_peer()
    thief = await open_peer(peer_id=holder.peer_id, token="another", expect=None)
    code, frames = await thief.closed()
    assert frames == [{"type": "ID-TAKEN", "payload": {"msg": "ID is taken"}}] and code == 1008
    await roundtrip(await open_peer(), holder)


async def test_the_concurrent_limit_refuses_the_peer_over_it(settings):
    settings.PEERJS = {**settings.PEERJS, "CONCURRENT_LIMIT": 2}
    held = [await open_peer(), await open_peer()]
    code, frames = await (await open_peer(expect=None)).closed()
    assert frames == [{"type": "ERROR", "payload": {"msg": "Server has reached its concurrent user limit"}}]
    await roundtrip(held[0], held[1])


async def test_an_id_against_the_clients_rule_is_refused_with_the_reason():
    code, frames = await (await open_peer(peer_id="-dash", expect=None)).closed()
    assert frames[0]["type"] == "ERROR" and frames[0]["payload"]["msg"].startswith("Invalid id: use letters and digits")


async def test_the_same_id_and_token_take_over_a_socket_that_is_still_open():
    old = await open_peer()
    new = await open_peer(peer_id=old.peer_id, token=old.token)  # OPEN, where the reference sends nothing
    code, _frames = await old.closed()
    assert code == 4100
    await roundtrip(await open_peer(), new)


async def test_open_is_followed_by_the_queued_messages_oldest_first():
    sender, later = await open_peer(), uid()
    for n in range(3):
        await sender.relay("OFFER" if n == 0 else "CANDIDATE", later, {"n": n})
    await roundtrip(sender, await open_peer())  # the sender's frames were handled before this one
    late = await open_peer(peer_id=later)
    assert [(await late.recv())["payload"]["n"] for _ in range(3)] == [0, 1, 2]


async def test_a_frame_queued_while_its_peer_opens_reaches_it(monkeypatch):
    """The queue's write lands between the claim's read of the queue and its socket going live.

    The write then sees the id registered and asks this worker to drain it
    again, before the claim's result has made the socket routable: that
    drain must wait for the socket, not be dropped (a CI run on PostgreSQL
    lost an OFFER so).
    """
    from signaling import hub as hub_module, registry

    let_write, written = threading.Event(), threading.Event()
    enqueue, claim = registry.enqueue, hub_module._claim_and_take_queues

    def enqueue_when_let(*args, **kwargs):
        assert let_write.wait(TIMEOUT)
        try:
            return enqueue(*args, **kwargs)
        finally:
            written.set()

    def claim_then_let_the_write_land(requests):
        result = claim(requests)  # committed: the queue read found nothing
        if any(r.peer_id == later for r in requests):
            let_write.set()
            assert written.wait(TIMEOUT)  # its result reaches the loop before this one's
        return result

    sender, later = await open_peer(), uid()
    monkeypatch.setattr(registry, "enqueue", enqueue_when_let)
    monkeypatch.setattr(hub_module, "_claim_and_take_queues", claim_then_let_the_write_land)
    await sender.relay("OFFER", later, "kept")
    late = await open_peer(peer_id=later)
    assert await late.recv() == {"type": "OFFER", "src": sender.peer_id, "dst": later, "payload": "kept"}


async def test_a_ban_read_while_a_socket_registers_is_answered_with_its_reason_and_what_it_was_sent_expires(monkeypatch):
    """The worker re-reads its bans (bans.refresh) while a socket's claim is on its way.

    The client hears ERROR with the ban's reason and close 4105, as one banned
    before it opened; closed before its handshake was answered, it had got
    HTTP 403 and nothing else (a CI run's IPv6 ban test so). A frame sent to
    the id meanwhile comes back to its sender as EXPIRE.
    """
    from channels.db import database_sync_to_async

    from signaling import bans, hub as hub_module
    from signaling.hub import get_hub
    from signaling.models import Ban, Peer as PeerRow

    claimed, refreshed = threading.Event(), threading.Event()
    claim = hub_module._claim_and_take_queues

    def claim_then_wait_for_the_ban(requests):
        result = claim(requests)
        if any(r.peer_id == banned for r in requests):
            claimed.set()
            assert refreshed.wait(TIMEOUT)
        return result

    sender, banned = await open_peer(), uid()
    monkeypatch.setattr(hub_module, "_claim_and_take_queues", claim_then_wait_for_the_ban)
    opening = WebsocketCommunicator(application, f"{BASE}/peerjs?key=peerjs&id={banned}&token=t1&version=1.5.5")
    connecting = asyncio.ensure_future(opening.connect(TIMEOUT))
    assert await asyncio.to_thread(claimed.wait, TIMEOUT)
    await sender.relay("OFFER", banned, "while it opens")
    await database_sync_to_async(Ban.objects.create)(peer_id=banned, reason="a test")
    await bans.refresh(get_hub())
    refreshed.set()
    assert await connecting == (True, None)
    code, frames = await Peer(opening, banned, "t1").closed()
    assert frames == [{"type": "ERROR", "payload": {"msg": get_hub().bans.find("peerjs", banned, None).message()}}]
    assert "a test" in frames[0]["payload"]["msg"] and code == 4105
    assert await sender.recv() == {"type": "EXPIRE", "src": banned, "dst": sender.peer_id}
    assert not await database_sync_to_async(PeerRow.objects.filter(peer_id=banned).exists)()


async def test_when_the_inbox_is_heard_again_every_peer_takes_its_queue_before_what_comes_next():
    """While a worker's Redis subscription was broken, another worker queued frames for
    its peer, and the drain it asked for was lost the same way. Once the inbox is heard
    again (signaling.bus.transport), every peer takes its queue, ahead of what arrives then."""
    from channels.db import database_sync_to_async

    from signaling import registry
    from signaling.hub import get_hub

    a, b = await open_peer(), await open_peer()
    limits = registry.Limits(
        expire_ms=5000, per_peer_messages=100, per_peer_bytes=10**6, total_messages=1000, total_bytes=10**7,
    )
    queued = [
        registry.Entry("peerjs", b.peer_id, "elsewhere", json.dumps({"type": "CANDIDATE", "src": "elsewhere", "payload": n}))
        for n in range(3)
    ]
    await database_sync_to_async(registry.enqueue)(queued, limits)
    get_hub().offline.drain_all()
    await a.relay("CANDIDATE", b.peer_id, "after")
    assert [(await b.recv())["payload"] for _ in range(4)] == [0, 1, 2, "after"]


# --- messages ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["OFFER", "ANSWER", "CANDIDATE", "LEAVE", "EXPIRE"])
async def test_relayed_types_reach_dst_with_the_server_setting_src(kind):
    a, b = await open_peer(), await open_peer()
    payload = {"sdp": "v=0", "connectionId": "dc_1", "metadata": {"x": [1, None]}}
    await a.send({"type": kind, "dst": b.peer_id, "src": "someone-else", "extra": "dropped", "payload": payload})
    assert await b.recv() == {"type": kind, "src": a.peer_id, "dst": b.peer_id, "payload": payload}


async def test_a_heartbeat_is_not_relayed():
    a, b = await open_peer(), await open_peer()
    await a.send({"type": "HEARTBEAT"})
    await roundtrip(a, b)  # b's first frame is the CANDIDATE: nothing came of the HEARTBEAT


async def test_leave_and_expire_for_an_offline_peer_are_dropped_and_the_rest_queued():
    a, later = await open_peer(), uid()
    await a.relay("LEAVE", later)
    await a.relay("EXPIRE", later)
    await a.relay("OFFER", later, "kept")
    await roundtrip(a, await open_peer())
    assert (await (await open_peer(peer_id=later)).recv())["payload"] == "kept"


async def test_unclaimed_messages_expire_with_one_expire_per_sender():
    a, c, nobody = await open_peer(), await open_peer(), uid()
    for n in range(3):
        await a.relay("CANDIDATE", nobody, n)
    await c.relay("OFFER", nobody, "c")
    assert await a.recv() == {"type": "EXPIRE", "src": nobody, "dst": a.peer_id}
    assert await c.recv() == {"type": "EXPIRE", "src": nobody, "dst": c.peer_id}
    await roundtrip(c, a)  # one each: the next frame is a fresh relay
    await roundtrip(a, c)


async def test_a_frame_for_an_impossible_id_ends_in_expire_not_error():
    a = await open_peer()
    await a.send({"type": "OFFER", "dst": 12345, "payload": "to a number"})
    assert await a.recv() == {"type": "EXPIRE", "src": 12345, "dst": a.peer_id}  # about what it sent


async def test_leave_without_dst_unregisters_the_sender_and_frees_its_id():
    a = await open_peer()
    await a.send({"type": "LEAVE"})
    code, frames = await a.closed()
    assert (code, frames) == (1000, [])
    await open_peer(peer_id=a.peer_id, token="someone-else")


async def test_a_socket_that_closes_tells_nobody():
    a, b = await open_peer(), await open_peer()
    await roundtrip(a, b)
    await a.leave()
    await b.nothing_more()  # no LEAVE: PeerJS would close its live connections with a
    await open_peer(peer_id=a.peer_id, token="someone-else")  # the id came free


@pytest.mark.parametrize(
    "frame, why",
    [
        ("not json", "Invalid message: not JSON"),
        ("null", "Invalid message: not a JSON object"),
        ('{"dst": "x"}', "Invalid message: no type"),
        ('{"type": "HELLO"}', "Invalid message: unknown type 'HELLO'"),
    ],
)
async def test_a_frame_the_server_cannot_use_gets_an_error_and_the_socket_stays(frame, why):
    a, b = await open_peer(), await open_peer()
    await a.send(frame)
    answer = await a.recv()
    assert answer["type"] == "ERROR" and answer["payload"]["msg"].startswith(why), answer
    await roundtrip(a, b)


async def test_a_socket_that_keeps_sending_garbage_is_closed(settings):
    settings.PEERJS = {**settings.PEERJS, "BAD_FRAME_LIMIT": 3}
    a = await open_peer()
    for _ in range(3):
        await a.send("not json")
    code, frames = await a.closed()
    assert [frame["type"] for frame in frames] == ["ERROR"] * 3 and code == 1008
