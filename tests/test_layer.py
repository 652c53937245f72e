"""signaling.bus on a real redis-server: rounds in order, none stalled; acknowledgements,
duplicates and a Redis Cluster's MOVED.

The cluster tests cover the layer between worker processes; these look at
one event loop's rounds and at each way a batch can fail, where a slip would
be hard to see there.
"""
import asyncio
import collections
import re

import pytest

from signaling.bus import wire
from signaling.bus.layer import RedisBatchLayer
from signaling.bus.transport import GONE, Transport, inbox_name
from tests.servers import RedisCluster, RedisServer, wait_until


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


async def test_a_bound_sender_checks_what_send_nowait_checks_and_needs_a_listening_loop(layer):
    with pytest.raises(RuntimeError, match="receive"):
        layer.sender()
    inbox = Inbox()
    await layer.listen("inbox", on_messages=inbox.take)
    send = layer.sender()
    with pytest.raises(TypeError, match="Channel name"):  # Channels' own check
        send("not a valid name!", {"n": 0})
    with pytest.raises(AssertionError, match="dict"):
        send("inbox", "not a dict")
    send("inbox", {"n": 0})
    send("inbox", {"n": 1})  # a name it has checked already
    await asyncio.wait_for(inbox.until(2), 5)
    assert inbox.messages == [0, 1]
    with pytest.raises(TypeError, match="Channel name"):
        send("still not valid!", {"n": 2})


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


async def subscribed_tap(redis_server, channel):
    """A bare subscriber of the Redis channel ``channel``: it takes what is published there and acknowledges nothing.

    Returns the connection and the list its messages' payloads go to.
    """
    tap = await wire.Connection("127.0.0.1", redis_server.port).open()
    taken, subscribed = [], asyncio.get_running_loop().create_future()

    def pushed(push):
        if push[0] == b"ssubscribe":
            subscribed.set_result(None)
        elif push[0] == b"smessage":
            taken.append(push[2])

    tap.on_push = pushed
    tap.send([("SSUBSCRIBE", channel)])
    await asyncio.wait_for(subscribed, 5)
    return tap, taken


class Lost:
    """What a transport hands back as undelivered: (worker, messages, reason)."""

    def __init__(self):
        self.calls = []
        self.changed = asyncio.Event()

    def __call__(self, worker, messages, reason):
        self.calls.append((worker, [message["n"] for message in messages], reason))
        self.changed.set()


async def test_a_batch_nobody_acknowledges_is_handed_back_after_the_ack_timeout_as_lost(redis_server):
    # The receiving worker took the batch and died with it (or froze): Redis
    # counted a subscriber, so only the missing acknowledgement tells.
    layer = RedisBatchLayer(url=redis_server.url, ack_timeout=0.3)
    lost, stats = Lost(), collections.Counter()
    sender = Transport(layer, "sender", stats, on_messages=lambda messages: None, on_undelivered=lost)
    tap = None
    try:
        await sender.start()
        tap, taken = await subscribed_tap(redis_server, "{" + inbox_name("frozen") + "}")
        sent_at = asyncio.get_running_loop().time()
        assert sender.send("frozen", {"type": "peerjs.relay", "n": 1}) and sender.send("frozen", {"type": "peerjs.relay", "n": 2})
        await asyncio.wait_for(lost.changed.wait(), 5)
        assert asyncio.get_running_loop().time() - sent_at >= 0.3
        assert len(taken) == 1  # one batch, and Redis handed it over
        # Not GONE: the hub answers their senders with EXPIRE rather than rerouting them (signaling.hub.undelivered).
        assert lost.calls == [("frozen", [1, 2], "not acknowledged within 0.3 s")]
        assert stats["redis_errors"] == 1 and sender.in_flight() == 0
    finally:
        if tap is not None:
            tap.close()
        await layer.close()


