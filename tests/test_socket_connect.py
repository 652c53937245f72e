"""Checks and answers when a socket connects (PROTOCOL.md, "The socket")."""
import asyncio

import pytest

from tests.client import connect, roundtrip, socket_url, uid
from tests.servers import BASE

pytestmark = [pytest.mark.db, pytest.mark.postgres]

POLICY = 4008  # 1008 policy violation; daphne reserves 1000-2999, so 4000 + 8


@pytest.mark.parametrize("query", ["key=peerjs&token=t", "key=peerjs&id=a", "id=a&token=t", "key=peerjs&id=&token=t", ""])
async def test_missing_id_token_or_key_is_an_error(server, query):
    client = await connect(server, url=f"{server.ws}{BASE}/peerjs?{query}", expect_open=False)
    code, frames = await client.closed()
    assert frames == [{"type": "ERROR", "payload": {"msg": "No id, token, or key supplied to websocket server"}}]
    assert code == POLICY


async def test_invalid_key_is_an_error(server):
    client = await connect(server, key="wrong", expect_open=False)
    code, frames = await client.closed()
    assert frames == [{"type": "ERROR", "payload": {"msg": "Invalid key provided"}}] and code == POLICY


async def test_id_held_with_another_token_is_taken(server):
    holder = await connect(server)
    thief = await connect(server, peer_id=holder.peer_id, token="other", expect_open=False)
    code, frames = await thief.closed()
    assert frames == [{"type": "ID-TAKEN", "payload": {"msg": "ID is taken"}}] and code == POLICY
    other = await connect(server)
    await roundtrip(other, holder)  # the holder is unaffected


async def test_concurrent_limit_refuses_the_peer_over_it(make_server):
    worker = make_server({"PEERJS_CONCURRENT_LIMIT": "2"}, own=True)
    a, _b = await connect(worker), await connect(worker)
    c = await connect(worker, expect_open=False)
    code, frames = await c.closed()
    assert frames == [{"type": "ERROR", "payload": {"msg": "Server has reached its concurrent user limit"}}]
    assert code == POLICY
    await a.close()
    # Once a peer leaves there is room again (its row goes when its socket closes).
    for _attempt in range(100):
        d = await connect(worker, expect_open=False)
        frame = await d.recv()
        if frame["type"] == "OPEN":
            break
        await asyncio.sleep(0.05)  # the freed row is removed asynchronously; poll for it
    assert frame["type"] == "OPEN"


async def test_open_is_followed_by_queued_messages_oldest_first(server):
    sender, later = await connect(server), uid()
    for n in range(3):
        await sender.relay("OFFER" if n == 0 else "CANDIDATE", later, {"n": n})
    # A HEARTBEAT round-trip is not observable; the queue write is awaited
    # before the sender's next frame is read, so a later connect sees all three.
    await roundtrip(sender, await connect(server))
    receiver = await connect(server, peer_id=later)
    frames = [await receiver.recv() for _ in range(3)]
    assert [f["payload"]["n"] for f in frames] == [0, 1, 2]
    assert [f["type"] for f in frames] == ["OFFER", "CANDIDATE", "CANDIDATE"]
    assert all(f["src"] == sender.peer_id and f["dst"] == later for f in frames)


async def test_reconnect_with_same_id_and_token_after_close(server):
    first = await connect(server)
    await first.close()
    again = await connect(server, peer_id=first.peer_id, token=first.token)
    await roundtrip(await connect(server), again)


async def test_same_id_and_token_take_over_a_socket_that_is_still_open(server):
    old = await connect(server)
    sender = await connect(server)
    new = await connect(server, peer_id=old.peer_id, token=old.token)  # gets OPEN: better than the reference
    code, frames = await old.closed()
    assert code == 4100 and frames == []
    await roundtrip(sender, new)


async def test_takeover_gets_queued_messages(server):
    old = await connect(server)
    await old.close()
    sender = await connect(server)
    await sender.relay("OFFER", old.peer_id, "while away")
    await roundtrip(sender, await connect(server))
    new = await connect(server, peer_id=old.peer_id, token=old.token)
    assert (await new.expect("OFFER"))["payload"] == "while away"


async def test_stale_close_never_unregisters_the_newer_owner(server):
    old = await connect(server)
    new = await connect(server, peer_id=old.peer_id, token=old.token)
    await old.closed()
    # The old socket is gone; the id still belongs to the new one.
    thief = await connect(server, peer_id=old.peer_id, token="other", expect_open=False)
    assert (await thief.recv())["type"] == "ID-TAKEN"
    await roundtrip(await connect(server), new)


@pytest.mark.parametrize(
    "peer_id, why",
    [
        ("bad%20id%21", "Invalid id: use letters and digits"),
        ("-dash", "Invalid id: use letters and digits"),
        ("x" * 256, "Invalid id: longer than 255 characters"),
        ("%ff%fe", "Invalid id: use letters and digits"),
        # The rule holds for the whole string: a final newline is not "victim1".
        ("victim1%0A", "Invalid id: use letters and digits"),
    ],
)
async def test_invalid_ids_are_refused_with_the_reason(server, peer_id, why):
    client = await connect(server, url=socket_url(server, peer_id, "tok"), expect_open=False)
    code, frames = await client.closed()
    assert len(frames) == 1 and frames[0]["type"] == "ERROR" and frames[0]["payload"]["msg"].startswith(why)
    assert code == POLICY


async def test_ids_up_to_255_characters_open_and_are_reachable(server):
    """Apps use long ids (the reference has no limit); the registry holds 255."""
    long_id = "x" * 207 + uid() + "-" + "y" * 34
    assert len(long_id) == 255
    peer = await connect(server, peer_id=long_id)
    await roundtrip(await connect(server), peer)


async def test_junk_in_the_query_string_is_ignored(server):
    peer_id = uid()
    url = f"{server.ws}{BASE}/peerjs?key=peerjs&id={peer_id}&token=t&&=&x=%zz&version=1.5.5&id=second"
    client = await connect(server, peer_id=peer_id, url=url)
    await roundtrip(await connect(server), client)


async def test_two_sockets_claiming_one_id_at_once_get_exactly_one_open(server):
    for _round in range(5):
        peer_id = uid()
        clients = await asyncio.gather(
            *(connect(server, peer_id=peer_id, token=f"token{n}", expect_open=False) for n in range(4))
        )
        answers = sorted([(await c.recv())["type"] for c in clients])
        assert answers == ["ID-TAKEN", "ID-TAKEN", "ID-TAKEN", "OPEN"]


async def test_registry_rows_follow_the_sockets(server, database):
    client = await connect(server)
    rows = database.query("SELECT peer_id, key, address, token_hash FROM signaling_peer WHERE peer_id = ?", (client.peer_id,))
    assert len(rows) == 1
    peer_id, key, address, token_hash = rows[0]
    assert (key, str(address)) == ("peerjs", "127.0.0.1")
    assert client.token not in token_hash  # only a hash of the token is stored
    await client.close()
    from tests.servers import wait_until

    wait_until(
        lambda: not database.query("SELECT 1 FROM signaling_peer WHERE peer_id = ?", (client.peer_id,)),
        10,
        "the row of a closed socket to go",
    )


async def test_proxied_takes_the_address_our_proxy_saw(make_server):
    worker = make_server({"PEERJS_PROXIED": "1"})
    client = await connect(worker, additional_headers={"X-Forwarded-For": "6.6.6.6, 203.0.113.7"})
    rows = worker.database.query("SELECT address FROM signaling_peer WHERE peer_id = ?", (client.peer_id,))
    assert [str(address) for (address,) in rows] == ["203.0.113.7"]
