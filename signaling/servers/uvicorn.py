"""uvicorn's HTTP/1.1 (h11) and WebSocket (websockets-sansio) protocols, as the production worker runs them::

    uvicorn p2psite.asgi:application --http signaling.servers.uvicorn:HTTPProtocol \\
        --ws signaling.servers.uvicorn:WebSocketProtocol --ws-per-message-deflate false --lifespan on

uvicorn has no setting for what follows; each class adds it by overriding
its parent's methods, and relies on uvicorn's, h11's and websockets'
internals at the versions in :data:`signaling.servers.TESTED` (checked on
import: a worker with other versions does not start). Their options are the
app's (``PEERJS`` settings, signaling/conf.py).

:class:`HTTPProtocol`, a connection until it becomes a WebSocket:

- A request must arrive whole -- line, headers and body; a WebSocket
  handshake's line and headers -- within ``REQUEST_TIMEOUT`` of the connection
  or of the previous response; else it is answered 408 and closed (a
  connection that sent nothing is just closed). uvicorn gives a request all
  the time it likes, so a client sending a body a byte at a time held a file
  descriptor for ever, and a thousand of them took a worker down.
- One client address (an IPv6 one: its network, signaling.http.client_group)
  holds at most ``MAX_HTTP_CONNECTIONS_PER_ADDRESS`` such connections; past that a new one is answered 429 and closed. Trusted
  proxies are exempt (behind nginx every connection is nginx's); a WebSocket
  leaves the count when its handshake is in (the app's socket cap counts it).
- At most ``HANDSHAKE_CONCURRENCY`` WebSocket handshakes are worked on at
  once: in a reconnect storm uvicorn worked on hundreds at a time, and every
  turn of the event loop ran a step of each, so the frames of the peers
  already connected waited behind them (turns of 100-300 ms in the
  benchmark's storm). The others wait in order, their request read and their
  socket no longer read. Plain HTTP requests never wait.

:class:`WebSocketProtocol`:

- A message over ``MAX_MESSAGE_BYTES`` is refused at its frame header (1009),
  before it is buffered: the app's limit, whatever ``--ws-max-size`` says.
- A handshake whose request line or a header line is longer than websockets'
  limit (8 KiB: the URL of an id of 10 000 characters) was abandoned without
  a response; it is answered 414 (a long header line: 431, anything else
  websockets cannot parse: 400) and closed.
- A text frame that is not UTF-8 is closed with 1007 as uvicorn does, with a
  line in the log at most once a minute instead of a traceback each time.
- It offers the application three fast paths in ``scope["extensions"]``
  (:data:`signaling.servers.IMMEDIATE`). Two each save a hand-over between
  tasks, a turn of the event loop (tens of milliseconds in a reconnect storm):
  ``send_text(text)`` writes a frame at once, and ``receive_text(take)`` has
  each complete text message offered to ``take(text)`` in the read callback,
  before it would join the queue the application's task reads. The third,
  ``accept_text(text)``, writes the handshake's response and a first frame
  (PeerJS's ``OPEN``) together: one system call where there were two.
- A client's whole, unfragmented text frames are read here rather than by
  websockets' parser (:meth:`WebSocketProtocol.take_frames`), less than
  half its cost per frame; anything else goes to websockets as before.
- Within a ``signaling.servers.held_writes`` block a socket's frames go out
  in one write when the block ends. Each read of a socket is such a block
  (what its frames relay to a peer on this worker), and so is the hub's
  handling of a batch from another worker.

A worker that runs out of file descriptors cannot accept connections, and
asyncio logged that with a traceback for every attempt, thousands a second:
:class:`AcceptFailures` makes it a line a minute.
"""
import asyncio
import collections
import functools
import logging
import re

from signaling.servers import require_tested

require_tested("uvicorn", "h11", "websockets")

import h11  # noqa: E402
from uvicorn.protocols.http.h11_impl import H11Protocol  # noqa: E402
from uvicorn.protocols.utils import get_client_addr, get_path_with_query_string  # noqa: E402
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol  # noqa: E402
from websockets import http11  # noqa: E402
from websockets.datastructures import Headers  # noqa: E402
from websockets.exceptions import SecurityError  # noqa: E402
from websockets.frames import apply_mask  # noqa: E402  (websockets' own: its C speedup where built)
from websockets.protocol import State  # noqa: E402
from websockets.streams import StreamReader  # noqa: E402

