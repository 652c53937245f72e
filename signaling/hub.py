"""The worker's hub: the peers this process holds, and how a frame reaches a peer.

One hub per worker process (per event loop). It keeps its own peers in a
dict, so relaying to a peer on the same worker is a dict lookup and a hand
over to that socket's writer: no database query, no thread hop, no channel
layer, nothing awaited. A frame for a peer held elsewhere goes to *the
worker* that holds it, found in the directory of where every peer of the
cluster is (signaling.directory), through the transport between workers
(signaling.bus.transport): that worker delivers it, or, if the peer has just
gone, queues it. A frame for a peer nobody holds waits in the queue
(signaling.offline) until the peer connects, or its sender hears EXPIRE. A
stale directory entry costs a hop, never a frame. What keeps the hub in step
with the cluster (beat, reaping, expiry, liveness) runs in signaling.services.

Peers are addressed by (key, id): ids are unique per key, as in the
reference's realms.

Connections are duck-typed (the consumer implements them): ``key``,
``peer_id`` (None once unregistered), ``connection_id``, ``address``,
``last_frame`` (loop time of the last frame received), ``buffer`` (frames
held back until the peer is open, or None), ``held``, ``held_front`` and
``drain_again`` (frames held back while its queue is drained, or None; where
the drain's frames go in it; whether to read the queue once more: see
signaling.offline),
``outbox`` (frames accepted for the client and not written yet),
``deliver(frame, src, kind)`` (never blocks), ``stalled_since()``,
``drop(code, reason)`` and ``expel(message, code, reason)`` (an ERROR frame
saying why, then ``drop``).
"""
import asyncio
import collections
import functools
import itertools
import logging
import os
import re
import secrets
import socket

from channels.layers import get_channel_layer
from django.db import transaction
from django.utils import timezone

from signaling import bans, broadcasts, codes, protocol, registry, signals
from signaling.bus import transport
from signaling.bus.transport import GONE, Transport
from signaling.conf import options
from signaling.db import UNREACHABLE, Database, DatabaseUnavailable
from signaling.directory import Directory
from signaling.http import client_group
from signaling.offline import OfflineQueue
from signaling.servers import held_writes

logger = logging.getLogger(__name__)

STOPPING = "stopping"  # register() outcome while the worker drains
RETRY = "retry"  # register() outcome while the database is away

MAX_UNKNOWN = 10_000  # frames for impossible ids awaiting their EXPIRE; past it, EXPIRE at once
MAX_HOPS = 3  # forwards of one frame between workers before it is queued instead
MAX_OPENING = 16  # sockets a worker opens at once; more wait their turn (see PeerConsumer.connect)
TAKES_QUEUE = (registry.CLAIMED, registry.REPLACED)  # claim outcomes whose socket gets what was queued for its id


def _claim_and_take_queues(requests):
    """Claim ids and take what was queued for each claimed one, in one trip to the database.

    One statement per key takes the queues of all its claimed ids. Where a
    batch claims one id twice (a reconnect overtaking its own socket), the
    last claim holds it and gets its queue.
    """
    with transaction.atomic():
        claims = registry.claim_all(requests)
        holder = {}  # (key, id) -> index of the claim that holds it now
        for i, (request, claim) in enumerate(zip(requests, claims)):
            if claim.outcome in TAKES_QUEUE:
                holder[request.key, request.peer_id] = i
        queued = {}
        for key in sorted({key for key, _id in holder}):
            dsts = sorted(peer_id for k, peer_id in holder if k == key)
            for dst, frames in registry.take_queued_for(key, dsts).items():
                queued[holder[key, dst]] = frames
        return [(claim, queued.get(i, [])) for i, claim in enumerate(claims)]


