"""Adaptations of the ASGI servers' WebSocket layers, applied when the application loads.

Both servers read WebSocket frames and handshakes before the application
sees them, and each ended some connections without a word, which the
protocol's rules forbid: whatever a client sends, it hears why it is refused
(an HTTP status, an ERROR frame, or a close frame with a code). Neither
server has a setting for what follows, so :func:`adapt` adjusts them, once,
from ``p2psite.asgi`` (before the server builds a connection), whichever of
them loaded the application. Each adaptation is checked by
tests/test_socket_edges.py: recheck them when upgrading daphne, autobahn,
uvicorn or websockets.

daphne (autobahn), for ``manage.py runserver`` and ``ASGI_SERVER=daphne``
    autobahn fails a connection on a protocol error -- a text frame that is
    not UTF-8, a message over the size limit -- by dropping its TCP
    connection, for servers by default (``failByDrop``): the client sees
    1006 and no reason. With ``failByDrop`` off it sends a close frame with
    the standard code (1007, 1009) and then closes.

    Its size limits follow ``PEERJS_MAX_FRAME_BYTES`` (daphne's own
    ``--websocket-max-message-size`` and ``DAPHNE_WEBSOCKET_MAX_*_SIZE``,
    1 MiB by default, are replaced). autobahn holds what the server *sends*
    to the same limit as what it receives, and a relayed frame is larger
    than the one received: the server puts ``src`` in front, and a frame it
    has to rebuild (extra top-level fields, lone surrogates) may write each
    non-ASCII character as a ``\\uXXXX`` escape, up to three times its UTF-8
    size. So the limit is :func:`daphne_message_limit`: three times the
    frame cap plus an id. A frame over the cap but under that is read and
    answered with ERROR, as under uvicorn; a larger one is closed with 1009
    as it arrives, never buffered whole.

    A request line or header line over Twisted's 16 KiB (a URL with an id
    of 30 000 characters) dropped the connection with no response; it is
    answered ``400 Bad Request`` and closed, as Twisted answers its other
    malformed requests. (Under 16 KiB such an id reaches the server, whose
    ERROR says the id is too long.)

uvicorn (websockets-sansio), the production worker
    A handshake whose request line or a header line is longer than
    websockets' limit (8 KiB: the URL of an id of 10 000 characters) was
    abandoned without a response, and the client waited for its own
    timeout. It is answered ``414 URI Too Long`` (a long header line: ``431``,
    anything else websockets cannot parse: ``400``) and closed. (A request
    too large for uvicorn's HTTP parser, h11, is answered 400 by uvicorn.)

    A text frame that is not UTF-8 is closed with 1007, as it should be, but
    uvicorn logged a traceback for each (a client could fill the log): it is
    logged as one line.

    uvicorn gives a request all the time it likes to arrive: a client that
    opens connections and sends its request line and headers a byte at a
    time (or nothing at all) holds each one for as long as it pleases. Behind
    nginx, ``client_header_timeout`` ends that; a worker that faces clients
    itself needs a deadline of its own: a request's line and headers (a
    WebSocket handshake's too) must be complete within ``ASGI_HEADER_TIMEOUT``
    seconds (default 10) of the connection or of the previous response, or
    the connection is closed.

    uvicorn starts a WebSocket handshake the moment its request is in, and
    works on all of them at once. In a reconnect storm (a worker dies and its
    thousands of peers come back to the others) that was hundreds at a time,
    and every turn of the event loop ran a step of each: the frames of the
    peers already connected waited behind them (turns of 100-300 ms in the
    benchmark's storm). A worker now works on at most
    ``ASGI_HANDSHAKE_CONCURRENCY`` handshakes at a time (default 32); the
    others wait, their request read and their socket no longer read, in the
    order they came, until one of those ends (accepted, refused or gone).
    Only complete requests wait: a client that sends its headers slowly holds
    no place. Plain HTTP requests never wait.

    Two helpers let the application skip uvicorn's hand-overs between tasks,
    each a turn of the event loop (tens of milliseconds in a reconnect storm):
    :func:`immediate_sender` writes a frame at once, and :func:`immediate_receiver`
    offers each text message to the application in the read callback, before
    it would join the queue its task reads.
"""
import collections
import functools
import logging
import os
import sys

logger = logging.getLogger(__name__)

_adapted = set()


