"""A Redis channel layer for the workers' inboxes: batched, acknowledged, never silent.

Behind Channels' channel-layer interface (``send``, ``receive``,
``new_channel``, ``flush``), configured in ``CHANNEL_LAYERS`` like any other
layer, with two additions the hot path uses:

``send_nowait(channel, message)``
    joins the batch for ``channel`` and returns at once. Everything sent
    to one channel within an event-loop iteration (and while the previous
    round trip is on its way) travels in one ``SPUBLISH``; every channel's
    batch of one flush goes in one pipeline, one round trip. Nothing waits
    for it and no lock is held across it.
``listen(channel, on_messages)``
    hands each batch for ``channel`` to ``on_messages`` as it is read from
    Redis, and acknowledges it when that returns (no task waits in
    ``receive``: a turn of the event loop sooner).
``receive_many(channel)``
    every message waiting for ``channel``, at least one.

Why sharded pub/sub, and how nothing is lost silently: a pub/sub message
costs Redis one ``SPUBLISH`` and no storage, and its reply counts the
subscribers that took it (sharded pub/sub keeps a channel on its slot's
shard, so the count is exact in a Redis Cluster too): 0 means nobody holds
that inbox, and the sender hears of it at once. What a subscriber took and
then lost (its process was SIGKILLed, Redis restarted, or Redis dropped a
subscriber that read too slowly, with whatever it had buffered) is caught by
acknowledgements: the receiving process acknowledges each batch once the
application has handled it (its ``on_messages`` returned, or it asked
``receive`` for the next messages), and
a batch not acknowledged within ``ack_timeout`` is reported undelivered. A
batch that arrives later than that is dropped unread, so a message is never
both reported undelivered and delivered (as far as the two machines' clocks
agree). Undelivered messages of ``send_nowait`` go to ``on_undelivered``;
``send`` raises instead.

Streams (``XADD``/``XREADGROUP``/``XACK``) were measured too: about twice
the CPU per message of pub/sub when batched, and they keep messages only as
long as Redis does, so a Redis restart needs the same acknowledgements
anyway. README "Performance" has the figures.

No groups: the workers address each other's inboxes directly.
"""
import asyncio
import collections
import functools
import itertools
import logging
import secrets
import time
import weakref
from urllib.parse import urlsplit

import hiredis
import msgpack
from channels.exceptions import ChannelFull
from channels.layers import BaseChannelLayer
from redis.asyncio.cluster import RedisCluster

from signaling import wire

logger = logging.getLogger(__name__)


# How long a receiving process may sit on acknowledgements before sending them
# in a round trip of their own (they ride along with any earlier flush).
ACK_DELAY = 0.005
PUBLISH_TIMEOUT = 10.0  # seconds a Redis server may take to answer a flush
RECONNECT_PAUSE = 0.05  # before sending a flush again on a fresh connection
# A batch older than the acknowledgement timeout less this is dropped on
# arrival: its acknowledgement could not reach the sender in time.
LATE_MARGIN = 0.5  # seconds


class NotDelivered(Exception):
    """``send`` could not hand the message to any subscriber of the channel."""