class Batches:
    """Requests to the registry, gathered while the previous batch is at the database and sent together.

    In a reconnect storm (or a page reloaded by every viewer) a batch holds
    every socket waiting, and costs the registry one turn of each key's lock
    and one commit instead of one per socket.
    """

    def __init__(self, hub):
        self.hub = hub
        self.pending = []  # (request, future of its result)
        self.running = False

    async def submit(self, request):
        """The request's result once its batch is carried out; DatabaseUnavailable if the database is away."""
        future = self.hub.loop.create_future()
        self.pending.append((request, future))
        if not self.running:
            self.running = True
            self.hub.spawn(self._run())
        return await future

    async def carry_out(self, requests):
        """The results of ``requests``, in order (on the database's threads)."""
        raise NotImplementedError

    def abandoned(self, request, result):
        """A result whose caller has gone (its socket's open was cancelled meanwhile)."""

    async def _run(self):
        try:
            while self.pending:
                batch, self.pending = self.pending, []
                try:
                    results = await self.carry_out([request for request, _future in batch])
                except Exception as exc:  # DatabaseUnavailable, or a fault: each caller answers "try again"
                    if not isinstance(exc, DatabaseUnavailable):
                        logger.exception("worker %s: a batch of %d registry requests failed", self.hub.name, len(batch))
                    for _request, future in batch:
                        if not future.done():
                            future.set_exception(DatabaseUnavailable(str(exc)))
                    continue
                for (request, future), result in zip(batch, results):
                    if future.done():
                        self.abandoned(request, result)
                    else:
                        future.set_result(result)
        finally:
            self.running = False


class Claims(Batches):
    """A worker's claims of ids, sent to the registry together (up to MAX_OPENING sockets open at once)."""

    def __init__(self, hub):
        super().__init__(hub)
        # A claim commits, and reads its id's queue, on a thread; its socket
        # becomes routable when the result is back on the loop. A frame whose
        # write to the queue committed in between is missed by that read, and
        # the drain its writer then asks for finds no socket yet: such drains
        # are kept here for the claim to run once it has settled.
        self.unsettled = collections.Counter()  # (key, id) -> claims of it not settled
        self.drains_missed = set()  # (key, id) among those, asked to drain meanwhile

    async def claim(self, request):
        peer = (request.key, request.peer_id)
        self.unsettled[peer] += 1
        try:
            return await self.submit(request)
        finally:
            self.unsettled[peer] -= 1
            if not self.unsettled[peer]:
                del self.unsettled[peer]

    def drain_missed(self, peer):
        """A drain for ``peer``, which has no socket here: keep it if a claim of it is under way."""
        if peer in self.unsettled:
            self.drains_missed.add(peer)

    def settled(self, peer):
        """Whether a drain was asked for ``peer`` while its claim was under way (and forget it)."""
        if peer in self.drains_missed and peer not in self.unsettled:
            self.drains_missed.discard(peer)
            return True
        return False

    async def carry_out(self, requests):
        return await self.hub.db(_claim_and_take_queues, requests, late=functools.partial(self._late, requests))

    def abandoned(self, request, result):
        self.hub.claimed_late(request, result)

    def _late(self, requests, results):
        for request, result in zip(requests, results):
            self.hub.claimed_late(request, result)


class Releases(Batches):
    """A worker's releases of ids, (key, id, connection id) each, sent to the registry together."""

    async def release(self, key, peer_id, connection_id):
        """Remove the row of this socket (if it is still its own); DatabaseUnavailable if the database is away."""
        await self.submit((key, peer_id, connection_id))

    async def carry_out(self, requests):
        # Carried out after all past its deadline, it needs nothing more:
        # the sockets are gone either way.
        return await self.hub.db(registry.release_all, requests)


def _worker_name():
    host = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:40]
    return f"{host}-{os.getpid()}-{secrets.token_hex(3)}"


