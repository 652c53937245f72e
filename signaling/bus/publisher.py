"""The bus's sending side: batches out, acknowledgements tracked, failures handed back.

One per event loop (signaling.bus.layer makes it). What is put for a channel
within an event-loop iteration, and while the previous round trip is on its
way, goes out in one ``SPUBLISH``; every channel's batch of a round in one
pipeline. A tracked batch (``send_nowait``) carries an id and this process's
reply channel; it is pending until the receiving process acknowledges it
(signaling.bus.subscriber), and reported undelivered when Redis says nobody
holds the channel, when Redis cannot take it, or when no acknowledgement comes
within ``ack_timeout``. The acknowledgements this process owes others ride
along with its rounds.
"""
import asyncio
import collections
import functools
import itertools
import logging
import time

import hiredis
import msgpack
from channels.exceptions import ChannelFull

from signaling.bus import redis_name

logger = logging.getLogger(__name__)

# How long a receiving process may sit on acknowledgements before sending them
# in a round trip of their own (they ride along with any earlier flush).
ACK_DELAY = 0.005
PUBLISH_TIMEOUT = 10.0  # seconds a Redis server may take to answer a flush
RECONNECT_PAUSE = 0.05  # before sending a flush again on a fresh connection
HARD_LIMIT = 4  # times the capacity of messages in flight to one channel past which it is refused at once


class NotDelivered(Exception):
    """``send`` could not hand the message to any subscriber of the channel."""


class Publisher:
    """One event loop's rounds to Redis: batches, acknowledgements, what is still pending."""

    def __init__(self, layer, loop, nodes):
        self.layer = layer
        self.loop = loop
        self.nodes = nodes  # where a channel lives (signaling.bus.layer's per-loop state)
        self.connections = {}  # (host, port) -> wire.Connection, one per Redis server published to
        self.reply = None  # where acknowledgements for this process arrive (the subscriber sets it)
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
        self.settling = collections.defaultdict(list)  # batch id -> futures of settled()

    def waiting(self):
        """Tracked messages not acknowledged yet (or not even sent)."""
        waiting = sum(len(batch) for (_channel, tracked), batch in self.outgoing.items() if tracked)
        return waiting + sum(self.in_flight.values())

    def put(self, channel, message, future):
        tracked = future is None
        batch = self.outgoing.get((channel, tracked))
        if tracked:
            waiting = self.in_flight[channel] + (len(batch) if batch else 0)
            # Before any batch is made: an empty one would go out, never be
            # acknowledged, and be reported lost at the timeout.
            if waiting >= self.layer.capacity and self._refuses(channel, waiting):
                self.layer.stats["full"] += 1
                raise ChannelFull(channel)
        if batch is None:
            batch = self.outgoing[channel, tracked] = []
        batch.append((message, future))
        self._kick()

    def _refuses(self, channel, waiting):
        """Whether ``channel``, with ``waiting`` messages unacknowledged (the capacity or more), takes no more.

        What is in flight is the rate times the time an acknowledgement takes
        to come back, and on busy cores that time swings: a receiver that
        delivered all along had 10 000 unacknowledged after 0.4 s at full
        speed (bench/run.py). So past the capacity a receiver is refused only
        once the oldest of them has waited ``layer.stall`` (it acknowledges
        nothing: frozen, or far behind); past HARD_LIMIT times the capacity,
        which bounds the memory they hold, at once.
        """
        if waiting >= HARD_LIMIT * self.layer.capacity:
            return True
        for pending_channel, _messages, timer in self.pending.values():  # oldest first
            if pending_channel == channel:
                sent_at = timer.when() - self.layer.ack_timeout
                return self.loop.time() - sent_at >= self.layer.stall
        return False  # all of it still to be published: nothing has waited on the receiver yet

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
        node = self.layer.address() if self.nodes.topology is None else None
        connection = self.connections.get(node)
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
            if self.connections.get(node) is connection:
                del self.connections[node]
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
                commands.append((redis_name(channel), msgpack.packb(payload), batch_id))
            else:
                payload = {"m": messages, "t": now}
                commands.append((redis_name(channel), msgpack.packb(payload), [future for _m, future in entries]))
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
            by_node[self.nodes.node(channel)].append(index)
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
        if moved and self.nodes.topology is not None:
            # A slot moved to another shard: learn where, and send those once more.
            await self.nodes.refresh()
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
            connection = self.connections.get(node)
            try:
                if connection is None or connection.closed:
                    connection = self.connections[node] = await self.layer.connection(*node).open()
                return await connection.call(commands, PUBLISH_TIMEOUT)
            except (OSError, asyncio.TimeoutError) as exc:  # ConnectionError is an OSError
                if connection is not None:
                    connection.close()
                self.connections.pop(node, None)
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

    def take_back(self, channel):
        """The tracked messages for ``channel`` not published yet, which now will not be."""
        return [message for message, _future in self.outgoing.pop((channel, True), ())]

    def acknowledged(self, batch_id):
        """Another process acknowledged batch ``batch_id``: its messages are delivered."""
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

    def acknowledge(self, reply, batch_id):
        """Tell the sender whose acknowledgements arrive on ``reply`` that its batch ``batch_id`` was handled."""
        self.acks_out[reply].append(batch_id)
        # Acknowledgements may wait a moment: they go with the next flush, or
        # after ACK_DELAY, so that a steady trickle of batches does not cost a
        # round trip each way.
        if not self._busy() and self.ack_timer is None:
            self.ack_timer = self.loop.call_later(ACK_DELAY, self._send_acks)

    def close(self):
        """Stop: nothing more goes out, no timer fires; the connections close."""
        self.closing = True
        if self.kicked is not None:
            self.kicked.cancel()
        for _channel, _messages, timer in self.pending.values():
            timer.cancel()
        if self.ack_timer is not None:
            self.ack_timer.cancel()
        for connection in self.connections.values():
            connection.close()


def _release(waiters):
    for waiter in waiters:
        if not waiter.done():
            waiter.set_result(None)
