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
anyway. docs/performance.md has the figures.

No groups: the workers address each other's inboxes directly, on this
layer's own alias; Channels groups live on the site's ``default`` layer
(channels-redis). Per event loop, a publisher (signaling.bus.publisher)
sends and tracks, a subscriber (signaling.bus.subscriber) receives and
acknowledges.
"""
import asyncio
import collections
import secrets
import weakref
from urllib.parse import unquote, urlsplit

from channels.layers import BaseChannelLayer
from redis.asyncio.cluster import RedisCluster

from signaling import sentinel
from signaling.bus import quietly, wire
from signaling.bus.publisher import NotDelivered, Publisher
from signaling.bus.subscriber import Subscriber

__all__ = ["NotDelivered", "RedisBatchLayer"]

MAX_CHECKED = 1000  # channel names a sender remembers as checked


class RedisBatchLayer(BaseChannelLayer):
    extensions = []

    def __init__(
        self,
        url="redis://localhost:6379/0",
        cluster=False,
        sentinels=(),
        master="mymaster",
        sentinel_auth=False,
        sentinel_tls=False,
        capacity=10000,
        ack_timeout=5.0,
        stall=1.0,
        expiry=60,
        **kwargs,
    ):
        super().__init__(expiry=expiry, capacity=capacity, **kwargs)
        self.url = url
        self.cluster = cluster
        self.sentinels = sentinels  # (host, port) of each: the master is theirs, not url's host (signaling.sentinel)
        self.master = master
        self.sentinel_auth = sentinel_auth
        self.sentinel_tls = sentinel_tls
        self.ack_timeout = ack_timeout
        # Seconds the oldest unacknowledged message to a channel at its capacity
        # waits before that channel is refused (signaling.bus.publisher).
        self.stall = min(stall, ack_timeout / 2)
        # Called with (channel, messages, reason) for send_nowait messages
        # that did not arrive; the application decides what their senders hear.
        self.on_undelivered = None
        # Called with a channel's Redis name (redis_name) when one listened on is subscribed again
        # after its subscription failed: what was sent to it meanwhile did
        # not arrive, and its senders were told so.
        self.on_resubscribed = None
        # Called with (seconds, count) for each batch received: how long its
        # messages spent between the two processes.
        self.on_arrival = None
        self.stats = collections.Counter()
        self._loops = weakref.WeakKeyDictionary()  # event loop -> _Loop

    # Channels' interface.

    async def flushed(self):
        """Return once everything this process sent so far is with Redis."""
        side = await self._side()
        await side.publisher.flushed()

    async def send(self, channel, message):
        """Send ``message``; return once Redis handed it to a subscriber of ``channel``."""
        self._check(channel, message)
        side = await self._side()
        future = side.loop.create_future()
        side.publisher.put(channel, message, future)
        await future

    def send_nowait(self, channel, message):
        """Send ``message`` with the next batch; raise ChannelFull if ``channel`` has too many in flight.

        Needs this process to be receiving already (acknowledgements arrive
        beside its first channel). A caller that sends many from one event
        loop takes ``sender()`` once instead.
        """
        self.sender()(channel, message)

    def sender(self):
        """``send_nowait`` for the running event loop, bound to it.

        Asking asyncio for the running loop is a getpid() system call on
        Python 3.11 (its check against a fork): once per message, that was
        most of what sending one cost when profiled. The bound function asks
        no more, and checks each channel's name the first time it sees it.
        It serves until ``flush()`` or ``close()`` ends this loop's side.
        """
        side = self._loops.get(asyncio.get_running_loop())
        if side is None or side.publisher.reply is None:
            raise RuntimeError("send_nowait needs a receive() on this event loop first")
        put, checked = side.publisher.put, set()

        def send_nowait(channel, message):
            assert isinstance(message, dict), "message is not a dict"
            if channel not in checked:
                assert self.require_valid_channel_name(channel), "channel name not valid"
                if len(checked) >= MAX_CHECKED:  # workers come and go: their inboxes' names with them
                    checked.clear()
                checked.add(channel)
            put(channel, message, None)

        return send_nowait

    def take_back(self, channel):
        """What ``send_nowait`` put for ``channel`` and has not published yet, which now it will not."""
        side = self._loops.get(asyncio.get_running_loop())
        return side.publisher.take_back(channel) if side is not None else []

    async def listen(self, channel, on_messages=None):
        """Subscribe to ``channel``; returns once what is sent to it reaches this process.

        With ``on_messages``, each batch for ``channel`` is handed to it (a
        list, in the order sent) as it arrives, in the read callback, and
        acknowledged when it returns; ``receive`` is not used on that channel.
        One turn of the event loop sooner than a task waiting in ``receive``.
        """
        side = await self._side()
        await side.subscriber.listen(channel, on_messages)

    async def receive(self, channel):
        side = await self._side()
        return await side.subscriber.receive(channel, many=False)

    async def receive_many(self, channel):
        side = await self._side()
        return await side.subscriber.receive(channel, many=True)

    async def settled(self, channel):
        """Return once what this event loop sent to ``channel`` so far is acknowledged or handed back as undelivered."""
        side = await self._side()
        await side.publisher.settled(channel)

    def receiving(self):
        """Whether this event loop hears what is sent to its channels: False from a failed
        subscription until it is made again (Redis stopped, restarted or unreachable).

        A Redis that stops answering without closing the connection (frozen,
        behind a dead link) is not noticed here; the readiness probe's PING is.
        """
        side = self._loops.get(asyncio.get_running_loop())
        return side is None or not side.subscriber.unsubscribed

    def in_flight(self):
        """Messages this event loop sent with ``send_nowait`` that are not acknowledged yet (or not even sent)."""
        side = self._loops.get(asyncio.get_running_loop())
        return 0 if side is None else side.publisher.waiting()

    async def new_channel(self, prefix="specific"):
        return f"{prefix}.{secrets.token_hex(6)}"

    async def flush(self):
        side = self._loops.pop(asyncio.get_running_loop(), None)
        if side is not None:
            await side.close()

    close = flush

    # Inside.

    def _check(self, channel, message):
        assert isinstance(message, dict), "message is not a dict"
        assert self.require_valid_channel_name(channel), "channel name not valid"

    async def _side(self):
        loop = asyncio.get_running_loop()
        side = self._loops.get(loop)
        if side is None:
            side = self._loops[loop] = _Loop(self, loop)
        await side.ready()
        return side

    def address(self):
        """(host, port) of REDIS_URL's server; with sentinels, a name for the master set (its server changes)."""
        if self.sentinels:
            return "sentinel", self.master
        parts = urlsplit(self.url)
        return parts.hostname or "localhost", parts.port or 6379

    def connection(self, host, port):
        """A connection (not yet open) to one Redis server, with REDIS_URL's credentials.

        With sentinels, to the master they name when it opens: each reconnect
        after a failover finds the promoted replica.
        """
        parts = urlsplit(self.url)
        # Unquoted, as redis-py reads them: a password with "@" or "/" is written %40, %2F in a URL.
        username, password = (unquote(part) if part else part for part in (parts.username, parts.password))
        if self.sentinels:
            return sentinel.MasterConnection(
                self.sentinels, self.master, username, password, tls=parts.scheme == "rediss",
                sentinel_auth=self.sentinel_auth, sentinel_tls=self.sentinel_tls,
            )
        return wire.Connection(host, port, username, password, tls=parts.scheme == "rediss")