from signaling.conf import options  # noqa: E402
from signaling.http import client_group  # noqa: E402
from signaling.logs import Occasional  # noqa: E402
from signaling.servers import IMMEDIATE, held_writes  # noqa: E402

logger = logging.getLogger(__name__)
# Bytes of frames a socket holds back within a held_writes block before it
# writes them anyway: past the transport's high-water mark (64 KiB), so that a
# client that does not read is noticed as before (Writable, the app's outbox).
HOLD_AT_MOST = 64 * 1024
# The code of the generator websockets' parser waits in between frames (and
# only there while a connection is open): WebSocketProtocol.take_frames.
_AWAITING_A_FRAME = StreamReader.at_eof.__code__
_refused = Occasional(logger)
_not_utf8 = Occasional(logger)
_accept_failed = Occasional(logger)


def _response(status, text):
    body = text.encode() + b"\n"
    return (
        b"HTTP/1.1 %s\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
        % (status.encode(), len(body), body)
    )


TOO_MANY_CONNECTIONS = _response("429 Too Many Requests", "Too many connections from your address")
TOO_SLOW = _response("408 Request Timeout", "The request took too long to arrive")
REFUSED_LINGER = 1.0  # seconds a connection answered 429 has to send its request before it is closed

# their_state of a request still arriving: its line and headers (IDLE, with
# some of them in), or its body.
_ARRIVING = (h11.IDLE, h11.SEND_BODY)

# HTTP connections per client address, across the process (see HTTPProtocol).
_connections = collections.Counter()


