"""The worker's hub: the peers this process holds, and how a frame reaches a peer.

One hub per worker process (per event loop). It keeps its own peers in a
dict, so relaying to a peer on the same worker is a dict lookup and a socket
write: no database query, no thread hop, no channel layer. A frame for a peer
held elsewhere travels through the channel layer to *the worker* that holds
it, which delivers it or, if the peer has just gone, queues it or answers the
sender. A stale routing guess costs a hop, never a lost message.

Connections are duck-typed (the consumer implements them): ``peer_id``,
``connection_id``, ``last_frame`` (loop time of the last frame received),
``buffer``, ``deliver(frame, src, kind)`` and ``drop(code, reason)``.
"""
import asyncio
import collections
import itertools
import logging
import os
import re
import secrets
import signal
import socket
import threading

from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.exceptions import ChannelFull
from channels.layers import get_channel_layer
from django.utils import timezone

from signaling import protocol, registry
from signaling.conf import options

logger = logging.getLogger(__name__)

STOPPING = "stopping"  # register() outcome while the worker drains

MAX_UNKNOWN = 10_000  # frames for impossible ids awaiting their EXPIRE; past it, EXPIRE at once
MAX_HOPS = 3  # forwards of one frame between workers before it is queued instead
# How long a worker trusts what the registry said about where a peer is held,
# so that a stream of frames to a peer on another worker costs one database
# read, not one each. A peer that moved meanwhile costs its old worker a hop.
ROUTE_TTL = 2.0  # seconds

# Close codes. Standard ones where they fit (the reference closes with none);
# the 4100 range is ours. See PeerConsumer.close_with for servers that
# reserve the standard range.
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_GOING_AWAY = 1001
CLOSE_REPLACED = 4100  # the same id and token connected on another socket
CLOSE_TIMEOUT = 4101  # no frame at all within alive_timeout
CLOSE_DISCONNECTED = 4102  # an operator disconnected the peer (admin action)
CLOSE_WORKER_LOST = 4103  # this worker's registrations were reaped; reconnect


def _claim_and_take_queue(request, worker, connection_id, address, limit):
    """Claim an id and take what was queued for it, in one trip to the database thread."""
    claim = registry.claim(request.peer_id, request.key, request.token, worker, connection_id, address, limit)
    if claim.outcome in (registry.CLAIMED, registry.REPLACED):
        return claim, registry.take_queued(request.peer_id)
    return claim, []


def _db(function):
    return database_sync_to_async(function)


def _db_aside(function):
    """Like _db, but on a thread of its own: the worker's beat must not queue
    behind a storm of claims, or the cluster would take it for dead."""
    return database_sync_to_async(function, thread_sensitive=False)


def inbox_name(worker):
    """The channel on which ``worker`` receives frames for its peers."""
    return f"peerjs.worker.{worker}"


def _worker_name():
    host = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:40]
    return f"{host}-{os.getpid()}-{secrets.token_hex(3)}"