async def test_a_send_refused_for_a_full_inbox_publishes_nothing_and_is_not_reported_lost(redis_server):
    # A refusal is answered at once (the hub tells the sender EXPIRE); it left
    # an empty batch behind, published with the next round and, never
    # acknowledged, reported 5 s later as "0 messages ... were lost".
    layer = RedisBatchLayer(url=redis_server.url, capacity=2, ack_timeout=30, stall=0)  # refused at the capacity
    lost, stats = Lost(), collections.Counter()
    sender = Transport(layer, "sender", stats, on_messages=lambda messages: None, on_undelivered=lost)
    tap = marker = None
    try:
        await sender.start()
        channel = "{" + inbox_name("slow") + "}"
        tap, taken = await subscribed_tap(redis_server, channel)
        arrived, pushed = asyncio.Event(), tap.on_push
        tap.on_push = lambda push: (pushed(push), arrived.set())
        assert sender.send("slow", {"type": "peerjs.relay", "n": 1}) and sender.send("slow", {"type": "peerjs.relay", "n": 2})
        await asyncio.wait_for(layer.flushed(), 5)  # published; the tap acknowledges nothing: 2 in flight
        assert not sender.send("slow", {"type": "peerjs.relay", "n": 3})
        assert stats["inbox_full"] == 1
        await asyncio.wait_for(layer.flushed(), 5)
        # Redis hands a subscriber what was published in order: once the
        # marker is in, so is anything the sender published before it.
        marker = await wire.Connection("127.0.0.1", redis_server.port).open()
        assert await marker.call([("SPUBLISH", channel, b"marker")], 5) == [1]
        while not (taken and taken[-1] == b"marker"):
            arrived.clear()
            await asyncio.wait_for(arrived.wait(), 5)
        assert len(taken) == 2 and sender.in_flight() == 2 and lost.calls == []
    finally:
        for connection in (tap, marker):
            if connection is not None:
                connection.close()
        await layer.close()


async def test_past_its_capacity_a_receiver_is_refused_once_the_oldest_has_waited_or_at_four_times_it(redis_server):
    # In flight is the rate times an acknowledgement's way back: a receiver
    # that delivers but acknowledges late is not refused for that alone.
    layer = RedisBatchLayer(url=redis_server.url, capacity=2, ack_timeout=30, stall=0.2)
    lost, stats = Lost(), collections.Counter()
    sender = Transport(layer, "sender", stats, on_messages=lambda messages: None, on_undelivered=lost)
    taps = []
    try:
        await sender.start()
        for worker in ("slow", "busy"):  # subscribers that acknowledge nothing
            taps.append((await subscribed_tap(redis_server, "{" + inbox_name(worker) + "}"))[0])
        loop = asyncio.get_running_loop()
        for worker in ("slow", "busy"):
            assert all(sender.send(worker, {"type": "peerjs.relay", "n": n}) for n in range(2))
        await asyncio.wait_for(layer.flushed(), 5)
        published = loop.time()
        # At the capacity, but the oldest has not waited 0.2 s: taken, up to four times the capacity...
        assert sender.send("slow", {"type": "peerjs.relay", "n": 2})
        assert all(sender.send("busy", {"type": "peerjs.relay", "n": n}) for n in range(2, 8))
        assert loop.time() - published < 0.2  # (else these test nothing)
        assert not sender.send("busy", {"type": "peerjs.relay", "n": 8})  # ...and past that at once.
        # Once the oldest has waited 0.2 s, one at its capacity is refused.
        await asyncio.sleep(0.2)  # the time the rule is about, not an event to await
        assert not sender.send("slow", {"type": "peerjs.relay", "n": 3})
        await asyncio.wait_for(layer.flushed(), 5)
        assert sender.in_flight() == 3 + 8 and stats["inbox_full"] == 2 and lost.calls == []
    finally:
        for tap in taps:
            tap.close()
        await layer.close()


async def test_a_batch_for_an_inbox_nobody_reads_is_handed_back_at_once_as_gone(redis_server):
    layer = RedisBatchLayer(url=redis_server.url, ack_timeout=30)
    lost, stats = Lost(), collections.Counter()
    sender = Transport(layer, "sender", stats, on_messages=lambda messages: None, on_undelivered=lost)
    try:
        await sender.start()
        assert sender.send("dead", {"type": "peerjs.relay", "n": 1})
        await asyncio.wait_for(lost.changed.wait(), 5)  # well before the acknowledgement timeout
        assert lost.calls == [("dead", [1], GONE)]
        assert stats["redis_errors"] == 0
    finally:
        await layer.close()


async def test_a_subscription_broken_and_made_again_is_reported_once_it_is_back():
    """What was sent to an inbox while its subscription was broken came back to its senders; the
    receiver hears when it is subscribed again (signaling.offline.OfflineQueue.drain_all runs then).
    A Redis of its own: the test cuts every subscriber's connection."""
    redis = RedisServer()
    layer = RedisBatchLayer(url=redis.url)
    try:
        back, heard = [], asyncio.Event()
        layer.on_resubscribed = lambda channel: (back.append(channel), heard.set())
        inbox = Inbox()
        await layer.listen("inbox", on_messages=inbox.take)
        assert back == []  # a first subscription is no return
        redis.cli("CLIENT", "KILL", "TYPE", "pubsub")
        await asyncio.wait_for(heard.wait(), 10)
        assert back == ["{inbox}"]
        layer.send_nowait("inbox", {"n": 1})
        await asyncio.wait_for(inbox.until(1), 5)
    finally:
        await layer.close()
        redis.stop()