class HTTPProtocol(H11Protocol):
    """uvicorn's h11 protocol with a whole-request deadline, a cap per address and the handshake gate."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.deadline = None  # the timer that ends a request that has not arrived whole
        self.counted = None  # the address this connection is counted under, while it is
        self.upgraded = False  # its handshake's request is in: a WebSocket's from now on
        self.refused = False  # over the cap per address: answered 429, closing

    def connection_made(self, transport):
        super().connection_made(transport)
        o = options()
        address = self.client[0] if self.client else None
        if o.max_http_connections_per_address and address is not None and not o.proxy_trusted(address):
            address = client_group(address, o)  # an IPv6 client is its /64, as for every other limit
            if _connections[address] >= o.max_http_connections_per_address:
                _refused.warning(
                    "%s holds %d HTTP connections, the most one address may: answered another with 429",
                    address, _connections[address],
                )
                # Closed once its request is read: closed with the request
                # unread, the connection would be reset, and the client might
                # lose the answer. One that sends nothing gets a moment.
                self.refused = True
                transport.write(TOO_MANY_CONNECTIONS)
                self.deadline = self.loop.call_later(REFUSED_LINGER, transport.close)
                return
            _connections[address] += 1
            self.counted = address
        self._arm()

    def data_received(self, data):
        if self.refused:
            self.transport.close()
            return
        if self.conn.their_state is h11.IDLE and not self.conn.trailing_data[0] and self.cycle is None:
            # A connection's first bytes: a WebSocket handshake that came whole
            # goes to the WebSocket protocol as it is (below).
            if _is_websocket_handshake(data) and issubclass(self.ws_protocol_class, WebSocketProtocol):
                self._upgrade_raw(data)
                return
        super().data_received(data)
        state = self.conn.their_state
        if self.upgraded or self.transport.is_closing() or state not in _ARRIVING:
            self._disarm()  # the request is in (or the connection is done)
        elif state is h11.SEND_BODY or self.conn.trailing_data[0]:
            self._arm()  # a request begun and not finished
        else:
            self._disarm()  # quiet between requests: uvicorn's keep-alive timeout covers it

    def connection_lost(self, exc):
        self._disarm()
        self._uncount()
        super().connection_lost(exc)

    def handle_websocket_upgrade(self, event):
        # The handshake's request is in: the connection is a WebSocket's now.
        self.upgraded = True
        self._disarm()
        self._uncount()
        upgrade = functools.partial(super().handle_websocket_upgrade, event)
        if issubclass(self.ws_protocol_class, WebSocketProtocol):
            handshake_gate().enter(self.transport, upgrade)
        else:  # another implementation (the benchmark compares them) would never leave the gate
            upgrade()

    def _upgrade_raw(self, data):
        """Hand a whole handshake to the WebSocket protocol without parsing it here first.

        uvicorn parses every request with h11, then writes a WebSocket
        handshake's back out for websockets to parse again: two parsers in
        pure Python, a tenth of a socket open's CPU (docs/performance.md).
        The bytes go through once instead, with whatever followed them.
        """
        self.upgraded = True
        self._disarm()
        self._uncount()
        self._unset_keepalive_if_required()
        self.connections.discard(self)
        handshake_gate().enter(self.transport, functools.partial(self._start_websocket, data))

    def _start_websocket(self, data):
        protocol = self.ws_protocol_class(config=self.config, server_state=self.server_state, app_state=self.app_state)
        protocol.connection_made(self.transport)
        protocol.data_received(data)
        self.transport.set_protocol(protocol)

    def _arm(self):
        if self.deadline is None:
            self.deadline = self.loop.call_later(options().request_timeout / 1000, self._too_slow)

    def _disarm(self):
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None

    def _too_slow(self):
        self.deadline = None
        if self.transport.is_closing():
            return
        began = self.conn.their_state is h11.SEND_BODY or self.conn.trailing_data[0]
        if began and (self.cycle is None or not self.cycle.response_started):
            self.transport.write(TOO_SLOW)
        self.transport.close()

    def _uncount(self):
        if self.counted is not None:
            _connections[self.counted] -= 1
            if not _connections[self.counted]:
                del _connections[self.counted]
            self.counted = None


_HEAD_END = b"\r\n\r\n"
_UPGRADE_WEBSOCKET = re.compile(rb"\r\nupgrade:[ \t]*websocket[ \t]*\r\n")
_CONNECTION_UPGRADE = re.compile(rb"\r\nconnection:[^\r\n]*\bupgrade\b")


def _is_websocket_handshake(data):
    """Whether ``data`` begins with a whole request that uvicorn would upgrade to a WebSocket.

    That is a GET whose headers say ``Upgrade: websocket`` and have
    ``upgrade`` among the ``Connection`` tokens (uvicorn's test). A request
    written any other way, or not yet whole, answers False and takes h11's
    path as before; websockets checks the rest of the handshake either way.
    """
    if not data.startswith(b"GET "):
        return False
    end = data.find(_HEAD_END)
    if end < 0:
        return False
    head = data[: end + 2].lower()
    return _UPGRADE_WEBSOCKET.search(head) is not None and _CONNECTION_UPGRADE.search(head) is not None


class HandshakeGate:
    """At most ``limit`` WebSocket handshakes at a time; the rest wait their turn in order."""

    def __init__(self, limit):
        self.limit = limit
        self.busy = set()  # transports whose handshake is under way
        self.waiting = collections.deque()  # (transport, start the handshake)

    def enter(self, transport, start):
        if len(self.busy) < self.limit:
            self.busy.add(transport)
            start()
        else:
            transport.pause_reading()
            self.waiting.append((transport, start))

    def leave(self, transport):
        if transport not in self.busy:
            return
        self.busy.discard(transport)
        while self.waiting and len(self.busy) < self.limit:
            transport, start = self.waiting.popleft()
            if transport.is_closing():
                continue  # closed while it waited (the server draining)
            self.busy.add(transport)
            transport.resume_reading()
            try:
                start()
            except Exception:  # that handshake's fault, not the one whose end let it in
                logger.exception("a WebSocket handshake failed to start")
                self.busy.discard(transport)
                transport.close()


@functools.cache
def handshake_gate():
    """The worker's one gate (created once the app's options can be read)."""
    return HandshakeGate(options().handshake_concurrency)


class Waiters:
    """The futures of the tasks waiting on an object, in a list that exists only while any wait.

    For :class:`Inbox` and :class:`Writable`, which take the place of
    asyncio's Queue and Event on every socket: those hold deques of waiters
    (600-700 bytes each) all the socket's life, though an idle socket has none.
    """

    __slots__ = ("waiters",)

    def __init__(self):
        self.waiters = None

    def waiter(self):
        """A future for the caller to await, done at the next :meth:`wake`; :meth:`forget` it once awaited."""
        waiter = asyncio.get_running_loop().create_future()
        if self.waiters is None:
            self.waiters = []
        self.waiters.append(waiter)
        return waiter

    def forget(self, waiter):
        if self.waiters is not None and waiter in self.waiters:
            self.waiters.remove(waiter)  # cancelled before it was woken

    def wake(self, result):
        waiters, self.waiters = self.waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(result)


class Inbox(Waiters):
    """The ASGI events waiting for the application: uvicorn's ``asyncio.Queue`` (2.2 KB, three deques), lean.

    It holds a list only while events wait. It offers what uvicorn calls,
    ``put_nowait`` and ``empty``; its readers (:meth:`WebSocketProtocol.receive`,
    one as a rule) await a :meth:`waiter` while it is empty. Every put wakes
    them all: one takes the message, the others wait again.
    """

    __slots__ = ("items",)

    def __init__(self):
        super().__init__()
        self.items = None

    def empty(self):
        return not self.items

    def put_nowait(self, message):
        if self.items is None:
            self.items = [message]
        else:
            self.items.append(message)
        self.wake(None)

    def get_nowait(self):
        message = self.items.pop(0)
        if not self.items:
            self.items = None
        return message


class Writable(Waiters):
    """Whether the transport takes data: uvicorn's ``asyncio.Event``, lean.

    Waiting is rare (a client that does not read). It offers what uvicorn
    calls: ``set``, ``clear``, ``is_set`` and ``await wait()``.
    """

    __slots__ = ("flag",)

    def __init__(self):
        super().__init__()
        self.flag = True

    def is_set(self):
        return self.flag

    def set(self):
        self.flag = True
        self.wake(True)

    def clear(self):
        self.flag = False

    async def wait(self):
        if self.flag:
            return True
        waiter = self.waiter()
        try:
            return await waiter
        finally:
            self.forget(waiter)


class WebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's websockets-sansio protocol with the app's size limit, answers for every handshake, and fast paths."""

    # uvicorn's attributes (0.54.0) and ours in slots: the instance's
    # __dict__ is then never made, 1.5 KB of every idle peer
    # (bench/perpeer.py). An attribute not listed here still works, in it.
    __slots__ = (
        "config", "app", "loop", "logger", "root_path", "asgi_version", "app_state", "connections", "tasks",
        "default_headers", "transport", "server", "client", "scheme", "queue", "handshake_initiated",
        "handshake_complete", "close_sent", "disconnected", "close_timer", "close_timeout", "initial_response",
        "conn", "read_paused", "writable", "ping_interval", "ping_timeout", "ping_timer", "pong_timer",
        "pending_ping_payload", "ping_sent_at", "last_ping_rtt", "frames", "curr_msg_data_type", "request",
        "response", "scope", "take_text", "held_bytes",
    )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.conn.max_size = options().max_message_bytes
        self.take_text = None  # the application's receive_text callback, once it gives one
        self.held_bytes = 0  # of frames in websockets' output, to be written when held_writes' block ends
        self.queue = Inbox()
        self.writable = Writable()

    async def receive(self):
        # uvicorn's, on the Inbox: one coroutine (asyncio.Queue.get's) fewer while the socket is idle.
        inbox = self.queue
        while not inbox.items:
            waiter = inbox.waiter()
            try:
                await waiter
            finally:
                inbox.forget(waiter)
        message = inbox.get_nowait()
        if self.read_paused and not inbox.items:
            self.read_paused = False
            self.transport.resume_reading()
        return message

    def data_received(self, data):
        with held_writes:  # what several frames of one read send a socket here goes out together
            taken = self.take_frames(data)
            if taken < len(data):
                super().data_received(data[taken:] if taken else data)
        if self.handshake_initiated:  # the usual case, every frame: one attribute read
            return
        exc = self.conn.handshake_exc
        if exc is None or self.transport.is_closing():
            return
        # websockets refused the handshake's request and uvicorn said nothing.
        cause = exc.__cause__
        if isinstance(cause, SecurityError) and len(data.split(b"\r\n", 1)[0]) > http11.MAX_LINE_LENGTH:
            status, text = 414, "Request line too long"
        elif isinstance(cause, SecurityError):
            status, text = 431, "Request headers too large"
        else:
            status, text = 400, "Invalid WebSocket handshake"
        self.transport.write(self.conn.reject(status, text).serialize())
        self.transport.close()

    def handle_connect(self, event):
        super().handle_connect(event)
        if self.response.status_code == 101:  # else refused: no scope was made
            # ASGI names headers in lower case; uvicorn passes websockets'
            # names as the client wrote them, lower case only when h11 had
            # parsed the handshake first (HTTPProtocol._upgrade_raw skips it).
            # The application's task has not started: it sees these.
            self.scope["headers"] = [(name.lower(), value) for name, value in self.scope["headers"]]

    def run_asgi(self):
        # uvicorn's coroutine itself, not one awaiting it: a frame fewer for the socket's life.
        self.scope["extensions"][IMMEDIATE] = {
            "send_text": self.send_text, "receive_text": self.receive_text, "accept_text": self.accept_text,
        }
        return super().run_asgi()

    # The handshake ends accepted (uvicorn starts the socket's keepalive then,
    # once per socket) or with the connection (refused, gone): its place in
    # the gate goes to the next one.
    def start_keepalive(self):
        handshake_gate().leave(self.transport)
        super().start_keepalive()
        # uvicorn reads the handshake's request, response and scope no more
        # once it is accepted: an idle socket should not keep them (KBs each).
        # websockets' parser, a generator, keeps the request in its frame for
        # the connection's life, and reads it no more either: its headers go.
        self.request.headers = Headers()
        self.request = self.response = self.scope = None

    def connection_lost(self, exc):
        handshake_gate().leave(self.transport)
        super().connection_lost(exc)
        # Nothing is read any more: the parser (a generator whose frame holds
        # websockets' protocol, which holds it) and the application's callback
        # go, so that the closed socket is freed by reference counting, not
        # left to a full collection (signaling.garbage).
        self.take_text = None
        self.conn.parser.close()

    def send_receive_event_to_app(self):
        if self.curr_msg_data_type != "text" or self.close_sent:
            super().send_receive_event_to_app()
            return
        data = self.frames[0] if len(self.frames) == 1 else b"".join(self.frames)
        self.frames = []
        try:
            text = data.decode()
        except UnicodeDecodeError:
            # As uvicorn closes it, without the traceback it logs.
            _not_utf8.warning("a client sent a text frame that is not UTF-8: closed it with 1007")
            self.conn.send_close(1007)
            self.handle_parser_exception()
            return
        self.text_received(text)

    def text_received(self, text):
        """A whole text message from the client: to the app's receive_text callback, else its queue, as uvicorn queues it."""
        if self.close_sent:
            return  # as uvicorn: the app is past its close
        # Only with nothing queued ahead of it: messages keep their order.
        if self.take_text is not None and self.queue.empty() and self.take_text(text):
            return
        self.queue.put_nowait({"type": "websocket.receive", "text": text})
        if not self.read_paused:
            self.read_paused = True
            self.transport.pause_reading()

    def take_frames(self, data):
        """Handle the whole, unfragmented text frames that ``data`` starts with; return how many bytes they took.

        websockets parses a frame through three generators and a frame
        object, uvicorn hands it on as an event: together the largest cost
        of a relayed frame after the system calls, when profiled, and of
        every heartbeat. Most frames a PeerJS client sends are short text
        frames, whole in one read, so those are read here -- only while
        websockets' parser waits at a frame's start with nothing buffered,
        the connection is open and no fragmented message is under way.
        Anything else (a control frame, a fragment, a frame cut by the read,
        a 64-bit length, one over the size limit or not UTF-8) and everything
        after it go to websockets from where these ended, so it answers them
        as ever.
        """
        conn = self.conn
        if conn.state is not State.OPEN or conn.cur_size is not None or conn.parser_exc is not None:
            return 0
        parser = conn.parser
        while parser.gi_yieldfrom is not None:
            parser = parser.gi_yieldfrom
        if parser.gi_code is not _AWAITING_A_FRAME:
            return 0
        size, end, max_size = len(data), 0, conn.max_size
        while end + 6 <= size:  # two bytes of header and four of mask, at least
            if data[end] != 0x81:  # FIN, no reserved bits, text
                break
            length = data[end + 1] ^ 0x80  # a client's frame is masked: the high bit set
            if length < 126:
                start = end + 6
            elif length == 126 and end + 8 <= size:
                length = int.from_bytes(data[end + 2 : end + 4], "big")
                start = end + 8
            else:  # not masked, a 64-bit length, or the header cut by the read
                break
            if start + length > size or (max_size is not None and length > max_size):
                break
            try:
                text = apply_mask(data[start : start + length], data[start - 4 : start]).decode()
            except UnicodeDecodeError:
                break
            end = start + length
            self.text_received(text)
            if conn.state is not State.OPEN:  # the app closed it meanwhile: websockets takes the rest
                break
        return end

    # The fast paths (scope["extensions"][IMMEDIATE]).

    def receive_text(self, take):
        """Offer each complete text message to ``take(text)`` in the read callback first.

        ``take`` runs before the message would join the queue the
        application's ``receive`` reads (only when that queue is empty, so the
        order holds); it returns True if it has handled the message, False to
        let it take the queue as usual. Otherwise the application's task
        would wake a turn of the event loop later, and uvicorn would stop and
        restart reading the socket for the queued message (two system calls).
        """
        self.take_text = take

    def accept_text(self, text):
        """Accept the handshake and write a text frame with its response, in one write; True if done.

        False where the ASGI ``websocket.accept`` must be sent instead (the
        handshake answered already, the client gone or not reading): that
        answers as it should. The steps of uvicorn's accept, for a response
        with no subprotocol and no headers of the application's, and the
        frame's bytes joined to the response's.
        """
        if (
            self.handshake_complete or self.initial_response is not None or self.disconnected
            or not self.writable.is_set() or self.transport.is_closing()
        ):
            return False
        self.logger.info(
            '%s - "WebSocket %s" [accepted]', get_client_addr(self.scope), get_path_with_query_string(self.scope)
        )
        del self.response.headers["Date"]
        self.response.headers.update(
            [(name.decode("latin-1").lower(), value.decode("latin-1")) for name, value in self.default_headers]
        )
        self.handshake_complete = True
        self.conn.send_response(self.response)
        self.conn.send_text(text.encode())
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.start_keepalive()
        return True

    def send_text(self, text):
        """Write a text frame at once and return True, where ``send`` would not have waited; else False.

        Then the caller awaits the ASGI ``send`` as usual, which waits or
        raises as it should. The steps of ``send`` for a frame, without its
        coroutine: a coroutine runs only in a task, and the hand-over to the
        task that writes a socket's frames cost every frame a turn of the loop.
        """
        if (
            not self.writable.is_set() or self.disconnected or self.close_sent or not self.handshake_complete
            or self.initial_response is not None or self.conn.state is not State.OPEN or self.transport.is_closing()
        ):
            return False
        data = text.encode()
        self.conn.send_text(data)
        if self.held_bytes:
            self.held_bytes += len(data)
            if self.held_bytes >= HOLD_AT_MOST:  # the transport's flow control sees it now
                self.flush_held()
        elif held_writes.hold(self.flush_held):
            self.held_bytes = len(data)
        else:
            self.transport.write(b"".join(self.conn.data_to_send()))
        return True

    def flush_held(self):
        """Write what ``send_text`` held back (uvicorn's own writes take it along, in order, if they come first)."""
        self.held_bytes = 0
        output = self.conn.data_to_send()
        if output and not self.transport.is_closing():
            self.transport.write(b"".join(output))


class AcceptFailures(logging.Filter):
    """asyncio's log of a failed accept (out of file descriptors, memory), made one line a minute.

    When a worker runs out of file descriptors, asyncio's selector loop
    (``_accept_connection``) hands each failed accept to the loop's exception
    handler, whose default logs it with a traceback: one per accept it tries,
    up to the listen backlog for each readable event of the listening socket
    (about 330 000 lines in 25 s, measured). As a filter on the ``asyncio``
    logger, this holds those records back and says it once per interval.
    """

    MESSAGE = "socket.accept() out of system resource"

    def filter(self, record):
        if not str(record.msg).startswith(self.MESSAGE):
            return True
        error = record.exc_info[1] if record.exc_info else None
        _accept_failed.warning("cannot accept connections: %s", error or self.MESSAGE)
        return False


logging.getLogger("asyncio").addFilter(AcceptFailures())