class Hub:
    def __init__(self):
        self.options = options()
        self.loop = asyncio.get_running_loop()
        self.name = _worker_name()
        self.started_at = timezone.now()
        self.layer = get_channel_layer()
        self.local = {}  # peer id -> registered connection on this worker
        self.connections = {}  # connection id -> every open socket on this worker
        self.routes = {}  # peer id -> (worker holding it, loop time until which that is trusted)
        self.unknown = {}  # (sender, impossible dst) -> (loop time of its EXPIRE, the EXPIRE frame)
        self._connection_ids = itertools.count()
        self.stats = collections.Counter()
        self._tasks = []
        self._started = None
        self.stopping = False

    # Life cycle.

    async def ensure_started(self):
        """Announce the worker and start its services, once."""
        if self._started is None:
            self._started = self.loop.create_task(self._start())
        await asyncio.shield(self._started)

    async def _start(self):
        await _db(registry.worker_beat)(self.name, socket.gethostname(), os.getpid(), self.started_at)
        services = [self._beat_loop, self._expiry_loop, self._liveness_loop]
        if self.layer is not None:
            services.append(self._inbox_loop)
        self._tasks = [self.loop.create_task(service()) for service in services]
        self._drain_on_sigterm()
        logger.info("worker %s started", self.name)

    def _drain_on_sigterm(self):
        """On SIGTERM, close every socket and free this worker's rows, then let the server stop.

        The handler is chained in front of the ASGI server's own (daphne's
        reactor, uvicorn's), which runs once the drain is done.
        """
        if threading.current_thread() is not threading.main_thread():
            return
        previous = signal.getsignal(signal.SIGTERM)

        def on_sigterm(signum, frame):
            signal.signal(signal.SIGTERM, previous)  # a second SIGTERM stops at once
            self.loop.call_soon_threadsafe(self.loop.create_task, self._stop_then(previous, signum, frame))

        signal.signal(signal.SIGTERM, on_sigterm)

    async def _stop_then(self, previous, signum, frame):
        try:
            await asyncio.wait_for(self.stop(), timeout=10)
        except Exception:
            logger.exception("worker %s did not drain cleanly", self.name)
        if callable(previous):
            previous(signum, frame)
        else:
            os.kill(os.getpid(), signal.SIGTERM)

    async def stop(self):
        """Close every socket with 1001 and remove this worker's rows at once."""
        self.stopping = True
        for task in self._tasks:
            task.cancel()
        for connection in list(self.connections.values()):
            await connection.drop(CLOSE_GOING_AWAY, "Server shutting down")
        await _db(registry.worker_gone)(self.name)
        logger.info(
            "worker %s stopped: %d sockets closed, registrations removed; counts %s",
            self.name, self.stats["drained"], dict(self.stats),
        )

    # Registration.

    def new_connection_id(self):
        """An id for a socket, unique across the cluster (the worker's random name is in it)."""
        return f"{self.name[-6:]}{next(self._connection_ids)}"

    async def register(self, connection, request, address):
        """Claim ``request.peer_id`` for ``connection``; returns the registry outcome.

        On success the connection is routable at once, but buffers what it is
        sent (behind the messages that were queued for it) until :meth:`open`,
        so that nothing overtakes them.
        """
        await self.ensure_started()
        if self.stopping:
            return STOPPING
        self.connections[connection.connection_id] = connection
        claim, queued = await _db(_claim_and_take_queue)(
            request, self.name, connection.connection_id, address, self.options.concurrent_limit
        )
        if claim.outcome in (registry.TAKEN, registry.FULL):
            return claim.outcome
        connection.buffer[:0] = queued  # older than anything sent to it from now on
        self.local[request.peer_id] = connection
        if claim.outcome == registry.REPLACED:
            await self._close_connection(
                claim.previous_worker,
                claim.previous_connection,
                CLOSE_REPLACED,
                "Replaced by a newer connection with the same id",
            )
        return claim.outcome

    async def open(self, connection):
        """Deliver what was queued for a newly registered peer, then go live."""
        frames, connection.buffer = connection.buffer, None
        for frame, src, kind in frames:
            await connection.deliver(frame, src, kind)

    async def unregister(self, connection):
        """Forget a socket; remove its registration only if it is still its own."""
        self.connections.pop(connection.connection_id, None)
        peer_id, connection.peer_id = connection.peer_id, None
        if peer_id is None:
            return
        if self.stopping:
            self.stats["drained"] += 1
            return  # stop() removes every row of this worker in one go
        if self.local.get(peer_id) is connection:
            del self.local[peer_id]
        await _db(registry.release)(peer_id, connection.connection_id)

    # Delivery.

    async def relay(self, src, action):
        """The hot path: hand a relayed frame to its destination."""
        dst = action.dst
        connection = self.local.get(dst)
        if connection is not None:
            self.stats["frames_relayed:same_worker"] += 1
            await connection.deliver(action.frame, src, action.kind)
            return
        route = self.routes.get(dst)
        if route is not None and route[1] > self.loop.time():
            await self._forward(route[0], src, dst, action.kind, action.frame, 0)
            return
        await self.deliver_elsewhere(src, dst, action.kind, action.frame, 0)

    async def deliver_elsewhere(self, src, dst, kind, frame, hops):
        """Deliver a frame for a peer this worker does not hold (or no longer holds)."""
        connection = self.local.get(dst)
        if connection is not None:
            await connection.deliver(frame, src, kind)
            return
        where = await _db(registry.locate)(dst, self.options.worker_timeout)
        if where is None:
            await self._queue(src, dst, kind, frame)
        elif where.worker == self.name:
            connection = self.connections.get(where.connection)
            if connection is not None and connection.peer_id == dst:
                # Registered a moment ago: its registration is still settling.
                await connection.deliver(frame, src, kind)
            else:
                await self._gone(src, dst, kind, frame, where)
        elif not where.worker_alive:
            await self._gone(src, dst, kind, frame, where)
        elif hops >= MAX_HOPS or self.layer is None:
            await self._queue(src, dst, kind, frame)
        else:
            self.routes[dst] = (where.worker, self.loop.time() + ROUTE_TTL)
            await self._forward(where.worker, src, dst, kind, frame, hops)

    async def _forward(self, worker, src, dst, kind, frame, hops):
        """Hand a frame to the worker that holds ``dst``; it delivers, queues or answers."""
        message = {"type": "peerjs.relay", "src": src, "dst": dst, "kind": kind, "frame": frame, "hops": hops + 1}
        if await self._send_to_worker(worker, message):
            self.stats["frames_relayed:other_worker"] += 1
        else:
            self.routes.pop(dst, None)
            await self.tell_expire(dst, src)

    async def tell_expire(self, about, to):
        """Tell peer ``to`` that what it sent peer ``about`` will not arrive (PeerJS: peer-unavailable)."""
        await self.deliver_elsewhere(about, to, protocol.EXPIRE, protocol.expire_frame(about, to), 0)

    async def _gone(self, src, dst, kind, frame, where):
        """``dst`` is registered to a socket that no longer exists: free the id, keep the frame.

        Its worker died or the socket closed a moment ago; the peer's WebRTC
        connections may well be alive, and PeerJS reconnects with the same id.
        So the frame waits in the queue like any frame for an offline peer.
        """
        self.stats["dead_destination"] += 1
        await _db(registry.release)(dst, where.connection)
        await self._queue(src, dst, kind, frame)

    async def undeliverable(self, connection, dst, frame, src, kind):
        """A write of a frame for ``dst`` to ``connection`` failed: it has closed.

        Forget the socket and queue the frame, as for a peer that has just gone.
        """
        self.stats["write_failed"] += 1
        await self.unregister(connection)
        await self._queue(src, dst, kind, frame)

    async def no_such_peer(self, src, action):
        """A frame for an id no peer can hold: EXPIRE after expire_timeout, once per sender and id."""
        if action.expire is None:
            return  # LEAVE or EXPIRE about nobody
        key = (src, action.about)
        if key in self.unknown:
            return
        if len(self.unknown) >= MAX_UNKNOWN:
            await self.deliver_elsewhere(action.about, src, protocol.EXPIRE, action.expire, 0)
            return
        self.unknown[key] = (self.loop.time() + self.options.expire_timeout / 1000, action.expire)

    async def _queue(self, src, dst, kind, frame):
        if kind not in protocol.QUEUED:
            return  # LEAVE and EXPIRE for an offline peer mean nothing
        o = self.options
        queued = await _db(registry.enqueue)(
            dst, src, frame, o.expire_timeout, o.queue_max_messages, o.queue_max_bytes
        )
        if not queued:
            self.stats["queue_full"] += 1
            logger.warning("queue for %r is full; refused a %s from %r", dst, kind, src)
            await self.tell_expire(dst, src)
            return
        self.stats["frames_queued"] += 1
        # The destination may have connected (and drained its queue) while
        # this frame was on its way into the queue: have its worker drain again.
        where = await _db(registry.locate)(dst, self.options.worker_timeout)
        if where is None:
            return
        if where.worker == self.name:
            await self.drain(dst)
        elif where.worker_alive:
            await self._send_to_worker(where.worker, {"type": "peerjs.drain", "dst": dst})

    async def drain(self, peer_id):
        """Deliver to a peer of this worker whatever is queued for it now."""
        connection = self.local.get(peer_id)
        if connection is None:
            return
        for frame, src, kind in await _db(registry.take_queued)(peer_id):
            await connection.deliver(frame, src, kind)

    async def _close_connection(self, worker, connection_id, code, reason):
        if worker == self.name:
            connection = self.connections.get(connection_id)
            if connection is not None:
                await connection.drop(code, reason)
        else:
            message = {"type": "peerjs.close", "connection": connection_id, "code": code, "reason": reason}
            await self._send_to_worker(worker, message)

    # Between workers.

    async def _send_to_worker(self, worker, message):
        """Put a message on ``worker``'s inbox; False (logged, counted) if that failed."""
        try:
            await self.layer.send(inbox_name(worker), message)
        except ChannelFull:
            self.stats["inbox_full"] += 1
            logger.warning(
                "inbox full: worker %s did not take a %s (%d refused so far)",
                worker, message["type"], self.stats["inbox_full"],
            )
            return False
        except Exception as exc:
            # Redis down or unreachable: the caller answers the sender.
            self.stats["redis_errors"] += 1
            logger.warning("could not send %s to worker %s: %r", message["type"], worker, exc)
            return False
        return True

    async def _inbox_loop(self):
        channel = inbox_name(self.name)
        while True:
            try:
                message = await self.layer.receive(channel)
            except asyncio.CancelledError:
                raise
            except Exception:
                self.stats["redis_errors"] += 1
                logger.exception("worker %s cannot read its inbox; retrying", self.name)
                await asyncio.sleep(1)
                continue
            try:
                await self.handle(message)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("worker %s failed on %s", self.name, message.get("type"))

    async def _adopt_inbox(self, worker):
        """Re-route what was sent to a worker that died before reading it.

        Its peers have lost their sockets; they may have reconnected
        elsewhere already, or will, or their senders hear EXPIRE. The dead
        worker's closes and drains have nothing left to act on.
        """
        if self.layer is None:
            return
        rerouted = 0
        while True:
            try:
                message = await asyncio.wait_for(self.layer.receive(inbox_name(worker)), timeout=0.5)
            except asyncio.TimeoutError:
                logger.warning("dead worker %s left %d frames in its inbox; re-routed", worker, rerouted)
                return
            if message.get("type") == "peerjs.relay":
                rerouted += 1
                await self.deliver_elsewhere(
                    message["src"], message["dst"], message["kind"], message["frame"], message["hops"]
                )

    async def handle(self, message):
        """Act on a message from another worker (or from the admin)."""
        kind = message.get("type")
        if kind == "peerjs.relay":
            await self.deliver_elsewhere(
                message["src"], message["dst"], message["kind"], message["frame"], message["hops"]
            )
        elif kind == "peerjs.drain":
            await self.drain(message["dst"])
        elif kind == "peerjs.close":
            await self._close_connection(self.name, message["connection"], message["code"], message["reason"])

    # Services: every worker runs them; the database makes sure each job is done once.

    async def _every(self, milliseconds, job):
        while True:
            await asyncio.sleep(milliseconds / 1000)
            try:
                await job()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("worker %s: %s failed; will retry", self.name, job.__name__)

    def _beat_loop(self):
        return self._every(self.options.worker_beat, self.beat)

    def _expiry_loop(self):
        return self._every(self.options.cleanup_out_msgs, self.expire)

    def _liveness_loop(self):
        period = min(self.options.alive_timeout / 4, 5000)
        return self._every(period, self.check_liveness)

    async def beat(self):
        """Tell the cluster this worker lives; reap workers that do not."""
        if not await _db_aside(registry.worker_beat)(self.name, socket.gethostname(), os.getpid(), self.started_at):
            # We were silent long enough to be presumed dead, so our rows are
            # gone and others may hand out our peers' ids: make them reconnect.
            logger.error("worker %s was reaped while alive; closing its sockets", self.name)
            for connection in list(self.connections.values()):
                await connection.drop(CLOSE_WORKER_LOST, "Worker lost its registrations")
        dead, freed = await _db(registry.reap)(self.options.worker_timeout)
        if dead or freed:
            self.stats["workers_reaped"] += len(dead)
            logger.warning("reaped workers %s and %d peer rows", dead, freed)
        for worker in dead:
            await self._adopt_inbox(worker)
        cutoff = self.loop.time() - self.options.worker_beat / 1000
        active = [p for p, c in self.local.items() if c.last_frame >= cutoff]
        if active:
            await _db(registry.touch)(active, self.name)

    async def expire(self):
        """Drop queued messages past their time; tell each sender once."""
        now = self.loop.time()
        for key in [key for key, (at, _frame) in self.unknown.items() if at <= now]:
            src, about = key
            _at, frame = self.unknown.pop(key)
            self.stats["expire_sent"] += 1
            await self.deliver_elsewhere(about, src, protocol.EXPIRE, frame, 0)
        for src, dst in await _db(registry.take_expired)():
            self.stats["expire_sent"] += 1
            await self.tell_expire(dst, src)

    async def check_liveness(self):
        """Close sockets that sent no frame at all within alive_timeout; forget stale routes."""
        now = self.loop.time()
        self.routes = {dst: route for dst, route in self.routes.items() if route[1] > now}
        cutoff = now - self.options.alive_timeout / 1000
        for connection in list(self.connections.values()):
            if connection.last_frame < cutoff:
                self.stats["timed_out"] += 1
                await connection.drop(CLOSE_TIMEOUT, "No sign of life within alive_timeout")


def request_disconnect(peer):
    """Ask the worker holding ``peer`` (a Peer row) to close its socket; for sync code (the admin)."""
    message = {
        "type": "peerjs.close",
        "connection": peer.connection,
        "code": CLOSE_DISCONNECTED,
        "reason": "Disconnected by an operator",
    }
    async_to_sync(get_channel_layer().send)(inbox_name(peer.worker), message)


_hub = None


def current_hub():
    """This worker's hub if it has started on the running loop, else None (for health checks)."""
    if _hub is not None and _hub.loop is asyncio.get_running_loop():
        return _hub
    return None


def get_hub():
    """This worker's hub (one per event loop; tests run several loops)."""
    global _hub
    if _hub is None or _hub.loop is not asyncio.get_running_loop():
        _hub = Hub()
    return _hub

