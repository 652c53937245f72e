"""The signaling socket: turns WebSocket events into protocol and hub calls."""
import asyncio
import collections
import dataclasses
import logging
import math
import time
import urllib.parse

from channels.consumer import get_handler_name
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer

from signaling import codes, limits, metrics, protocol, readiness, registry, signals, tokens
from signaling import hub as hubs
from signaling.applications import aget_app
from signaling.auth import FOREIGN_ORIGIN, LOGIN_REQUIRED, origin_may_use_session, session_user
from signaling.conf import options
from signaling.db import UNREACHABLE, DatabaseUnavailable
from signaling.http import client_address, header
from signaling.limits import limiter
from signaling.servers import IMMEDIATE
from signaling.services import running_hub

logger = logging.getLogger(__name__)

MSG_TRY_AGAIN = "The server cannot register peers right now (its database is unavailable); try again in a moment"
MSG_TOO_MANY_SOCKETS = "Too many connections from your address"
MSG_RATE_LIMITED = "Your address opens too many sockets; try again in {} s"
MSG_INTERNAL = "Internal error: the server could not handle this message"
CLOSE_WAIT = 5.0  # seconds a close may take before the socket is given up on


class PeerConsumer(AsyncWebsocketConsumer):
    # Every attribute in a slot: the instance's __dict__ (which Channels'
    # classes give it) is then never made, 1 KB of every idle peer
    # (bench/perpeer.py). An attribute not listed here still works, in it.
    __slots__ = (
        "scope", "channel_layer", "base_send", "send_now", "accept_now", "hub", "peer_id", "closing", "writer", "accepted",
        "reading", "options", "connection_id", "address", "key", "peer", "buffer", "held", "drain_again",
        "held_front", "outbox", "outbox_bytes", "wake", "writing_since", "bad_frames", "last_frame", "allowance",
        "throttled_since", "elsewhere",
    )
    groups = ()  # none (Channels' __init__ would store a list of its own in the __dict__)

    async def __call__(self, scope, receive, send):
        # The worker's hub listens on the channel layer; a socket needs no
        # channel of its own (that would cost a subscription per socket), so
        # it has one source of events. Read it in a plain loop: Channels' loop
        # multiplexes sources by making a task per event, which cost more
        # than half of the relay's CPU when profiled.
        self.scope = scope
        self.channel_layer = None
        self.base_send = send
        # The server's fast paths, where it offers them (signaling.servers.uvicorn).
        immediate = (scope.get("extensions") or {}).get(IMMEDIATE)
        self.send_now = immediate["send_text"] if immediate else None
        self.accept_now = immediate["accept_text"] if immediate else None
        self.hub = None
        self.peer_id = None
        self.closing = False
        self.writer = None
        self.accepted = False
        # True while this loop waits for the next event and nothing else of
        # the socket's is under way: only then may a frame be handled at
        # once, in the server's read callback (receive_now), and keep its order.
        self.reading = False
        if immediate:
            immediate["receive_text"](self.receive_now)
        del scope, immediate  # self.scope holds it while the socket opens (see connect)
        try:
            while True:
                self.reading = True
                message = await receive()
                self.reading = False
                await self.dispatch(message)
        except StopConsumer:
            pass
        except OSError:
            # The client went away while it was being answered (uvicorn's
            # send raises ClientDisconnected): nothing failed but the socket.
            logger.debug("socket %s: client gone", getattr(self, "connection_id", "?"))
        except Exception:
            # Whatever went wrong, the socket's end still runs its cleanup,
            # and the client hears of it (1011: the server failed).
            logger.exception("socket %s failed", getattr(self, "connection_id", "?"))
            if self.hub is not None:
                self.hub.stats["internal_errors"] += 1
            if not self.closing:
                await self.close_with(codes.SERVER_ERROR)
        finally:
            if self.hub is not None:
                await self.hub.unregister(self)
            if self.writer is not None:
                self.writer.cancel()
            # The server's protocol and this consumer hold each other's
            # methods: let go of its, so that a closed socket is freed by
            # reference counting, not left to a full collection
            # (signaling.garbage).
            self.base_send = self.send_now = self.accept_now = None

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
        self.hub = await running_hub()
        # A reconnect storm (a worker died, its peers all come here) opens
        # sockets a few at a time, so that relaying between the peers already
        # here keeps its pace; the others wait for their OPEN.
        async with self.hub.opening:
            await self.open_socket(started)
        # The handshake's scope (its headers, a few KB) is read only while the
        # socket opens: an idle peer should not keep it.
        self.scope = None

    async def open_socket(self, started):
        self.options = options()
        self.connection_id = self.hub.new_connection_id()
        self.address = client_address(self.scope, self.options)
        self.key = None
        self.peer = None  # (key, id) once registered, kept after the socket closes
        self.buffer = []  # frames for this peer held back until it is open
        self.held = None  # frames held back while its queue is drained (hub.offline.drain), else None
        self.drain_again = False  # a drain was asked for while one was under way
        self.held_front = 0  # where in held the next frames a drain takes go (behind older ones)
        # (frame, src, kind) accepted for the client, not yet written: a deque
        # while there are any, else () (an empty deque is 600 bytes of every idle peer).
        self.outbox = ()
        self.outbox_bytes = 0
        self.wake = None  # the writer waits on it for frames
        self.writing_since = None  # loop time the writer started on a frame it has not finished
        self.bad_frames = 0
        self.last_frame = self.hub.loop.time()
        self.allowance = float(self.options.flood_burst)
        self.throttled_since = None
        # A socket is accepted once its claim is made, with its OPEN in the
        # same write (accept_with). One that nginx may send to another worker
        # needs that: if this worker cannot register its peer, nginx gets a
        # 503 and asks the next worker (signaling.readiness).
        self.elsewhere = readiness.may_go_elsewhere(self.scope, self.options)
        stats = self.hub.stats
        query = _query(self.scope)

        # Counted first, before anything costs a query: a client that opens
        # sockets in a loop is answered from memory or one Redis command.
        verdict = await limiter.ahit(limits.OPEN, self.address)
        if verdict.over:
            stats["sockets_opened:limited"] += 1
            await self.refuse(protocol.error_frame(MSG_RATE_LIMITED.format(verdict.retry_after)))
            return
        try:
            app = await aget_app(query["key"]) if query.get("key") else None
        except (DatabaseUnavailable, *UNREACHABLE):
            # An app never read before, and the database away: nobody can say.
            await self.try_again()
            return
        if not (app or self.options).origin_allowed(header(self.scope, b"origin")):
            stats["sockets_opened:refused"] += 1
            await self.close()  # before accept: the client gets HTTP 403
            return
        if not self.hub.attach(self):
            stats["sockets_opened:refused"] += 1
            await self.refuse(protocol.error_frame(MSG_TOO_MANY_SOCKETS))
            return
        try:
            request = protocol.check_connect(query, self.options.id_max_length, key_known=app is not None)
        except protocol.ProtocolError as exc:
            stats["sockets_opened:error"] += 1
            await self.refuse(protocol.error_frame(str(exc)))
            return
        # The worker's copy of the bans: no query (see signaling.bans).
        ban = self.hub.bans.find(request.key, request.peer_id, self.address)
        if ban is not None:
            await self.turn_back(ban)
            return
        try:
            request = await self.admitted(app, request)
        except protocol.ProtocolError as exc:
            stats["sockets_opened:refused"] += 1
            await self.refuse(protocol.error_frame(str(exc)))
            return
        except (DatabaseUnavailable, *UNREACHABLE):
            # A site session is read from the database: while it is away,
            # nobody can say whose socket this is.
            await self.try_again()
            return
        self.key, self.peer_id = request.key, request.peer_id
        outcome = await self.hub.register(self, request, app)
        if outcome == hubs.STOPPING:
            self.peer_id = None
            if self.elsewhere:
                await self.turn_away(readiness.DRAINING)
                return
            # No ERROR frame: the client would give up. A plain close makes it
            # reconnect, through the load balancer, to a worker that stays.
            stats["sockets_opened:retry"] += 1
            await self.accept()
            await self.close_with(codes.GOING_AWAY)
        elif outcome == hubs.RETRY:
            self.peer_id = None
            await self.try_again()
        elif outcome == registry.TAKEN:
            self.peer_id = None
            stats["sockets_opened:taken"] += 1
            await self.refuse(protocol.ID_TAKEN_FRAME)
        elif outcome == registry.FULL:
            self.peer_id = None
            stats["sockets_opened:full"] += 1
            await self.refuse(protocol.error_frame(protocol.MSG_LIMIT))
        else:
            self.peer = (self.key, self.peer_id)
            await self.hub.directory.announced()
            # A ban read while the socket registered: bans.refresh leaves a
            # socket not accepted yet to this check (closed now, its client
            # would get HTTP 403 and no reason).
            ban = self.hub.bans.find(self.key, self.peer_id, self.address)
            if ban is not None:
                await self.turn_back(ban)
                return
            stats["sockets_opened:open"] += 1
            await self.accept_with(protocol.OPEN_FRAME)
            metrics.OPEN_LATENCY.observe(time.perf_counter() - started)
            self.hub.open(self)

    async def admitted(self, app, request):
        """The request as the registry should know it, if the app admits it; else ProtocolError.

        An app that requires signed tokens or a site login vouches for who
        owns an id, so the registry recognises the owner by that, not by
        PeerJS's random token: a reconnect with a fresh valid token (or from
        another tab of the same user) takes over its own id.
        """
        if app.requires_token:
            problem = tokens.verify(app, request.peer_id, request.token)
            if problem:
                raise protocol.ProtocolError(problem)
            return dataclasses.replace(request, token=f"signed:{request.peer_id}")
        if app.requires_session:
            if not origin_may_use_session(self.scope, app):
                raise protocol.ProtocolError(FOREIGN_ORIGIN)
            user = await session_user(self.scope)
            if user is None:
                raise protocol.ProtocolError(LOGIN_REQUIRED)
            return dataclasses.replace(request, token=f"user:{user.pk}")
        return request

    async def accept(self, subprotocol=None, headers=None):
        # Once, on whichever path of open_socket needs it first.
        if not self.accepted:
            self.accepted = True
            await super().accept(subprotocol, headers)

    async def accept_with(self, frame):
        """Accept, then send ``frame``: the handshake's response and the frame in one write where the server offers it.

        Two writes were two system calls, and two wake-ups of the client,
        for every socket that opens.
        """
        if not self.accepted and self.accept_now is not None and self.accept_now(frame):
            self.accepted = True
            self.hub.stats["fast_path:opened"] += 1
            return
        await self.accept()
        await self.send(text_data=frame)

    async def try_again(self):
        """The database is away: another worker may take the socket, else the client tries again later.

        Not accepted yet, a socket nginx may send elsewhere is turned away
        with 503; any other hears ERROR "try again" and is closed with 1013
        (Try Again Later).
        """
        if not self.accepted and self.elsewhere:
            await self.turn_away(readiness.DATABASE)
            return
        self.hub.stats["sockets_opened:retry"] += 1
        await self.accept()
        await self.send(text_data=protocol.error_frame(MSG_TRY_AGAIN))
        await self.close_with(codes.TRY_AGAIN)

    async def turn_away(self, why):
        """Answer the handshake with 503, for nginx to ask another worker; the socket never opens."""
        self.closing = True
        await readiness.turn_away(self.base_send, why, self.hub)

    async def turn_back(self, ban):
        """A banned client's socket: accepted, to hear why in an ERROR frame, then closed with 4105."""
        self.hub.stats["sockets_opened:banned"] += 1
        await self.accept()
        await self.expel(ban.message(), codes.BANNED, "Banned")

    async def refuse(self, frame):
        await self.accept()
        await self.send(text_data=frame)
        await self.close_with(codes.POLICY)

    async def receive(self, text_data=None, bytes_data=None):
        if self.closing:
            return  # frames after our close are the client's echo of the race
        now = self.hub.loop.time()
        if self.options.flood_limit and not await self.throttle(now):
            return
        self.last_frame = now  # any frame is a sign of life
        if self.peer_id is None:
            return  # refused: nothing to act for
        if text_data is None:
            await self.bad_frame("Invalid message: binary frames are not supported")
            return
        try:
            message = protocol.parse_frame(text_data, self.options.max_frame_bytes)
            action = protocol.interpret(message, text_data, self.peer_id, self.options.id_max_length)
        except protocol.FrameTooBig as exc:
            await self.too_big(text_data, exc)
            return
        except protocol.ProtocolError as exc:
            await self.bad_frame(str(exc))
            return
        if action is protocol.UNREGISTER_ACTION:
            if signals.peer_message.receivers:
                self.hub.received(self, message)
            await self.drop(codes.NORMAL, "Left")
            return
        self.act(message, action)

    def receive_now(self, text):
        """Handle a text frame in the server's read callback; False if it must take its turn (:meth:`receive`).

        A frame handed to :meth:`receive` waits a turn of the event loop for
        this socket's task, and while hundreds of sockets open at once a turn
        takes tens of milliseconds. Frames that need no waiting (the relayed
        ones, heartbeats) are handled here at once; the rest (bad frames,
        a leave, a socket being throttled or not yet open) take the usual
        way, which answers them, untouched by this attempt.
        """
        if not self.reading or self.closing or self.peer_id is None:
            return False  # not open yet, or something of the socket's is under way: keep the order
        try:
            message = protocol.parse_frame(text, self.options.max_frame_bytes)
            action = protocol.interpret(message, text, self.peer_id, self.options.id_max_length)
        except protocol.ProtocolError:
            return False
        if action is protocol.UNREGISTER_ACTION:
            return False
        now = self.hub.loop.time()
        if self.options.flood_limit and not self.admit(now):
            return False
        self.last_frame = now
        self.hub.stats["fast_path:received"] += 1
        self.act(message, action)
        return True

    def act(self, message, action):
        """Relay a frame the client may send (a heartbeat only counts as a sign of life)."""
        if signals.peer_message.receivers:  # the reference's 'message' event, for whoever listens
            self.hub.received(self, message)
        if action is protocol.HEARTBEAT_ACTION:
            return
        try:
            if isinstance(action, protocol.NoSuchPeer):
                self.hub.no_such_peer(self.key, self.peer_id, action)
            else:
                self.hub.relay(self.key, self.peer_id, action)
        except Exception:
            # A fault of the server's, not the client's: the frame is answered,
            # counted and logged, and the socket carries on.
            logger.exception("socket %s: a %s frame failed", self.connection_id, action.__class__.__name__)
            self.hub.stats["internal_errors"] += 1
            self.hub.spawn(self.send(text_data=protocol.error_frame(MSG_INTERNAL)))

    def admit(self, now):
        """Take a frame's token from the flood bucket if it has one (see :meth:`throttle`)."""
        allowance = self._allowance_after(now)
        if allowance < 0:
            return False
        self.allowance = allowance
        if allowance >= self.options.flood_burst / 2:
            self.throttled_since = None  # it let the bucket fill up again: not sustained
        return True

    def _allowance_after(self, now):
        """The bucket's tokens once this frame's is taken (negative: it had none)."""
        o = self.options
        return min(o.flood_burst, self.allowance + (now - self.last_frame) * o.flood_limit) - 1

    async def throttle(self, now):
        """Hold a socket to ``flood_limit`` frames per second; False once it is closed for flooding.

        A token bucket: bursts up to ``flood_burst`` pass untouched (a page
        opening a hundred connections at once). Past it the socket is not
        read for a moment, so TCP slows the client down; only a client that
        keeps the bucket below half full for ``flood_cutoff`` after it first
        ran dry is cut off.
        """
        if self.admit(now):
            return True
        o = self.options
        self.allowance = self._allowance_after(now)
        if self.throttled_since is None:
            self.throttled_since = now
        elif now - self.throttled_since > o.flood_cutoff / 1000:
            self.hub.stats["floods"] += 1
            await self.send(text_data=protocol.error_frame("Too many messages: slow down"))
            await self.drop(codes.POLICY, "Flood")
            return False
        self.hub.stats["throttled"] += 1
        await asyncio.sleep(-self.allowance / o.flood_limit)
        return True

    async def too_big(self, text, exc):
        """A frame over the relay cap (and under the server's hard limit, or it would not be here).

        One the PeerJS client sends to a peer -- an OFFER with an app's large
        metadata -- is answered with EXPIRE for that message: PeerJS reports
        peer-unavailable for that connection, and the Peer and its other
        connections live on (an ERROR would end the whole Peer). Anything
        else is a bad frame.
        """
        self.hub.stats["frames_too_big"] += 1
        dst = protocol.oversize_destination(text, self.options.id_max_length)
        if dst is None:
            await self.bad_frame(str(exc), codes.TOO_BIG)
        else:
            self.hub.tell_expire(self.key, dst, self.peer_id)

    async def bad_frame(self, why, close_code=codes.POLICY):
        """Answer a frame the server cannot use; close a socket that keeps sending them."""
        self.bad_frames += 1
        self.hub.stats["bad_frames"] += 1
        await self.send(text_data=protocol.error_frame(why))
        if self.bad_frames >= self.options.bad_frame_limit:
            await self.drop(close_code, "Too many bad frames")

    async def close_with(self, code, reason=None):
        """Close with ``code``; where the server reserves it, with 4000 + its last digits.

        daphne (autobahn) lets applications send only 1000 and 3000-4999, so
        1008 becomes 4008 there; uvicorn sends the standard code. A client
        that does not read may never take the close frame: give up after
        CLOSE_WAIT (the ASGI server drops the connection when it can).
        """
        self.closing = True
        try:
            await asyncio.wait_for(self._close(code, reason), CLOSE_WAIT)
        except Exception:
            logger.debug("socket %s did not take its close", self.connection_id)

    async def _close(self, code, reason):
        try:
            await self.close(code=code, reason=reason)
        except Exception:
            if code >= 3000:
                raise
            await self.close(code=4000 + code % 1000, reason=reason)

    async def websocket_disconnect(self, message):
        # Channels' version ends with a thread hop to close stale database
        # connections (a tenth of the event loop's time in a reconnect storm,
        # profiled); the registry calls close theirs themselves (signaling.db).
        await self.disconnect(message["code"])
        raise StopConsumer()

    async def disconnect(self, code):
        # Nobody is told: the peers' WebRTC connections live on without the
        # server (PeerJS closes them on LEAVE, so a LEAVE here would end them).
        self.closing = True
        await self.hub.unregister(self)
        self._hand_back()

    # The hub's side of a connection.

    def deliver(self, frame, src, kind):
        """Accept a frame for the client; the socket's writer sends it. Never waits."""
        # Behind a drain first: its frames, when it ends, join the buffer of a
        # socket still opening ahead of these.
        if self.held is not None:
            self.held.append((frame, src, kind))
            return
        if self.closing:  # also one that never went live (banned as it opened): its buffer was handed back
            self.hub.undeliverable(self, [(frame, src, kind)])
            return
        if self.buffer is not None:
            self.buffer.append((frame, src, kind))
            return
        # Nothing ahead of it and the socket takes data: written now, not by
        # the writer a turn of the event loop later.
        if not self.outbox and self.send_now is not None and self.send_now(frame):
            self.hub.stats["fast_path:written"] += 1
            return
        if not self.outbox:
            self.outbox = collections.deque()
        self.outbox.append((frame, src, kind))
        self.outbox_bytes += len(frame)
        if self.outbox_bytes > self.options.outbox_max_bytes:
            # Closing from now on, not once the drop below has started: the
            # frames that follow in this iteration (a batch from another
            # worker) go back to the hub above, and the socket is counted
            # and dropped once, not once per frame.
            self.closing = True
            self.hub.stats["slow_consumers"] += 1
            self.hub.spawn(self.drop(codes.TOO_SLOW, "Too slow: the client does not read"))
        elif self.wake is not None:
            if not self.wake.done():
                self.wake.set_result(None)
        elif self.writer is None:
            self.writer = self.hub.loop.create_task(self._write())

    async def _write(self):
        """Send what the hub accepted for the client, in order, one frame at a time.

        The only code that awaits this client's socket: a client that does
        not read holds up its own writer and nobody else.
        """
        loop = self.hub.loop
        while True:
            while self.outbox:
                frame = self.outbox[0][0]
                self.writing_since = loop.time()
                try:
                    await self.base_send({"type": "websocket.send", "text": frame})
                except Exception:
                    # The socket closed under us (uvicorn raises once it knows),
                    # or the server refused the frame (autobahn's size limit).
                    # Either way nothing more reaches this client: let its id go,
                    # or frames for it would go round the queue and back for ever.
                    self.writing_since = None
                    self.closing = True
                    self._hand_back()
                    self.hub.spawn(self.drop(codes.SERVER_ERROR, "Could not write to the socket"))
                    return
                self.writing_since = None
                self.outbox.popleft()
                self.outbox_bytes -= len(frame)
            self.outbox = ()
            self.wake = loop.create_future()
            await self.wake
            self.wake = None

    def stalled_since(self):
        """Loop time since which the writer has been stuck on one frame (inf if it is not)."""
        return self.writing_since if self.writing_since is not None else math.inf

    def _hand_back(self):
        """Frames the client will never read go back to the hub, as for a peer that has just gone."""
        if self.peer is None:
            return
        # What was held while it opened (banned then: it never went live) is older than its outbox.
        frames = [*(self.buffer or ()), *self.outbox]
        if frames:
            if self.buffer:
                self.buffer = []  # not None: that would say it went live (hub.unregister)
            self.outbox = ()
            self.outbox_bytes = 0
            self.hub.undeliverable(self, frames)

    async def expel(self, message, code, reason):
        """An ERROR frame saying why (the PeerJS client reports it as a server-error), then :meth:`drop`."""
        if self.closing:
            return
        try:
            await asyncio.wait_for(self.send(text_data=protocol.error_frame(message)), CLOSE_WAIT)
        except Exception:
            logger.debug("socket %s did not take its ERROR", self.connection_id)
        await self.drop(code, reason)

    async def drop(self, code, reason):
        """Forget this socket's registration, then close it from the server side.

        In that order, so that a client reconnecting on the close finds its id
        free. What it had not read yet goes back to the hub.
        """
        self.closing = True
        if self.writer is not None and self.writing_since is not None:
            self.writer.cancel()  # stuck on a client that does not read
        self._hand_back()
        await self.hub.unregister(self)
        await self.close_with(code, reason)


def _query(scope):
    """The first value of each query parameter; junk bytes become U+FFFD."""
    raw = scope.get("query_string", b"").decode("utf-8", "replace")
    return {name: values[0] for name, values in urllib.parse.parse_qs(raw).items()}