def daphne_message_limit(options):
    """The largest WebSocket message daphne may receive or send: any frame the server relays fits."""
    return 3 * options.max_frame_bytes + len('{"src":"",') + options.id_max_length


def adapt(options):
    """Adapt the servers loaded in this process (see the module's docstring); ``options``: signaling.conf's."""
    if "daphne.server" in sys.modules and "daphne" not in _adapted:
        _adapt_daphne(daphne_message_limit(options))
        _adapted.add("daphne")
    if "uvicorn" in sys.modules and "uvicorn" not in _adapted:
        _adapt_uvicorn()
        _adapted.add("uvicorn")


_TOO_LONG_BODY = b"Request line or header too long"
_TOO_LONG = (
    b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(_TOO_LONG_BODY), _TOO_LONG_BODY)
)


def _adapt_daphne(limit):
    from daphne.ws_protocol import WebSocketFactory
    from twisted.web.http import HTTPChannel

    def lineLengthExceeded(self, line):
        self.transport.write(_TOO_LONG)
        self.transport.loseConnection()

    HTTPChannel.lineLengthExceeded = lineLengthExceeded

    set_options = WebSocketFactory.setProtocolOptions

    def setProtocolOptions(self, *args, **kwargs):
        set_options(self, *args, **kwargs)
        set_options(self, failByDrop=False, maxMessagePayloadSize=limit, maxFramePayloadSize=limit)

    WebSocketFactory.setProtocolOptions = setProtocolOptions


_UTF8_MESSAGE = "Invalid UTF-8 sequence received from client."


class _OneLineForInvalidUtf8(logging.Filter):
    def filter(self, record):
        if record.msg == _UTF8_MESSAGE and record.exc_info:
            record.msg = "a client sent a text frame that is not UTF-8; closed it with 1007"
            record.exc_info = record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def _adapt_uvicorn():
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
    from websockets import http11
    from websockets.exceptions import SecurityError

    data_received = WebSocketsSansIOProtocol.data_received

    def answer_what_the_handshake_parser_refused(self, data):
        data_received(self, data)
        if self.handshake_initiated:  # the usual case, every frame: one attribute read
            return
        exc = self.conn.handshake_exc
        if exc is None or self.transport.is_closing():
            return
        cause = exc.__cause__
        if isinstance(cause, SecurityError) and len(data.split(b"\r\n", 1)[0]) > http11.MAX_LINE_LENGTH:
            status, text = 414, "Request line too long"
        elif isinstance(cause, SecurityError):
            status, text = 431, "Request headers too large"
        else:
            status, text = 400, "Invalid WebSocket handshake"
        self.transport.write(self.conn.reject(status, text).serialize())
        self.transport.close()

    WebSocketsSansIOProtocol.data_received = answer_what_the_handshake_parser_refused
    _immediate_text(WebSocketsSansIOProtocol)
    logging.getLogger("uvicorn.error").addFilter(_OneLineForInvalidUtf8())
    _header_deadline(float(os.environ.get("ASGI_HEADER_TIMEOUT") or 10))
    _handshake_gate(int(os.environ.get("ASGI_HANDSHAKE_CONCURRENCY") or 32))


