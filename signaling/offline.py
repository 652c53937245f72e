"""Frames for peers that are not connected: into the database's queue, in batches.

This module holds both ends of the queue: frames going in (:meth:`OfflineQueue.put`)
and a connected peer taking what waits for it (:meth:`OfflineQueue.drain`).

A peer that bursts thousands of frames at an offline id must not cost the
database a round trip each, nor hold the registry's threads while other
sockets wait to open. So a frame for an offline peer is only appended here;
one writer per worker takes everything that piled up since its last trip
and queues it in one transaction, round trip after round trip.

What a sender may have queued is capped twice. In memory, per sender: what
it queued within the last ``expire_timeout`` (nothing it queued can be
older), refused without touching the database. In the database, per
destination and in all, so that a dozen senders fit one briefly offline
receiver but no client can grow the database without bound. A refused frame
earns its sender one EXPIRE per destination.
"""
import collections
import functools
import logging

from signaling import protocol, registry
from signaling.db import DatabaseUnavailable

logger = logging.getLogger(__name__)

DRAIN_CHUNK = 500  # peers whose queues one statement takes when every peer of the worker drains


class OfflineQueue:
    def __init__(self, hub):
        self.hub = hub
        o = hub.options
        self.limits = registry.Limits(
            expire_ms=o.expire_timeout,
            per_peer_messages=o.queue_max_messages,
            per_peer_bytes=o.queue_max_bytes,
            total_messages=o.queue_total_max_messages,
            total_bytes=o.queue_total_max_bytes,
        )
        self.pending = []  # registry.Entry, in the order sent
        self.writer = None
        self.by_sender = {}  # (key, src) -> deque of (loop time, bytes) queued within expire_timeout
        self.refused = set()  # (key, src, dst) refused since the last EXPIREs went out
        # (key, dst) -> frames accepted for it and not yet written: the hub
        # sends what follows them the same way, so nothing overtakes them.
        self.in_flight = collections.Counter()

    def put(self, key, src, dst, kind, frame):
        """Queue ``frame`` for the offline peer ``dst``; LEAVE and EXPIRE for one mean nothing."""
        if kind not in protocol.QUEUED:
            return
        if not self._sender_may(key, src, len(frame)):
            self.hub.stats["queue_full"] += 1
            self._refuse(key, src, dst)
            return
        self.pending.append(registry.Entry(key, dst, src, frame))
        self.in_flight[key, dst] += 1
        if self.writer is None:
            self.writer = self.hub.spawn(self._write())

    def _sender_may(self, key, src, size):
        o = self.hub.options
        now = self.hub.loop.time()
        window = self.by_sender.get((key, src))
        if window is None:
            window = self.by_sender[key, src] = collections.deque()
        cutoff = now - o.expire_timeout / 1000
        while window and window[0][0] < cutoff:
            window.popleft()
        if len(window) >= o.queue_sender_max_messages or sum(n for _t, n in window) + size > o.queue_sender_max_bytes:
            return False
        window.append((now, size))
        return True

    def _refuse(self, key, src, dst):
        if not self.refused:
            self.hub.loop.call_soon(self._tell_refused)
        self.refused.add((key, src, dst))

    def _tell_refused(self):
        refused, self.refused = self.refused, set()
        if len(refused) > 0:
            logger.warning("queue full: refused frames for %d destination(s), senders told EXPIRE", len(refused))
        for key, src, dst in refused:
            self.hub.tell_expire(key, dst, src)

    async def _write(self):
        try:
            while self.pending:
                batch, self.pending = self.pending, []
                try:
                    refused, registered = await self.hub.db(registry.enqueue, batch, self.limits, late=self._queued_late)
                except DatabaseUnavailable:
                    # Nothing was queued (the outage is logged once, by the
                    # database link): each sender hears EXPIRE, once per peer.
                    for key, src, dst in {(entry.key, entry.src, entry.dst) for entry in batch}:
                        self.hub.tell_expire(key, dst, src)
                    continue
                finally:
                    self._landed(batch)
                self.hub.stats["frames_queued"] += len(batch) - len(refused)
                if refused:
                    self.hub.stats["queue_full"] += len(refused)
                for index in refused:
                    entry = batch[index]
                    self._refuse(entry.key, entry.src, entry.dst)
                # Destinations that connected while their frames were on the
                # way in: whoever holds them takes the queue again.
                for key, dst, worker in set(registered):
                    self.drain_at(worker, key, dst)
        finally:
            self.writer = None

    def _queued_late(self, result):
        """A batch the database queued after its senders heard EXPIRE (signaling.db): drain it where its peers are.

        A second word to the senders would add nothing; the frames may
        still reach peers that are connected.
        """
        _refused, registered = result
        for key, dst, worker in set(registered):
            self.drain_at(worker, key, dst)

    def _landed(self, batch):
        for entry in batch:
            place = (entry.key, entry.dst)
            self.in_flight[place] -= 1
            if not self.in_flight[place]:
                del self.in_flight[place]

    def drain_at(self, worker, key, dst):
        """Have whoever holds ``dst`` take its queue again."""
        if worker == self.hub.name:
            self.drain(key, dst)
        elif self.hub.transport is not None:
            self.hub.transport.send(worker, {"type": "peerjs.drain", "key": key, "dst": dst})

    # Out of the queue.

    def drain(self, key, dst):
        """Deliver to a peer of this worker whatever is queued for it now.

        A worker asks for a drain after it queued, and sends whatever comes
        next straight here: from this call on (not from when the queue is
        read) those frames wait until the queue is read, so that none
        overtakes what was queued before it.
        """
        connection = self.hub.local.get((key, dst))
        if connection is None:
            self.hub.claims.drain_missed((key, dst))
            return
        connection.drain_again = True
        if connection.held is None:  # else the drain under way reads the queue once more
            connection.held, connection.held_front = [], 0
            self.hub.spawn(self._drain(connection, key, dst))

    async def _drain(self, connection, key, dst):
        try:
            while connection.drain_again:
                connection.drain_again = False
                try:
                    frames = await self.hub.db(
                        registry.take_queued, key, dst, late=functools.partial(self.hub.reroute, key, dst)
                    )
                except DatabaseUnavailable:
                    break  # still queued: it expires, or the next drain takes it
                _hold(connection, frames)
        finally:
            _release(connection)

    def drain_all(self):
        """Every peer of this worker takes its queue again: the worker's inbox is heard again after a break.

        While its Redis subscription was broken (a Redis restart, a Sentinel
        failover), what others sent here came back to them: they queued
        frames for its peers, and the drains they asked for were lost the
        same way. Frames sent here from now on wait behind the queue, as
        behind any drain. One statement per DRAIN_CHUNK peers of a key.
        """
        by_key = collections.defaultdict(list)
        for (key, dst), connection in self.hub.local.items():
            connection.drain_again = True
            if connection.held is None:  # else the drain under way reads the queue once more
                connection.held, connection.held_front = [], 0
                by_key[key].append((dst, connection))
        for key, peers in by_key.items():
            for start in range(0, len(peers), DRAIN_CHUNK):
                self.hub.spawn(self._drain_together(key, peers[start : start + DRAIN_CHUNK]))

    async def _drain_together(self, key, peers):
        for _dst, connection in peers:
            connection.drain_again = False
        try:
            taken = await self.hub.db(
                registry.take_queued_for, key, [dst for dst, _connection in peers], late=functools.partial(self._taken_late, key)
            )
        except DatabaseUnavailable:
            taken = {}  # still queued: it expires, or the next drain takes it
        for dst, connection in peers:
            _hold(connection, taken.get(dst, []))
            if connection.drain_again:  # asked for again meanwhile: that read follows this one
                self.hub.spawn(self._drain(connection, key, dst))
            else:
                _release(connection)

    def _taken_late(self, key, taken):
        for dst, frames in taken.items():
            self.hub.reroute(key, dst, frames)

    def forget_idle_senders(self):
        """Drop the windows of senders that queued nothing lately (called by the expiry sweep)."""
        cutoff = self.hub.loop.time() - self.hub.options.expire_timeout / 1000
        for sender in [s for s, window in self.by_sender.items() if not window or window[-1][0] < cutoff]:
            del self.by_sender[sender]


def _hold(connection, frames):
    """Frames a read of the queue took for ``connection``: behind what earlier reads took, ahead of what it was sent since."""
    front = connection.held_front
    connection.held[front:front] = frames
    connection.held_front += len(frames)


def _release(connection):
    held, connection.held = connection.held, None
    for frame, src, kind in held:
        connection.deliver(frame, src, kind)
