"""What the production worker's ASGI server (uvicorn) is run with, beyond its options.

uvicorn gives a request all the time it likes to arrive: a client that
opens connections and sends its request line and headers a byte at a time
(or nothing at all) holds each connection, and the memory behind it, for as
long as it pleases. Behind nginx (docker-compose, ``make cluster``) nginx's
``client_header_timeout`` ends that; a worker that faces clients itself
needs its own deadline. :class:`H11WithHeaderDeadline` is uvicorn's h11
protocol with one: a request's line and headers must be complete within
``ASGI_HEADER_TIMEOUT`` seconds (default 10) of the connection or of the
previous response, or the connection is closed. A WebSocket handshake is a
request like any other, so a slow or partial handshake ends the same way.

deploy/worker-entrypoint.sh passes it with ``--http``. This module imports
nothing of Django: uvicorn loads it before the application.
"""
import os

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

HEADER_TIMEOUT = float(os.environ.get("ASGI_HEADER_TIMEOUT") or 10)


class H11WithHeaderDeadline(H11Protocol):
    deadline = None

    def connection_made(self, transport):
        super().connection_made(transport)
        self._arm()

    def data_received(self, data):
        super().data_received(data)
        if self.transport.is_closing():
            self._disarm()
        elif self.conn.their_state is h11.IDLE:
            # Between requests: uvicorn's keep-alive timeout covers a quiet
            # connection; a request begun and not finished is ours to bound.
            if self.conn.trailing_data[0]:
                self._arm()
            else:
                self._disarm()
        else:
            self._disarm()  # the headers are in (or the socket became a WebSocket)

    def connection_lost(self, exc):
        self._disarm()
        super().connection_lost(exc)

    def _arm(self):
        if self.deadline is None:
            self.deadline = self.loop.call_later(HEADER_TIMEOUT, self._too_slow)

    def _disarm(self):
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None

    def _too_slow(self):
        self.deadline = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()