async def test_what_waits_behind_a_batch_for_an_inbox_nobody_reads_comes_back_with_it(redis_server):
    """Never published after it: had the inbox's worker subscribed again in between (a failover),
    the later batch would arrive while the earlier one went to the queue, out of order."""
    layer = RedisBatchLayer(url=redis_server.url, ack_timeout=30)
    lost, stats = Lost(), collections.Counter()
    sender = Transport(layer, "sender", stats, on_messages=lambda messages: None, on_undelivered=lost)
    try:
        await sender.start()
        assert sender.send("dead", {"type": "peerjs.relay", "n": 1})
        await asyncio.sleep(0)  # that round is out, awaiting its reply; the next message waits for it
        assert sender.send("dead", {"type": "peerjs.relay", "n": 2})
        await asyncio.wait_for(lost.changed.wait(), 5)
        assert lost.calls == [("dead", [1, 2], GONE)]
        await asyncio.wait_for(layer.flushed(), 5)
        assert lost.calls == [("dead", [1, 2], GONE)] and sender.in_flight() == 0
    finally:
        await layer.close()


async def test_a_batch_published_twice_is_delivered_once(layer, redis_server):
    # A round sent again on a new connection after its reply was lost brings
    # Redis the same batch twice: the receiver takes it once.
    inbox = Inbox()
    await layer.listen("inbox", on_messages=inbox.take)
    tap, taken = await subscribed_tap(redis_server, "{inbox}")
    try:
        layer.send_nowait("inbox", {"n": 0})
        layer.send_nowait("inbox", {"n": 1})
        await asyncio.wait_for(inbox.until(2), 5)
        (batch,) = taken
        again = await wire.Connection("127.0.0.1", redis_server.port).open()
        try:
            assert await again.call([("SPUBLISH", "{inbox}", batch)], 5) == [2]  # the inbox and the tap took it
        finally:
            again.close()
        layer.send_nowait("inbox", {"n": 2})
        await asyncio.wait_for(inbox.until(3), 5)
        assert inbox.messages == [0, 1, 2]
        assert layer.stats["duplicates"] == 2
    finally:
        tap.close()


def moved_errors(cluster, port):
    """How many MOVED replies the node on ``port`` has given."""
    stats = cluster._cli(port, "INFO", "errorstats")
    found = re.search(r"errorstat_MOVED:count=(\d+)", stats)
    return int(found.group(1)) if found else 0


@pytest.mark.cluster
async def test_a_sender_told_moved_learns_the_new_shard_and_the_batch_arrives():
    """REDIS_CLUSTER: the inbox's slot moves to another shard; its reader follows it, and a sender
    that still knows the old shard hears MOVED, learns the slots again and publishes there."""
    cluster = RedisCluster()
    receiver = RedisBatchLayer(url=cluster.url, cluster=True)
    sender = RedisBatchLayer(url=cluster.url, cluster=True)
    try:
        inbox = Inbox()
        await receiver.listen("inbox", on_messages=inbox.take)
        await sender.listen("sender")  # where its acknowledgements arrive
        sender.send_nowait("inbox", {"n": 0})
        await asyncio.wait_for(inbox.until(1), 10)  # the sender knows which shard holds the inbox
        slot = int(cluster._cli(cluster.ports[0], "CLUSTER", "KEYSLOT", "{inbox}"))
        source = cluster.shard_of("{inbox}")
        target = next(port for port in cluster.ports if port != source)
        target_id = cluster._cli(target, "CLUSTER", "MYID").strip()
        for port in (target, source, *(p for p in cluster.ports if p not in (source, target))):
            cluster._cli(port, "CLUSTER", "SETSLOT", str(slot), "NODE", target_id)
        # (polled on a thread: the reader follows in this event loop)
        await asyncio.to_thread(
            wait_until, lambda: cluster.subscribers(target, "{inbox}") == 1, 10, "the inbox's reader to follow its slot"
        )
        refused = moved_errors(cluster, source)
        sender.send_nowait("inbox", {"n": 1})
        await asyncio.wait_for(inbox.until(2), 10)
        assert inbox.messages == [0, 1]
        assert moved_errors(cluster, source) == refused + 1
        await asyncio.wait_for(sender.settled("inbox"), 10)
        assert sender.stats["undelivered"] == 0 and sender.in_flight() == 0
    finally:
        await sender.close()
        await receiver.close()
        cluster.stop()