class _Loop:
    """One event loop's side of the bus: where each channel lives, its publisher and its subscriber."""

    def __init__(self, layer, loop):
        self.layer = layer
        self.loop = loop
        self.topology = None  # a Redis Cluster's slots and nodes (redis-py), in cluster mode
        self.publisher = Publisher(layer, loop, self)
        self.subscriber = Subscriber(layer, loop, self, self.publisher)
        self._ready = None

    async def ready(self):
        if self._ready is None:
            self._ready = self.loop.create_task(self._connect())
        await asyncio.shield(self._ready)

    async def _connect(self):
        if self.layer.cluster:
            self.topology = RedisCluster.from_url(self.layer.url, socket_connect_timeout=5, socket_timeout=10)
            await self.topology.initialize()

    def node(self, channel):
        """(host, port) of the server that holds Redis channel ``channel``."""
        if self.topology is None:
            return self.layer.address()
        node = self.topology.get_node_from_key(channel)
        return (node.host, node.port)

    async def refresh(self):
        """Learn a Redis Cluster's slots afresh (one moved, or a node failed)."""
        # RedisCluster.initialize() reads the slots once and is a no-op from
        # then on; its nodes manager reads them again each time it is asked.
        await quietly(self.topology.nodes_manager.initialize())

    async def close(self):
        await quietly(self.publisher.flushed())  # what was put goes out first, as long as Redis answers
        self.publisher.close()
        await self.subscriber.close()
        if self.topology is not None:
            await quietly(self.topology.aclose())
