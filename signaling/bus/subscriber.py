"""The bus's receiving side: each node's subscriptions, batches in, duplicates and late ones dropped.

One per event loop (signaling.bus.layer makes it). A reader per Redis node
(a Redis Cluster's shard) subscribes the loop's channels there and hands
what arrives to the application in the connection's read callback; a batch
is acknowledged (through the publisher, with its next round) once the
application has handled it. A batch older than the acknowledgement timeout
allows is dropped unread, so that a message is never both reported
undelivered to its sender and delivered; a batch sent again after a lost
reply is dropped the second time.
"""
import asyncio
import collections
import functools
import logging
import time

import hiredis
import msgpack

from signaling.bus import quietly, redis_name

logger = logging.getLogger(__name__)

# A batch older than the acknowledgement timeout less this is dropped on
# arrival: its acknowledgement could not reach the sender in time.
LATE_MARGIN = 0.5  # seconds


class Inbox:
    """Messages received for one channel, waiting for the application."""

    def __init__(self, loop):
        self.items = collections.deque()  # (message, ack or None); ack on a batch's last message
        self.on_messages = None  # else: called with each batch instead (RedisBatchLayer.listen)
        self.waiter = None
        self.subscribed = loop.create_future()
        self.handed = []  # acks of batches handed out by the last receive


