"""The signaling socket: turns WebSocket events into protocol and hub calls."""
import asyncio
import logging
import time
import urllib.parse

from channels.consumer import get_handler_name
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer

from signaling import hub as hubs
from signaling import metrics, protocol, registry
from signaling.conf import options
from signaling.http import client_address

logger = logging.getLogger(__name__)


class PeerConsumer(AsyncWebsocketConsumer):
    async def __call__(self, scope, receive, send):
        # The worker's hub listens on the channel layer; a socket needs no
        # channel of its own (that would cost a subscription per socket), so
        # it has one source of events. Read it in a plain loop: Channels' loop
        # multiplexes sources by making a task per event, which cost more
        # than half of the relay's CPU when profiled.
        self.scope = scope
        self.channel_layer = None
        self.base_send = send
        try:
            while True:
                await self.dispatch(await receive())
        except StopConsumer:
            pass

    async def dispatch(self, message):
        # Channels makes a thread hop to close stale database connections
        # before every handler. Frames never touch the database here, and the
        # registry calls clean up after themselves (database_sync_to_async),
        # so the hop would only tax the hot path.
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    async def connect(self):
        started = time.perf_counter()  # for metrics.OPEN_LATENCY
        self.options = options()
        self.hub = hubs.get_hub()
        self.connection_id = self.hub.new_connection_id()
        self.peer_id = None
        self.buffer = []  # frames for this peer held back until it is open
        self.bad_frames = 0
        self.last_frame = self.hub.loop.time()
        self.allowance = float(self.options.flood_burst)
        self.throttled_since = None

        if not self.options.origin_allowed(_header(self.scope, b"origin")):
            self.hub.stats["sockets_opened:refused"] += 1
            await self.close()  # before accept: the client gets HTTP 403
            return
        await self.accept()
        try:
            request = protocol.check_connect(_query(self.scope), self.options)
        except protocol.ProtocolError as exc:
            self.hub.stats["sockets_opened:error"] += 1
            await self.refuse(protocol.error_frame(str(exc)))
            return
        self.peer_id = request.peer_id
        outcome = await self.hub.register(self, request, client_address(self.scope, self.options.proxied))
        if outcome == hubs.STOPPING:
            # No ERROR frame: the client would give up. A plain close makes it
            # reconnect, through the load balancer, to a worker that stays.
            self.peer_id = None
            await self.close_with(hubs.CLOSE_GOING_AWAY)
        elif outcome == registry.TAKEN:
            self.peer_id = None
            self.hub.stats["sockets_opened:taken"] += 1
            await self.refuse(protocol.ID_TAKEN_FRAME)
        elif outcome == registry.FULL:
            self.peer_id = None
            self.hub.stats["sockets_opened:full"] += 1
            await self.refuse(protocol.error_frame(protocol.MSG_LIMIT))
        else:
            self.hub.stats["sockets_opened:open"] += 1
            await self.send(text_data=protocol.OPEN_FRAME)
            metrics.OPEN_LATENCY.observe(time.perf_counter() - started)
            await self.hub.open(self)

    async def refuse(self, frame):
        await self.send(text_data=frame)
        await self.close_with(hubs.CLOSE_POLICY)

    async def receive(self, text_data=None, bytes_data=None):
        now = self.hub.loop.time()
        if self.options.flood_limit and not await self.throttle(now):
            return
        self.last_frame = now  # any frame is a sign of life
        if self.peer_id is None:
            return  # refused or closing: nothing to act for
        if text_data is None:
            await self.bad_frame("Invalid message: binary frames are not supported")
            return
        try:
            message = protocol.parse_frame(text_data, self.options.max_frame_bytes)
            action = protocol.interpret(message, text_data, self.peer_id, self.options.id_max_length)
        except protocol.FrameTooBig as exc:
            await self.bad_frame(str(exc), hubs.CLOSE_TOO_BIG)
            return
        except protocol.ProtocolError as exc:
            await self.bad_frame(str(exc))
            return
        if action is protocol.HEARTBEAT_ACTION:
            return
        if action is protocol.UNREGISTER_ACTION:
            await self.drop(1000, "Left")
            return
        if isinstance(action, protocol.NoSuchPeer):
            await self.hub.no_such_peer(self.peer_id, action)
            return
        await self.hub.relay(self.peer_id, action)

    async def throttle(self, now):
        """Hold a socket to ``flood_limit`` frames per second; False once it is closed for flooding.

        A token bucket: bursts up to ``flood_burst`` pass untouched (a page
        opening a hundred connections at once). Past it the socket is not
        read for a moment, so TCP slows the client down; only a client that
        keeps the bucket below half full for ``flood_cutoff`` after it first
        ran dry is cut off.
        """
        o = self.options
        self.allowance = min(o.flood_burst, self.allowance + (now - self.last_frame) * o.flood_limit) - 1
        if self.allowance >= 0:
            if self.allowance >= o.flood_burst / 2:
                self.throttled_since = None  # it let the bucket fill up again: not sustained
            return True
        if self.throttled_since is None:
            self.throttled_since = now
        elif now - self.throttled_since > o.flood_cutoff / 1000:
            self.hub.stats["floods"] += 1
            await self.send(text_data=protocol.error_frame("Too many messages: slow down"))
            await self.drop(hubs.CLOSE_POLICY, "Flood")
            return False
        self.hub.stats["throttled"] += 1
        await asyncio.sleep(-self.allowance / o.flood_limit)
        return True

    async def bad_frame(self, why, close_code=hubs.CLOSE_POLICY):
        """Answer a frame the server cannot use; close a socket that keeps sending them."""
        self.bad_frames += 1
        await self.send(text_data=protocol.error_frame(why))
        if self.bad_frames >= self.options.bad_frame_limit:
            await self.drop(close_code, "Too many bad frames")

    async def close_with(self, code, reason=None):
        """Close with ``code``; where the server reserves it, with 4000 + its last digits.

        daphne (autobahn) lets applications send only 1000 and 3000-4999, so
        1008 becomes 4008 there; uvicorn sends the standard code.
        """
        try:
            await self.close(code=code, reason=reason)
        except Exception:
            if code >= 3000:
                raise
            await self.close(code=4000 + code % 1000, reason=reason)

    async def disconnect(self, code):
        # Nobody is told: the peers' WebRTC connections live on without the
        # server (PeerJS closes them on LEAVE, so a LEAVE here would end them).
        await self.hub.unregister(self)

    # The hub's side of a connection.

    async def deliver(self, frame, src, kind):
        if self.buffer is not None:
            self.buffer.append((frame, src, kind))
            return
        peer_id = self.peer_id
        try:
            await self.send(text_data=frame)
        except Exception:
            # The socket closed under us (uvicorn raises once it knows): the
            # frame is handled as for a peer that has just gone.
            await self.hub.undeliverable(self, peer_id, frame, src, kind)

    async def drop(self, code, reason):
        """Forget this socket's registration, then close it from the server side.

        In that order, so that a client reconnecting on the close finds its id free.
        """
        await self.hub.unregister(self)
        try:
            await self.close_with(code, reason)
        except Exception:
            # Closed by the client meanwhile (uvicorn raises): whoever is
            # closing sockets goes on with the next.
            logger.debug("socket %s was already closed", self.connection_id)


def _header(scope, name):
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


def _query(scope):
    """The first value of each query parameter; junk bytes become U+FFFD."""
    raw = scope.get("query_string", b"").decode("utf-8", "replace")
    return {name: values[0] for name, values in urllib.parse.parse_qs(raw).items()}