def _header_deadline(seconds):
    """uvicorn's HTTP/1.1 protocol (h11) with a deadline for a request's line and headers."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    connection_made, data_received, connection_lost = (
        H11Protocol.connection_made, H11Protocol.data_received, H11Protocol.connection_lost,
    )

    def arm(self):
        if getattr(self, "header_deadline", None) is None:
            self.header_deadline = self.loop.call_later(seconds, too_slow, self)

    def disarm(self):
        if getattr(self, "header_deadline", None) is not None:
            self.header_deadline.cancel()
            self.header_deadline = None

    def too_slow(self):
        self.header_deadline = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()

    def on_connection_made(self, transport):
        connection_made(self, transport)
        arm(self)

    def on_data_received(self, data):
        data_received(self, data)
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            disarm(self)  # the headers are in (or the socket became a WebSocket)
        elif self.conn.trailing_data[0]:
            arm(self)  # a request begun and not finished
        else:
            disarm(self)  # quiet between requests: uvicorn's keep-alive timeout covers it

    def on_connection_lost(self, exc):
        disarm(self)
        connection_lost(self, exc)

    H11Protocol.connection_made = on_connection_made
    H11Protocol.data_received = on_data_received
    H11Protocol.connection_lost = on_connection_lost


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


def _handshake_gate(limit):
    from uvicorn.protocols.http.h11_impl import H11Protocol
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

    gate = HandshakeGate(limit)
    upgrade = H11Protocol.handle_websocket_upgrade
    start_keepalive, connection_lost = WebSocketsSansIOProtocol.start_keepalive, WebSocketsSansIOProtocol.connection_lost

    def handle_websocket_upgrade(self, event):
        if self.ws_protocol_class is WebSocketsSansIOProtocol:
            gate.enter(self.transport, functools.partial(upgrade, self, event))
        else:  # the benchmark's other implementations: as they come
            upgrade(self, event)

    # The handshake ends accepted (uvicorn starts its keepalive then, once per
    # socket: no cost per frame) or with the connection (refused, gone).
    def accepted(self):
        gate.leave(self.transport)
        start_keepalive(self)

    def on_connection_lost(self, exc):
        gate.leave(self.transport)
        connection_lost(self, exc)

    H11Protocol.handle_websocket_upgrade = handle_websocket_upgrade
    WebSocketsSansIOProtocol.start_keepalive = accepted
    WebSocketsSansIOProtocol.connection_lost = on_connection_lost


def _immediate_text(protocol_class):
    """Offer each complete text message to the application's ``take_text_now`` first (see immediate_receiver)."""
    to_app = protocol_class.send_receive_event_to_app
    protocol_class.take_text_now = None

    def send_receive_event_to_app(self):
        take = self.take_text_now
        # Only with nothing queued ahead of it: messages keep their order.
        if take is not None and self.curr_msg_data_type == "text" and not self.close_sent and self.queue.empty():
            data = self.frames[0] if len(self.frames) == 1 else b"".join(self.frames)
            try:
                text = data.decode()
            except UnicodeDecodeError:
                text = None  # uvicorn's own way closes with 1007
            if text is not None and take(text):
                self.frames = []
                return
        to_app(self)

    protocol_class.send_receive_event_to_app = send_receive_event_to_app


def immediate_receiver(send, take_text_now):
    """Under uvicorn's websockets-sansio, offer each text message to ``take_text_now(text)`` as it is read.

    ``send`` is the connection's ASGI send. ``take_text_now`` runs in the
    server's read callback, before the message would join the queue that
    the application's ``receive`` reads (only when that queue is empty, so
    the order holds); it returns True if it has handled the message, False
    to let it take that queue, as usual. The application's task would have
    woken a turn of the event loop later, and uvicorn stops and restarts
    reading the socket for each queued message (two system calls). Returns
    whether it was installed (not under daphne or other implementations).
    """
    connection = _sansio_connection(send)
    if connection is None:
        return False
    connection.take_text_now = take_text_now
    return True


def _sansio_connection(send):
    """The uvicorn websockets-sansio connection whose ASGI ``send`` this is, else None."""
    if "uvicorn.protocols.websockets.websockets_sansio_impl" not in sys.modules:
        return None  # daphne, or another of uvicorn's implementations
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

    connection = getattr(send, "__self__", None)
    if not isinstance(connection, WebSocketsSansIOProtocol) or getattr(send, "__func__", None) is not WebSocketsSansIOProtocol.send:
        return None
    return connection


def immediate_sender(send):
    """For an ASGI ``send`` of uvicorn's websockets-sansio connection: ``send_now(text)``, else None.

    ``send_now`` writes a text frame at once and returns True where
    uvicorn's ``send`` would not have waited (the connection is open and its
    transport takes data); else it returns False and the caller awaits
    ``send`` as usual, which then raises or waits as it should. The same
    steps as ``send``'s, without its coroutine: a coroutine can only be run
    from a task, and the hand-over to the task that writes a socket's frames
    cost every frame a turn of the event loop (tens of milliseconds each
    while hundreds of sockets open at once).
    """
    connection = _sansio_connection(send)
    if connection is None:
        return None
    from websockets.protocol import State

    def send_now(text):
        c = connection
        if (
            not c.writable.is_set() or c.disconnected or c.close_sent or not c.handshake_complete
            or c.initial_response is not None or c.conn.state is not State.OPEN or c.transport.is_closing()
        ):
            return False
        c.conn.send_text(text.encode())
        c.transport.write(b"".join(c.conn.data_to_send()))
        return True

    return send_now