class Hub:
    def __init__(self):
        self.options = options()
        self.loop = asyncio.get_running_loop()
        self.name = _worker_name()
        self.host, self.pid = socket.gethostname(), os.getpid()
        self.started_at = timezone.now()
        self.local = {}  # (key, id) -> registered connection on this worker
        self.connections = {}  # connection id -> every open socket on this worker
        self.addresses = collections.Counter()  # client (signaling.http.client_group) -> open sockets on this worker
        self.unknown = {}  # (key, sender, impossible dst) -> (loop time of its EXPIRE, the EXPIRE frame)
        self.unreleased = set()  # (key, id, connection id) whose release the database missed
        self.stats = collections.Counter()
        self.bans = bans.BanList()  # active bans, re-read by bans.refresh
        self.stopping = False
        self.opening = asyncio.Semaphore(MAX_OPENING)
        self._connection_ids = itertools.count()
        self._tasks = set()
        self._expires = set()  # (key, about, to): EXPIREs to send at the end of the loop iteration
        # Registry calls, and a thread of its own for the beat, which must not
        # queue behind a storm of claims or the cluster would take it for dead.
        self.db = Database(self.stats, threads=4, name="registry")
        self.db_aside = Database(self.stats, threads=1, name="registry-beat")
        self.offline = OfflineQueue(self)
        self.claims = Claims(self)
        self.releases = Releases(self)
        layer = transport.channel_layer()
        self.transport = None
        if layer is not None:
            self.transport = Transport(
                layer, self.name, self.stats, self.handle, self.undelivered, on_heard_again=self.offline.drain_all
            )
        # Operators' Disconnects and changes of bans: Channels groups on the default layer.
        groups = get_channel_layer()
        self.membership = None
        if groups is not None:
            self.membership = broadcasts.Membership(groups, self.name, self.options.worker_beat / 1000, self.handle)
        self.directory = Directory(self)

    def spawn(self, coroutine):
        """Run ``coroutine`` beside the caller; its failure is logged, never lost."""
        task = self.loop.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task):
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("worker %s: a task failed", self.name, exc_info=task.exception())

    # Sockets and registrations.

    def new_connection_id(self):
        """An id for a socket, unique across the cluster (the worker's random name is in it)."""
        return f"{self.name[-6:]}{next(self._connection_ids)}"

    def attach(self, connection):
        """Count an open socket; False if its client (address, or IPv6 network) holds too many on this worker already."""
        client = client_group(connection.address, self.options)
        limit = self.options.max_sockets_per_address
        if limit and client and self.addresses[client] >= limit:
            return False
        self.connections[connection.connection_id] = connection
        if client:
            self.addresses[client] += 1
        return True

    def detach(self, connection):
        client = client_group(connection.address, self.options)
        if self.connections.pop(connection.connection_id, None) is not None and client:
            self.addresses[client] -= 1
            if self.addresses[client] <= 0:
                del self.addresses[client]

    async def register(self, connection, request, app):
        """Claim ``request.peer_id`` for ``connection`` by ``app``'s rules; returns the registry outcome.

        On success the connection is routable at once, but buffers what it is
        sent (behind the messages that were queued for it) until :meth:`open`,
        so that nothing overtakes them. A takeover the app refuses (another
        address) is TAKEN for the caller.
        """
        if self.stopping:
            return STOPPING
        peer = (request.key, request.peer_id)
        try:
            claim, queued = await self.claims.claim(registry.ClaimRequest(
                request.key, request.peer_id, request.token, self.name, connection.connection_id,
                connection.address, app.concurrent_limit, app.takeover_same_address,
            ))
        except DatabaseUnavailable:
            return RETRY
        finally:
            drain = self.claims.settled(peer)
        if claim.outcome == registry.KEPT:
            self.stats["takeovers:refused"] += 1
            logger.warning(
                "takeover refused: %s of app %s asked from %s, held from %s (socket %s on worker %s); "
                "the app takes over ids from the same address only",
                request.peer_id, request.key, connection.address, claim.previous_address,
                claim.previous_connection, claim.previous_worker,
            )
            return registry.TAKEN
        if claim.outcome in (registry.TAKEN, registry.FULL):
            return claim.outcome
        connection.buffer[:0] = queued  # older than anything sent to it from now on
        self.local[peer] = connection
        self.directory.arrived(peer)
        if drain:
            self.offline.drain(*peer)
        if claim.outcome == registry.REPLACED:
            self._taken_over(request.key, request.peer_id, connection.address, claim)
        return claim.outcome

    def _taken_over(self, key, peer_id, address, claim):
        """A socket took ``peer_id`` over with its token: close the one that held it, and say so."""
        self.stats["takeovers:replaced"] += 1
        # Every takeover, with both addresses: a token replayed from
        # elsewhere shows as one from an address its peer never had.
        logger.info(
            "takeover: %s of app %s from %s replaces its socket %s from %s on worker %s",
            peer_id, key, address, claim.previous_connection, claim.previous_address, claim.previous_worker,
        )
        self.close_connection(
            claim.previous_worker, claim.previous_connection, codes.REPLACED,
            "Replaced by a newer connection with the same id",
        )

    def claimed_late(self, request, result):
        """A claim the database carried out after its socket heard 'try again' (signaling.db).

        Its row would hold the id for a socket that is gone, and the frames
        it took from the queue would be lost: do what register does for a
        replaced socket, let the id go, and send the frames on as for a peer
        that has just left (queued again, or delivered if it is back).
        """
        claim, queued = result
        if claim.outcome not in TAKES_QUEUE:
            return
        if claim.outcome == registry.REPLACED:
            self._taken_over(request.key, request.peer_id, request.address, claim)
        self.spawn(self._release_late(request.key, request.peer_id, request.connection, queued))

    async def _release_late(self, key, peer_id, connection_id, queued):
        try:
            await self.releases.release(key, peer_id, connection_id)
        except DatabaseUnavailable:
            self.unreleased.add((key, peer_id, connection_id))
        self.reroute(key, peer_id, queued)

    def reroute(self, key, dst, frames):
        """Frames a late call took from the queue for ``dst``: on to wherever it is now, or back into the queue."""
        for frame, src, kind in frames:
            self.route(key, src, dst, kind, frame)

    def open(self, connection):
        """Deliver what was queued for a newly registered peer, then go live."""
        frames, connection.buffer = connection.buffer, None
        if connection.held is not None:
            # A drain is under way: what the socket was sent while it opened
            # is older than what the drain takes and holds back.
            connection.held[:0] = frames
            connection.held_front += len(frames)
        else:
            for frame, src, kind in frames:
                connection.deliver(frame, src, kind)
        self._signal(signals.peer_connected, connection, connection.peer_id)

    async def unregister(self, connection):
        """Forget a socket; remove its registration only if it is still its own."""
        self.detach(connection)
        peer_id, connection.peer_id = connection.peer_id, None
        if peer_id is None:
            return
        peer = (connection.key, peer_id)
        if self.local.get(peer) is connection:
            del self.local[peer]
            self.directory.left(peer)
        if connection.buffer is None:  # it was open: its peer_connected was sent
            self._signal(signals.peer_disconnected, connection, peer_id)
        if self.stopping:
            self.stats["drained"] += 1
            return  # the drain removes every row of this worker in one go
        try:
            await self.releases.release(connection.key, peer_id, connection.connection_id)
        except DatabaseUnavailable:
            self.unreleased.add((connection.key, peer_id, connection.connection_id))

    def _signal(self, signal, connection, peer_id, **extra):
        signal.send_robust(
            sender=self.name, key=connection.key, peer_id=peer_id, address=connection.address,
            worker=self.name, connection=connection.connection_id, at=timezone.now(), **extra,
        )

    def received(self, connection, message):
        """Send peer_message for a frame from ``connection``'s peer (the caller checks for receivers first)."""
        self._signal(signals.peer_message, connection, connection.peer_id, message=message)

    def waiting(self):
        """Frames this worker holds that have not gone on yet, by where they wait (the admin's queue depth)."""
        return {
            "outboxes": sum(len(connection.outbox) for connection in self.connections.values()),
            "offline": len(self.offline.pending),
            "other_workers": self.transport.in_flight() if self.transport is not None else 0,
        }

    # Delivery.

    def relay(self, key, src, action):
        """The hot path: hand a peer's frame to its destination, wherever it is."""
        peer = (key, action.dst)
        connection = self.local.get(peer)
        if connection is not None:
            self.stats["frames_relayed:same_worker"] += 1
            connection.deliver(action.frame, src, action.kind)
            return
        if peer in self.directory.routes:
            self.stats["frames_relayed:other_worker"] += 1
        self.route(key, src, action.dst, action.kind, action.frame)

    def route(self, key, src, dst, kind, frame, hops=0):
        """Hand a frame (a peer's, or the server's EXPIRE) to ``dst``: here, on its worker, or into the queue."""
        moving = self.directory.moving
        if moving and (key, dst) in moving:
            moving[key, dst].hold(src, kind, frame, hops)
            return
        if self.offline.in_flight and (key, dst) in self.offline.in_flight and kind in protocol.QUEUED:
            # Earlier frames for dst are on their way into the queue: this one
            # follows them there, and the drain that takes them takes it too.
            self.offline.put(key, src, dst, kind, frame)
            return
        connection = self.local.get((key, dst))
        if connection is not None:
            connection.deliver(frame, src, kind)
            return
        worker = self.directory.worker_of((key, dst))
        if worker is not None and hops < MAX_HOPS:
            self.forward(worker, key, src, dst, kind, frame, hops)
        elif kind == protocol.EXPIRE and self.transport is not None:
            # The server's own notice, for a sender this worker knows nothing
            # of (its announcement may have been lost): ask the registry.
            self.spawn(self._locate_and_send(key, src, dst, kind, frame, hops))
        else:
            self.offline.put(key, src, dst, kind, frame)

    async def _locate_and_send(self, key, src, dst, kind, frame, hops):
        send = functools.partial(self._send_located, key, src, dst, kind, frame, hops)
        try:
            where = await self.db(registry.locate, key, dst, self.options.worker_timeout, late=send)
        except DatabaseUnavailable:
            return
        send(where)

    def _send_located(self, key, src, dst, kind, frame, hops, where):
        if where is None or not where.worker_alive:
            return  # the sender is gone too: nobody to tell
        if where.worker == self.name:
            connection = self.local.get((key, dst))
            if connection is not None:
                connection.deliver(frame, src, kind)
        elif hops < MAX_HOPS:
            self.forward(where.worker, key, src, dst, kind, frame, hops)

    def forward(self, worker, key, src, dst, kind, frame, hops):
        """Hand a frame to the worker that holds ``dst``; it delivers, queues or answers."""
        message = {
            "type": "peerjs.relay", "key": key, "src": src, "dst": dst,
            "kind": kind, "frame": frame, "hops": hops + 1,
        }
        if not self.transport.send(worker, message) and kind in protocol.QUEUED:
            self.tell_expire(key, dst, src)

    def tell_expire(self, key, about, to):
        """Tell peer ``to`` that what it sent peer ``about`` will not arrive (PeerJS: peer-unavailable).

        Once per sender and destination however many of its frames one event
        (a full queue, a lost batch) concerned: the notices go out at the end
        of the event loop's iteration.
        """
        if not self._expires:
            self.loop.call_soon(self._send_expires)
        self._expires.add((key, about, to))

    def _send_expires(self):
        expires, self._expires = self._expires, set()
        for key, about, to in expires:
            self.stats["expire_sent"] += 1
            self.route(key, about, to, protocol.EXPIRE, protocol.expire_frame(about, to))

    def undeliverable(self, connection, frames):
        """``connection`` closed with ``frames`` still to write: handle them as for a peer that has just gone."""
        self.stats["write_failed"] += len(frames)
        key, peer_id = connection.peer
        for frame, src, kind in frames:
            self.offline.put(key, src, peer_id, kind, frame)

    def no_such_peer(self, key, src, action):
        """A frame for an id no peer can hold: EXPIRE after expire_timeout, once per sender and id."""
        if action.expire is None:
            return  # LEAVE or EXPIRE about nobody
        entry = (key, src, action.about)
        if entry in self.unknown:
            return
        if len(self.unknown) >= MAX_UNKNOWN:
            self.route(key, action.about, src, protocol.EXPIRE, action.expire)
            return
        self.unknown[entry] = (self.loop.time() + self.options.expire_timeout / 1000, action.expire)

    def expire_unknown(self):
        now = self.loop.time()
        for entry in [entry for entry, (at, _frame) in self.unknown.items() if at <= now]:
            key, src, about = entry
            _at, frame = self.unknown.pop(entry)
            self.stats["expire_sent"] += 1
            self.route(key, about, src, protocol.EXPIRE, frame)

    def close_connection(self, worker, connection_id, code, reason):
        """Close a socket wherever it is."""
        if worker == self.name:
            connection = self.connections.get(connection_id)
            if connection is not None:
                self.spawn(connection.drop(code, reason))
        elif self.transport is not None:
            self.transport.send(worker, broadcasts.close_message(connection_id, code, reason))

    # What other workers send.

    def handle(self, messages):
        """Act on messages from other workers (or the admin), in order; nothing here waits."""
        with held_writes:  # a socket's frames in this batch go out together
            self._handle(messages)

    def _handle(self, messages):
        for message in messages:
            kind = message.get("type")
            if kind == "peerjs.relay":
                self.route(
                    message["key"], message["src"], message["dst"], message["kind"], message["frame"], message["hops"]
                )
            elif kind == "peerjs.directory":
                self.directory.learn(message["worker"], message["here"], message["gone"])
            elif kind == "peerjs.drain":
                self.offline.drain(message["key"], message["dst"])
            elif kind == broadcasts.CLOSE:
                self.close_connection(self.name, message["connection"], message["code"], message["reason"])
            elif kind == broadcasts.BANS:
                self.spawn(bans.refresh(self))

    def undelivered(self, worker, messages, reason):
        """Messages for ``worker`` that did not arrive.

        When nobody reads its inbox (it died or stopped), frames go where
        their peer is now: the registry knows, or the queue keeps them for
        the peer's return. When their fate is unknown (Redis went away, no
        acknowledgement), their senders hear EXPIRE, once per peer.
        """
        told = set()
        for message in messages:
            if message.get("type") != "peerjs.relay":
                continue  # announcements, drains and closes are best effort
            key, src, dst, kind = message["key"], message["src"], message["dst"], message["kind"]
            if reason == GONE:
                self.directory.inbox_gone((key, dst), worker)
            if reason == GONE or kind == protocol.EXPIRE:
                # Where the peer is now; the server's own EXPIRE tries that too.
                held = self.directory.moving.get((key, dst))
                if held is not None:  # ahead of what was held back behind it
                    held.put_back(src, kind, message["frame"], message["hops"])
                else:
                    self.route(key, src, dst, kind, message["frame"], message["hops"])
            elif kind in protocol.QUEUED and (key, src, dst) not in told:
                told.add((key, src, dst))
                self.tell_expire(key, dst, src)


_hub = None


def get_hub():
    """This worker's hub (one per event loop; tests run several loops). signaling.services starts it."""
    global _hub
    if _hub is None or _hub.loop is not asyncio.get_running_loop():
        _hub = Hub()
    return _hub


def known_bans():
    """The bans in force as this worker knows them, for its synchronous code (the HTTP API's threads).

    Its hub's copy (signaling.bans), or, with no hub yet (daphne before its
    first socket), the bans read from the database now; while the database
    is away, none, as for a hub that has not read them yet.
    """
    hub = _hub
    if hub is not None:
        return hub.bans
    try:
        return bans.BanList(bans.active_rows())
    except UNREACHABLE:
        return bans.BanList()


def current_hub():
    """This worker's hub if it exists on the running loop, else None (for health checks and metrics)."""
    if _hub is not None and _hub.loop is asyncio.get_running_loop():
        return _hub
    return None