class RedisBatchLayer(BaseChannelLayer):
    extensions = []

    def __init__(
        self,
        url="redis://localhost:6379/0",
        cluster=False,
        capacity=10000,
        ack_timeout=5.0,
        expiry=60,
        **kwargs,
    ):
        super().__init__(expiry=expiry, capacity=capacity, **kwargs)
        self.url = url
        self.cluster = cluster
        self.ack_timeout = ack_timeout
        # Called with (channel, messages, reason) for send_nowait messages
        # that did not arrive; the application decides what their senders hear.
        self.on_undelivered = None
        # Called with (seconds, count) for each batch received: how long its
        # messages spent between the two processes.
        self.on_arrival = None
        self.stats = collections.Counter()
        self._links = weakref.WeakKeyDictionary()  # event loop -> _Link

    # Channels' interface.

    async def flushed(self):
        """Return once everything this process sent so far is with Redis."""
        link = await self._link()
        await link.flushed()

    async def send(self, channel, message):
        """Send ``message``; return once Redis handed it to a subscriber of ``channel``."""
        self._check(channel, message)
        link = await self._link()
        future = link.loop.create_future()
        link.put(channel, message, future)
        await future

    def send_nowait(self, channel, message):
        """Send ``message`` with the next batch; raise ChannelFull if ``channel`` has too many in flight.

        Needs this process to be receiving already (acknowledgements arrive
        beside its first channel).
        """
        self._check(channel, message)
        link = self._links.get(asyncio.get_running_loop())
        if link is None or link.reply is None:
            raise RuntimeError("send_nowait needs a receive() on this event loop first")
        link.put(channel, message, None)

    async def listen(self, channel, on_messages=None):
        """Subscribe to ``channel``; returns once what is sent to it reaches this process.

        With ``on_messages``, each batch for ``channel`` is handed to it (a
        list, in the order sent) as it arrives, in the read callback, and
        acknowledged when it returns; ``receive`` is not used on that channel.
        One turn of the event loop sooner than a task waiting in ``receive``.
        """
        link = await self._link()
        await link.listen(channel, on_messages)

    async def receive(self, channel):
        link = await self._link()
        return await link.receive(channel, many=False)

    async def receive_many(self, channel):
        link = await self._link()
        return await link.receive(channel, many=True)

    async def settled(self, channel):
        """Return once what this event loop sent to ``channel`` so far is acknowledged or handed back as undelivered."""
        link = await self._link()
        await link.settled(channel)

    def receiving(self):
        """Whether this event loop hears what is sent to its channels: False from a failed
        subscription until it is made again (Redis stopped, restarted or unreachable).

        A Redis that stops answering without closing the connection (frozen,
        behind a dead link) is not noticed here; the readiness probe's PING is.
        """
        link = self._links.get(asyncio.get_running_loop())
        return link is None or not link.unsubscribed

    def in_flight(self):
        """Messages this event loop sent with ``send_nowait`` that are not acknowledged yet (or not even sent)."""
        link = self._links.get(asyncio.get_running_loop())
        if link is None:
            return 0
        waiting = sum(len(batch) for (_channel, tracked), batch in link.outgoing.items() if tracked)
        return waiting + sum(link.in_flight.values())

    async def new_channel(self, prefix="specific"):
        return f"{prefix}.{secrets.token_hex(6)}"

    async def flush(self):
        link = self._links.pop(asyncio.get_running_loop(), None)
        if link is not None:
            await link.close()

    close = flush

    # Inside.

    def _check(self, channel, message):
        assert isinstance(message, dict), "message is not a dict"
        assert self.require_valid_channel_name(channel), "channel name not valid"

    async def _link(self):
        loop = asyncio.get_running_loop()
        link = self._links.get(loop)
        if link is None:
            link = self._links[loop] = _Link(self, loop)
        await link.ready()
        return link

    def address(self):
        """(host, port) of REDIS_URL's server."""
        parts = urlsplit(self.url)
        return parts.hostname or "localhost", parts.port or 6379

    def connection(self, host, port):
        """A connection (not yet open) to one Redis server, with REDIS_URL's credentials."""
        parts = urlsplit(self.url)
        return wire.Connection(host, port, parts.username, parts.password, tls=parts.scheme == "rediss")


class _Inbox:
    """Messages received for one channel, waiting for the application."""

    def __init__(self, loop):
        self.items = collections.deque()  # (message, ack or None); ack on a batch's last message
        self.on_messages = None  # else: called with each batch instead (RedisBatchLayer.listen)
        self.waiter = None
        self.subscribed = loop.create_future()
        self.handed = []  # acks of batches handed out by the last receive