class Subscriber:
    """One event loop's subscriptions and what arrives on them."""

    def __init__(self, layer, loop, nodes, publisher):
        self.layer = layer
        self.loop = loop
        self.nodes = nodes  # where a channel lives (signaling.bus.layer's per-loop state)
        self.publisher = publisher  # takes the acknowledgements this side owes, and those it receives
        self.reply = None  # where acknowledgements for this process arrive: beside its first channel
        self.inboxes = {}  # channel -> Inbox
        # (channel, sender's reply channel) -> the last batch id taken: a flush
        # sent again after a lost reply may bring a batch twice. A sender's
        # batches for one channel go out one round trip after another, so
        # their ids only grow. One entry per sending process ever seen.
        self.last_batch = {}
        self.readers = {}  # (host, port) -> (task, channels)
        self.unsubscribed = set()  # (host, port) whose reader failed and has not subscribed again yet
        self.broken = set()  # channels whose subscription failed, until Redis confirms it again

    async def listen(self, channel, on_messages=None):
        channel = redis_name(channel)
        inbox = self.inboxes.get(channel)
        if inbox is None:
            inbox = self.inboxes[channel] = Inbox(self.loop)
            inbox.on_messages = on_messages
            if self.reply is None:
                # Acknowledgements for what this process sends come beside its
                # first channel (the same hash slot in a cluster).
                self.reply = self.publisher.reply = f"{channel}!acks"
                self.inboxes[self.reply] = Inbox(self.loop)
            self._subscribe()
        await inbox.subscribed
        await self.inboxes[self.reply].subscribed
        return inbox

    async def receive(self, channel, many):
        inbox = await self.listen(channel)
        # What the last call handed out has been handled: acknowledge it.
        for reply, batch_id in inbox.handed:
            self.publisher.acknowledge(reply, batch_id)
        inbox.handed = []
        while not inbox.items:
            inbox.waiter = self.loop.create_future()
            try:
                await inbox.waiter
            finally:
                inbox.waiter = None
        if many:
            taken = list(inbox.items)
            inbox.items.clear()
        else:
            taken = [inbox.items.popleft()]
        inbox.handed = [ack for _message, ack in taken if ack is not None]
        return [message for message, _ack in taken] if many else taken[0][0]

    def _subscribe(self):
        """(Re)start a reader per Redis node for the channels received on."""
        by_node = collections.defaultdict(set)
        for channel in self.inboxes:
            by_node[self.nodes.node(channel)].add(channel)
        for node in set(self.readers) - set(by_node):
            self.readers.pop(node)[0].cancel()
            self.unsubscribed.discard(node)  # nothing to hear from it any more
        for node, channels in by_node.items():
            reader = self.readers.get(node)
            if reader is not None and reader[1] == channels and not reader[0].done():
                continue
            if reader is not None:
                reader[0].cancel()
            self.readers[node] = (self.loop.create_task(self._read(node, sorted(channels))), channels)

    async def _read(self, node, channels):
        """Hear the node's messages for ``channels`` as they come; resubscribe after any failure.

        The messages are handled in the connection's read callback
        (:meth:`_pushed`); this task only waits for the connection to end.
        """
        backoff = 0.1
        while True:
            connection = None
            try:
                connection = await self.layer.connection(*node).open()
                connection.on_push = functools.partial(self._pushed, node, connection)
                connection.send([("SSUBSCRIBE", channel) for channel in channels])  # one by one: a cluster refuses channels of several slots at once
                raise await connection.ended
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.layer.stats["reader_failures"] += 1
                if node not in self.unsubscribed:
                    backoff = 0.1  # it was subscribed since it last failed: a new outage
                self.unsubscribed.add(node)
                self.broken.update(channels)
                logger.warning("Redis subscription for %s failed (%r); resubscribing", ", ".join(channels), exc)
                if self.nodes.topology is not None:
                    await self.nodes.refresh()
                    if any(self.nodes.node(channel) != node for channel in channels):
                        self.loop.call_soon(self._subscribe)
                        return
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
            finally:
                if connection is not None:
                    connection.on_push = None
                    connection.close()

    def _pushed(self, node, connection, push):
        """What a subscription brought: a message, a confirmation, or the end of it."""
        try:
            self._push(node, connection, push)
        except Exception as exc:  # a message that cannot be read: subscribe afresh, as after any failure
            connection.fail(ConnectionError(f"could not handle {push!r:.100}: {exc!r}"))

    def _push(self, node, connection, push):
        if isinstance(push, hiredis.ReplyError):
            connection.fail(ConnectionError(str(push)))
            return
        kind = push[0]
        if kind == b"smessage":
            self._arrived(push[1].decode(), push[2])
        elif kind == b"ssubscribe":
            channel = push[1].decode()
            inbox = self.inboxes.get(channel)
            if inbox is not None and not inbox.subscribed.done():
                inbox.subscribed.set_result(None)
            self.unsubscribed.discard(node)
            if channel in self.broken:
                self.broken.discard(channel)
                # The acknowledgements' channel is the layer's own business.
                if self.layer.on_resubscribed is not None and channel != self.reply:
                    self.layer.on_resubscribed(channel)
        elif kind == b"sunsubscribe":
            # Redis moved the channel's slot to another shard.
            connection.fail(ConnectionError(f"{push[1].decode()} moved"))

    def _arrived(self, channel, data):
        payload = msgpack.unpackb(data)
        for batch_id in payload.get("a", ()):
            self.publisher.acknowledged(batch_id)
        messages = payload.get("m")
        if not messages:
            return
        inbox = self.inboxes.get(channel)
        if inbox is None:
            return
        age = time.time() - payload["t"]
        if "b" in payload:
            # Taken only while its acknowledgement can still beat the sender's
            # deadline: else the sender tells of it as lost, and it must be.
            if age > self.layer.ack_timeout - min(LATE_MARGIN, self.layer.ack_timeout / 2):
                self.layer.stats["late"] += len(messages)
                logger.warning("dropped %d messages for %s that arrived %.1f s late", len(messages), channel, age)
                return
            sender = (channel, payload["s"])
            if payload["b"] <= self.last_batch.get(sender, -1):
                self.layer.stats["duplicates"] += len(messages)
                return
            self.last_batch[sender] = payload["b"]
        if self.layer.on_arrival is not None:
            self.layer.on_arrival(age, len(messages))
        ack = (payload["s"], payload["b"]) if "b" in payload else None
        if inbox.on_messages is not None:
            try:
                inbox.on_messages(messages)
            except Exception:
                # The application's fault, not the messages': delivering them
                # again would fail again.
                logger.exception("failed on %d messages from %s", len(messages), channel)
            if ack is not None:
                self.publisher.acknowledge(*ack)
            return
        last = len(messages) - 1
        inbox.items.extend((message, ack if n == last else None) for n, message in enumerate(messages))
        if inbox.waiter is not None and not inbox.waiter.done():
            inbox.waiter.set_result(None)

    async def close(self):
        for task, _channels in self.readers.values():
            task.cancel()
        for task, _channels in self.readers.values():
            await quietly(task)
