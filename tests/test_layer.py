"""signaling.layer's rounds on a real redis-server: in order, none stalled.

The cluster tests cover the layer between worker processes; these look at
one event loop's rounds, where an ordering slip would be hard to see there.
"""
import asyncio

import pytest

from signaling.layer import RedisBatchLayer


class Inbox:
    def __init__(self):
        self.messages = []
        self.changed = asyncio.Event()

    def take(self, batch):
        self.messages.extend(message["n"] for message in batch)
        self.changed.set()

    async def until(self, count):
        while len(self.messages) < count:
            self.changed.clear()
            await self.changed.wait()


@pytest.fixture
async def layer(redis_server):
    layer = RedisBatchLayer(url=redis_server.url)
    yield layer
    await layer.close()


async def test_flushed_while_a_round_is_answered_does_not_stall_the_next(layer):
    inbox = Inbox()
    await layer.listen("inbox", on_messages=inbox.take)
    layer.send_nowait("inbox", {"n": 0})
    # One turn of the event loop: the round scheduled for the end of the
    # previous one is sent, and awaits its reply while flushed() is asked
    # with nothing more to send.
    await asyncio.sleep(0)
    await asyncio.wait_for(layer.flushed(), 5)
    layer.send_nowait("inbox", {"n": 1})
    await asyncio.wait_for(layer.flushed(), 5)
    await asyncio.wait_for(inbox.until(2), 5)
    assert inbox.messages == [0, 1]


async def test_messages_put_over_many_turns_arrive_once_each_in_order(layer):
    inbox = Inbox()
    await layer.listen("inbox", on_messages=inbox.take)
    count = 0
    for _turn in range(200):
        for _ in range(10):
            layer.send_nowait("inbox", {"n": count})
            count += 1
        await asyncio.sleep(0)  # the next ones are put while a round awaits its reply
    await asyncio.wait_for(inbox.until(count), 10)
    assert inbox.messages == list(range(count))
    await asyncio.wait_for(layer.settled("inbox"), 10)
    assert layer.in_flight() == 0