class _Link:
    """One event loop's connections, batches and acknowledgements."""

    def __init__(self, layer, loop):
        self.layer = layer
        self.loop = loop
        self.topology = None  # a Redis Cluster's slots and nodes (redis-py), in cluster mode
        self.publishers = {}  # (host, port) -> wire.Connection
        self.reply = None  # where acknowledgements for this process arrive
        self.outgoing = {}  # (channel, tracked) -> [(message, future)]
        self.acks_out = collections.defaultdict(list)  # reply channel -> batch ids
        self.closing = False
        self.kicked = None  # the round scheduled for the end of this turn
        self.answering = None  # the connection whose replies the round under way awaits
        self.flushing = None  # the task publishing a round, when one must open a connection first
        self.flush_waiters = []  # futures to resolve once what was sent before them is published
        self.ack_timer = None
        self.pending = {}  # batch id -> (channel, messages, timer)
        self.in_flight = collections.Counter()  # channel -> messages not yet acknowledged
        self.batch_ids = itertools.count()
        self.inboxes = {}  # channel -> _Inbox
        self.settling = collections.defaultdict(list)  # batch id -> futures of settled()
        # (channel, sender's reply channel) -> the last batch id taken: a flush
        # sent again after a lost reply may bring a batch twice. A sender's
        # batches for one channel go out one round trip after another, so
        # their ids only grow. One entry per sending process ever seen.
        self.last_batch = {}
        self.readers = {}  # (host, port) -> (task, channels)
        self.unsubscribed = set()  # (host, port) whose reader failed and has not subscribed again yet
        self._ready = None

    async def ready(self):
        if self._ready is None:
            self._ready = self.loop.create_task(self._connect())
        await asyncio.shield(self._ready)

    async def _connect(self):
        if self.layer.cluster:
            self.topology = RedisCluster.from_url(self.layer.url, socket_connect_timeout=5, socket_timeout=10)
            await self.topology.initialize()

    # Sending.

    def put(self, channel, message, future):
        tracked = future is None
        batch = self.outgoing.setdefault((channel, tracked), [])
        if tracked and self.in_flight[channel] + len(batch) >= self.layer.capacity:
            self.layer.stats["full"] += 1
            raise ChannelFull(channel)
        batch.append((message, future))
        self._kick()

    def _kick(self):
        """Publish what waits: at the end of this turn of the event loop, or when the round under way is answered."""
        if not self._busy():
            self.kicked = self.loop.call_soon(self._round)

    def _busy(self):
        """A round is scheduled, awaits its replies, or is being published by a task."""
        return self.kicked is not None or self.answering is not None or self.flushing is not None

    def _send_acks(self):
        self.ack_timer = None
        if self.acks_out:
            self._kick()

    async def flushed(self):
        """Return once everything sent so far has been published."""
        if not self.outgoing and not self._busy():
            return
        waiter = self.loop.create_future()
        self.flush_waiters.append(waiter)
        self._kick()
        await waiter

    # One round trip at a time, so that a sender's batches reach Redis in the
    # order of their ids, also when a round is sent again after a lost
    # connection (the receiver drops a batch whose id is not above the last
    # it took). A round goes out at the end of the turn in which its first
    # message was put, or the moment the previous round is answered, with
    # everything put meanwhile: it never waits for a task to wake up (a turn
    # of the event loop each, tens of milliseconds while hundreds of sockets
    # open at once).

    def _round(self):
        """Publish what accumulated; at once on a connection that is open, else by a task that opens one."""
        self.kicked = None
        if self.closing or self._busy() or not (self.outgoing or self.acks_out or self.flush_waiters):
            return
        outgoing, self.outgoing = self.outgoing, {}
        acks, self.acks_out = self.acks_out, collections.defaultdict(list)
        waiters, self.flush_waiters = self.flush_waiters, []
        if self.ack_timer is not None:
            self.ack_timer.cancel()
            self.ack_timer = None
        commands = self._commands(outgoing, acks)
        if not commands:  # only flushed() waited: everything before it is published
            _release(waiters)
            return
        node = self.layer.address() if self.topology is None else None
        connection = self.publishers.get(node)
        if connection is None or connection.closed:
            # A first round, a cluster's (several servers, slots that move),
            # or the connection is gone: a task opens what it needs.
            self.flushing = self.loop.create_task(self._publish(commands, waiters))
            return
        packed = [("SPUBLISH", channel, payload) for channel, payload, _on_failure in commands]
        timer = self.loop.call_later(PUBLISH_TIMEOUT, connection.fail, asyncio.TimeoutError())
        self.answering = connection
        connection.request(packed, functools.partial(self._answered, node, connection, commands, waiters, timer))

    def _answered(self, node, connection, commands, waiters, timer, replies):
        """A round's replies, or what ended its connection first (from the connection's read callback)."""
        timer.cancel()
        self.answering = None
        if isinstance(replies, BaseException):
            if self.publishers.get(node) is connection:
                del self.publishers[node]
            if not isinstance(replies, asyncio.TimeoutError) and not self.closing:
                # Lost with the connection: sent once more on a new one,
                # before anything put since (a duplicate is dropped on arrival).
                self.flushing = self.loop.create_task(self._publish(commands, waiters, again=True))
                return
            replies = [replies] * len(commands)  # a silent Redis: not sent again
        try:
            self._results(commands, replies, waiters)
        except Exception:
            logger.exception("failed on the replies to %d messages", len(commands))
        self._round()

    async def _publish(self, commands, waiters, again=False):
        try:
            packed = [(channel, payload) for channel, payload, _on_failure in commands]
            if again:  # its first try was lost with its connection: one more, on a new one
                await asyncio.sleep(RECONNECT_PAUSE)
            results = await self._spublish(packed, tries=1 if again else 2)
            self._results(commands, results, waiters)
        finally:
            self.flushing = None
        self._round()

    def _commands(self, outgoing, acks):
        """The round's (Redis channel, payload, what to do on failure); tracked batches are pending from now."""
        now = time.time()
        commands = []
        for (channel, tracked), entries in outgoing.items():
            messages = [message for message, _future in entries]
            if tracked:
                batch_id = next(self.batch_ids)
                payload = {"m": messages, "t": now, "s": self.reply, "b": batch_id}
                timer = self.loop.call_later(self.layer.ack_timeout, self._timed_out, batch_id)
                self.pending[batch_id] = (channel, messages, timer)
                self.in_flight[channel] += len(messages)
                commands.append((_redis_name(channel), msgpack.packb(payload), batch_id))
            else:
                payload = {"m": messages, "t": now}
                commands.append((_redis_name(channel), msgpack.packb(payload), [future for _m, future in entries]))
        for reply, batch_ids in acks.items():
            commands.append((reply, msgpack.packb({"a": batch_ids}), None))
        return commands

    def _results(self, commands, results, waiters):
        self.layer.stats["round_trips"] += 1
        for (channel, _payload, on_failure), result in zip(commands, results):
            if isinstance(result, Exception):  # an error reply (hiredis.ReplyError) included
                self._failed(channel, on_failure, f"Redis: {result!r}")
            elif result == 0:
                self._failed(channel, on_failure, "nobody receives on it")
            elif isinstance(on_failure, list):
                for future in on_failure:
                    if not future.done():
                        future.set_result(None)
        _release(waiters)

    async def _spublish(self, messages, tries=2):
        """SPUBLISH each (channel, payload) to the server of its slot; the replies, in order.

        One write per server; servers in parallel. A reply is the number of
        subscribers that took the message, or the exception that kept it
        from Redis.
        """
        by_node = collections.defaultdict(list)
        for index, (channel, _payload) in enumerate(messages):
            by_node[self._node(channel)].append(index)
        results = [None] * len(messages)

        async def one(node, indexes):
            replies = await self._call(node, [("SPUBLISH", *messages[i]) for i in indexes], tries)
            for i, reply in zip(indexes, replies):
                results[i] = reply

        if len(by_node) == 1:  # one Redis (not a cluster): no task, which would cost a turn of the loop
            ((node, indexes),) = by_node.items()
            await one(node, indexes)
        else:
            await asyncio.gather(*(one(node, indexes) for node, indexes in by_node.items()))
        moved = [i for i, reply in enumerate(results) if isinstance(reply, hiredis.ReplyError) and str(reply).startswith(("MOVED", "ASK"))]
        if moved and self.topology is not None:
            # A slot moved to another shard: learn where, and send those once more.
            await _quietly(self.topology.initialize())
            again = await self._spublish([messages[i] for i in moved], tries)
            for i, reply in zip(moved, again):
                results[i] = reply
        return results

    async def _call(self, node, commands, tries=2):
        """The replies to ``commands`` from ``node``; exceptions in their stead if it cannot answer.

        A connection that a Redis restart closed fails at once: it is opened
        again and the commands sent once more (a reply lost in the instant
        Redis stopped could mean a duplicate; a silent Redis times out).
        """
        for attempt in range(1, tries + 1):
            connection = self.publishers.get(node)
            try:
                if connection is None or connection.closed:
                    connection = self.publishers[node] = await self.layer.connection(*node).open()
                return await connection.call(commands, PUBLISH_TIMEOUT)
            except (OSError, asyncio.TimeoutError) as exc:  # ConnectionError is an OSError
                if connection is not None:
                    connection.close()
                self.publishers.pop(node, None)
                if attempt == tries or isinstance(exc, asyncio.TimeoutError):
                    return [exc] * len(commands)
                await asyncio.sleep(RECONNECT_PAUSE)

    def _failed(self, channel, on_failure, reason):
        if on_failure is None:  # acknowledgements: their batches time out at the sender
            self.layer.stats["acks_lost"] += 1
        elif isinstance(on_failure, list):
            for future in on_failure:
                if not future.done():
                    future.set_exception(NotDelivered(f"{channel}: {reason}"))
        else:
            self._undelivered(on_failure, reason)

    def _timed_out(self, batch_id):
        self._undelivered(batch_id, f"not acknowledged within {self.layer.ack_timeout:g} s")

    def _undelivered(self, batch_id, reason):
        entry = self.pending.pop(batch_id, None)
        if entry is None:
            return
        channel, messages, timer = entry
        timer.cancel()
        self.in_flight[channel] -= len(messages)
        self.layer.stats["undelivered"] += len(messages)
        if self.layer.on_undelivered is None:
            logger.warning("%d messages for %s were not delivered: %s", len(messages), channel, reason)
        else:
            self.layer.on_undelivered(channel, messages, reason)
        self._settle(batch_id)

    def _acknowledged(self, batch_id):
        entry = self.pending.pop(batch_id, None)
        if entry is not None:
            channel, messages, timer = entry
            timer.cancel()
            self.in_flight[channel] -= len(messages)
            self._settle(batch_id)

    async def settled(self, channel):
        """Return once what was sent to ``channel`` so far is acknowledged, or given up on and handed back."""
        await self.flushed()
        waiting = []
        for batch_id, (pending_channel, _messages, _timer) in self.pending.items():
            if pending_channel == channel:
                waiting.append(self.loop.create_future())
                self.settling[batch_id].append(waiting[-1])
        if waiting:
            await asyncio.gather(*waiting)

    def _settle(self, batch_id):
        for future in self.settling.pop(batch_id, ()):
            if not future.done():
                future.set_result(None)

    # Receiving.

    async def listen(self, channel, on_messages=None):
        channel = _redis_name(channel)
        inbox = self.inboxes.get(channel)
        if inbox is None:
            inbox = self.inboxes[channel] = _Inbox(self.loop)
            inbox.on_messages = on_messages
            if self.reply is None:
                # Acknowledgements for what this process sends come beside its
                # first channel (the same hash slot in a cluster).
                self.reply = f"{channel}!acks"
                self.inboxes[self.reply] = _Inbox(self.loop)
            self._subscribe()
        await inbox.subscribed
        await self.inboxes[self.reply].subscribed
        return inbox

    async def receive(self, channel, many):
        inbox = await self.listen(channel)
        # What the last call handed out has been handled: acknowledge it.
        for reply, batch_id in inbox.handed:
            self._acknowledge(reply, batch_id)
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

    def _acknowledge(self, reply, batch_id):
        self.acks_out[reply].append(batch_id)
        # Acknowledgements may wait a moment: they go with the next flush, or
        # after ACK_DELAY, so that a steady trickle of batches does not cost a
        # round trip each way.
        if not self._busy() and self.ack_timer is None:
            self.ack_timer = self.loop.call_later(ACK_DELAY, self._send_acks)

    def _subscribe(self):
        """(Re)start a reader per Redis node for the channels received on."""
        by_node = collections.defaultdict(set)
        for channel in self.inboxes:
            by_node[self._node(channel)].add(channel)
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

    def _node(self, channel):
        """(host, port) of the server that holds Redis channel ``channel``."""
        if self.topology is None:
            return self.layer.address()
        node = self.topology.get_node_from_key(channel)
        return (node.host, node.port)

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
                logger.warning("Redis subscription for %s failed (%r); resubscribing", ", ".join(channels), exc)
                if self.topology is not None:
                    await _quietly(self.topology.initialize())
                    if any(self._node(channel) != node for channel in channels):
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
            inbox = self.inboxes.get(push[1].decode())
            if inbox is not None and not inbox.subscribed.done():
                inbox.subscribed.set_result(None)
            self.unsubscribed.discard(node)
        elif kind == b"sunsubscribe":
            # Redis moved the channel's slot to another shard.
            connection.fail(ConnectionError(f"{push[1].decode()} moved"))

    def _arrived(self, channel, data):
        payload = msgpack.unpackb(data)
        for batch_id in payload.get("a", ()):
            self._acknowledged(batch_id)
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
                self._acknowledge(*ack)
            return
        last = len(messages) - 1
        inbox.items.extend((message, ack if n == last else None) for n, message in enumerate(messages))
        if inbox.waiter is not None and not inbox.waiter.done():
            inbox.waiter.set_result(None)

    async def close(self):
        await _quietly(self.flushed())  # what was put goes out first, as long as Redis answers
        self.closing = True
        if self.kicked is not None:
            self.kicked.cancel()
        for task, _channels in self.readers.values():
            task.cancel()
        for task, _channels in self.readers.values():
            await _quietly(task)
        for _channel, _messages, timer in self.pending.values():
            timer.cancel()
        if self.ack_timer is not None:
            self.ack_timer.cancel()
        for connection in self.publishers.values():
            connection.close()
        if self.topology is not None:
            await _quietly(self.topology.aclose())


def _redis_name(channel):
    """The Redis channel for a Channels channel: braced, so that its hash slot is the
    whole name's and the process's acknowledgements ("<name>!acks") share it."""
    return "{" + channel + "}"


def _release(waiters):
    for waiter in waiters:
        if not waiter.done():
            waiter.set_result(None)


async def _quietly(awaitable):
    try:
        await awaitable
    except (Exception, asyncio.CancelledError):
        pass
