"""daphne as the project runs it: ``manage.py runserver`` (development) and ``ASGI_SERVER=daphne``.

Launched as ``python -m signaling.servers.daphne [daphne's options] p2psite.asgi:application``
(deploy/worker-entrypoint.sh) and by this app's ``runserver`` command, both
with :class:`PeerServer`, daphne's server with only what its options cannot
give, set through the doors daphne, Twisted and autobahn offer (their
versions are checked on import, :data:`signaling.servers.TESTED`):

- autobahn fails a connection on a protocol error (a text frame that is not
  UTF-8, a message over the size limit) by dropping it, for servers by
  default (``failByDrop``): the client saw 1006 and no reason. With it off,
  autobahn sends a close frame with the standard code (1007, 1009) first.
  Set with the WebSocket factory's ``setProtocolOptions`` once daphne has
  made the factory (its ``ready_callable``), before it accepts a connection.
- The message size limit follows the app's, not daphne's options: see
  :func:`message_limit`.
- autobahn waits 1 s for a client to answer a close frame, then drops the
  connection; with what the client sent still unread, the kernel resets it
  instead of closing it, and the client may lose the close frame and the
  ERROR before it (a flooder, cut off, saw no close code at all on a busy
  machine). It waits as long as the app waits for a close
  (signaling.consumers.CLOSE_WAIT).
- A request line or header line over Twisted's 16 KiB (a URL with an id of
  30 000 characters) dropped the connection with no response; it is answered
  ``400 Bad Request``, as Twisted answers its other malformed requests, by an
  HTTPChannel subclass made the HTTP factory's ``protocol`` (Twisted's way of
  choosing what a factory builds; it speaks HTTP/1.1 only, as daphne does
  without Twisted's http2 extra, which the project does not install).
- A frame sent to a socket whose client has gone raises, as under uvicorn,
  instead of vanishing (:meth:`PeerServer.handle_reply`).
- daphne reads a socket as fast as its client sends, whatever the
  application takes: a flooder's messages piled up in memory, and parsing
  them took the worker's event loop (beats 2 s apart on a busy machine),
  while the app meant to slow it down through TCP (``FLOOD_LIMIT``). A socket
  whose application is :data:`BACKLOG` messages behind is not read until it
  has caught up, as under uvicorn (:class:`ReadWhenTaken`, the WebSocket
  factory's ``protocol``).
"""
from signaling.servers import raise_open_files_limit, require_tested

require_tested("daphne", "twisted", "autobahn")

from daphne.server import Server  # noqa: E402  (first of Twisted: it installs the asyncio reactor)
from daphne.cli import CommandLineInterface  # noqa: E402
from daphne.ws_protocol import WebSocketProtocol  # noqa: E402
from twisted.internet import reactor  # noqa: E402
from twisted.web.http import HTTPChannel  # noqa: E402

from signaling.conf import options  # noqa: E402

_TOO_LONG_BODY = b"Request line or header too long"
TOO_LONG = (
    b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(_TOO_LONG_BODY), _TOO_LONG_BODY)
)


class LineTooLongAnswered(HTTPChannel):
    """Twisted's HTTP channel, which answers a line over its limit with 400 instead of dropping the connection."""

    def lineLengthExceeded(self, line):
        self.transport.write(TOO_LONG)
        self.transport.loseConnection()


BACKLOG = 32  # messages a socket's application has not taken yet, past which the socket is not read
BACKLOG_LOOK = 0.02  # seconds between looks at a paused socket's backlog (daphne says nothing when it shrinks)


class ReadWhenTaken(WebSocketProtocol):
    """daphne's WebSocket protocol, which stops reading a client whose application is :data:`BACKLOG` messages behind."""

    paused = False

    def onMessage(self, payload, isBinary):
        super().onMessage(payload, isBinary)
        if not self.paused and self.application_queue.qsize() >= BACKLOG:
            self.paused = True
            self.transport.pauseProducing()
            reactor.callLater(BACKLOG_LOOK, self._read_when_taken)

    def _read_when_taken(self):
        if self.transport.connected and self.application_queue.qsize() > BACKLOG // 4:
            reactor.callLater(BACKLOG_LOOK, self._read_when_taken)
            return
        self.paused = False
        self.transport.resumeProducing()  # nothing on a connection that has gone meanwhile


def message_limit(o):
    """The largest WebSocket message daphne may receive or send, for the app's options ``o``.

    ``MAX_MESSAGE_BYTES``, as under uvicorn, unless what the server relays
    needs more: autobahn holds what it sends to the same limit as what it
    receives, and a relayed frame is larger than the one received (``src``
    in front, and a frame rebuilt for its extra fields or lone surrogates may
    write each non-ASCII character as a ``\\uXXXX`` escape, three times its
    UTF-8 size).
    """
    return max(o.max_message_bytes, 3 * o.max_frame_bytes + len('{"src":"",') + o.id_max_length)


class ClientGone(OSError):
    """A frame sent to a socket whose client has gone (uvicorn raises its ClientDisconnected, an OSError, too)."""


class PeerServer(Server):
    """daphne's Server, adapted as the module says."""

    async def handle_reply(self, protocol, message):
        # daphne drops what an application sends to a connection that has
        # gone, silently: a frame relayed to a peer in the moment its client
        # closed was lost, and its sender never heard EXPIRE. Raised, the
        # consumer's writer hands it back to the hub (the queue, then EXPIRE),
        # as under uvicorn.
        if message.get("type") == "websocket.send" and (
            protocol not in self.connections or self.connections[protocol].get("disconnected")
        ):
            raise ClientGone("the client has gone")
        return await super().handle_reply(protocol, message)

    def __init__(self, *args, ready_callable=None, **kwargs):
        limit = message_limit(options())
        kwargs.update(websocket_max_message_size=limit, websocket_max_frame_size=limit)
        self.when_ready = ready_callable
        super().__init__(*args, ready_callable=self._adapt, **kwargs)

    def run(self):
        raise_open_files_limit()
        super().run()

    def _adapt(self):
        # daphne has made its factories and listens; it accepts nothing before this returns.
        self.http_factory.protocol = LineTooLongAnswered
        self.ws_factory.protocol = ReadWhenTaken
        from signaling.consumers import CLOSE_WAIT

        self.ws_factory.setProtocolOptions(failByDrop=False, closeHandshakeTimeout=CLOSE_WAIT)
        if self.when_ready is not None:
            self.when_ready()


class CommandLine(CommandLineInterface):
    """daphne's command line, serving with :class:`PeerServer`."""

    server_class = PeerServer


if __name__ == "__main__":
    CommandLine.entrypoint()
