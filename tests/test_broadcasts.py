"""signaling.broadcasts on channels-redis and a real redis-server: a hub's groups beside a site's own.

The workers' tests (tests/test_cluster.py) send operators' Disconnects
through the admin; these look at one process's default layer, where the
hub's channel and the site's consumers share channels-redis' reads.
"""
import asyncio

import pytest
from channels_redis.core import RedisChannelLayer

from signaling import broadcasts, conf


class Heard:
    def __init__(self):
        self.messages = []
        self.changed = asyncio.Event()

    def __call__(self, messages):
        self.messages.extend(messages)
        self.changed.set()

    async def next(self):
        await asyncio.wait_for(self.changed.wait(), 5)
        self.changed.clear()
        return self.messages[-1]


@pytest.fixture
async def default_layer(redis_server):
    """The default layer as signaling.conf.channel_layers makes it with REDIS_URL."""
    layer = RedisChannelLayer(**conf.channel_layers({"REDIS_URL": redis_server.url})["default"]["CONFIG"])
    yield layer
    await layer.flush()
    await layer.close_pools()


async def test_a_hub_in_its_groups_leaves_the_sites_consumers_their_messages(default_layer):
    heard = Heard()
    hub = broadcasts.Membership(default_layer, "w1", 60, heard)
    await hub.start()
    try:
        await asyncio.wait_for(until_joined(default_layer), 5)
        # A consumer of the site's own, in a group of its own, in the same process.
        room = await default_layer.new_channel()
        await default_layer.group_add("room.lobby", room)
        await default_layer.group_send("room.lobby", {"type": "room.said", "text": "hello"})
        assert (await asyncio.wait_for(default_layer.receive(room), 5))["text"] == "hello"
        await default_layer.group_send(broadcasts.hub_group("w1"), broadcasts.close_message("c1", 4102, "bye"))
        assert (await heard.next())["connection"] == "c1"
        await default_layer.group_send(broadcasts.EVERY_HUB, {"type": broadcasts.BANS})
        assert (await heard.next())["type"] == broadcasts.BANS
    finally:
        await hub.stop()


async def test_a_hub_joins_its_groups_again_once_redis_forgot_them(default_layer):
    heard = Heard()
    hub = broadcasts.Membership(default_layer, "w1", 0.05, heard)
    await hub.start()
    try:
        await asyncio.wait_for(until_joined(default_layer), 5)
        await default_layer.flush()  # what a restarted Redis without persistence holds: no group
        await asyncio.wait_for(until_joined(default_layer), 5)
        await default_layer.group_send(broadcasts.hub_group("w1"), broadcasts.close_message("c2", 4102, "bye"))
        assert (await heard.next())["connection"] == "c2"
    finally:
        await hub.stop()


async def until_joined(layer):
    """Until every hub's group has a member (channels-redis keeps a group in the sorted set asgi:group:NAME)."""
    while True:
        async with layer.connection(0) as connection:
            if await connection.zcard(f"asgi:group:{broadcasts.EVERY_HUB}"):
                return
        await asyncio.sleep(0.01)  # polling Redis: it sends no event when a group changes
