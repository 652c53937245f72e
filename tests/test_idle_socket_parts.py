"""signaling.servers.uvicorn's Inbox and Writable on their own: what uvicorn needs of its Queue and Event.

They replace uvicorn's asyncio.Queue and asyncio.Event on every socket to save
an idle peer's memory (docs/performance.md); inside a real worker every socket
test runs on them, and a client that does not read (tests/test_hostile_clients.py)
makes sends wait on Writable.
"""
import asyncio
import types

import pytest

from signaling.servers.uvicorn import Inbox, WebSocketProtocol, Writable

pytestmark = pytest.mark.fast  # the first tier: no server (tests/test_consumer.py)


def read(inbox):
    """WebSocketProtocol.receive on ``inbox``, reading not paused."""
    protocol = types.SimpleNamespace(queue=inbox, read_paused=False)
    return WebSocketProtocol.receive(protocol)


async def test_the_inbox_hands_out_messages_in_order_and_wakes_a_waiting_reader():
    inbox = Inbox()
    inbox.put_nowait(1)
    inbox.put_nowait(2)
    assert [await read(inbox), await read(inbox)] == [1, 2]
    assert inbox.empty() and inbox.items is None  # nothing held while idle
    reader = asyncio.ensure_future(read(inbox))
    await asyncio.sleep(0)
    assert not reader.done()
    inbox.put_nowait(3)
    assert await reader == 3


async def test_two_readers_each_get_a_message_and_a_cancelled_one_leaves_no_trace():
    inbox = Inbox()
    first, second = asyncio.ensure_future(read(inbox)), asyncio.ensure_future(read(inbox))
    await asyncio.sleep(0)
    inbox.put_nowait("a")
    await asyncio.sleep(0)
    assert sorted(r.done() for r in (first, second)) == [False, True]  # one took it, the other waits again
    inbox.put_nowait("b")
    assert sorted([await first, await second]) == ["a", "b"]
    cancelled = asyncio.ensure_future(read(inbox))
    await asyncio.sleep(0)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    assert not inbox.waiters


async def test_writable_holds_sends_while_cleared_and_releases_them_all_when_set():
    writable = Writable()
    assert writable.is_set() and await writable.wait() is True
    writable.clear()
    sends = [asyncio.ensure_future(writable.wait()) for _ in range(2)]
    await asyncio.sleep(0)
    assert not any(s.done() for s in sends)
    writable.set()
    assert await asyncio.gather(*sends) == [True, True]
    assert writable.waiters is None
