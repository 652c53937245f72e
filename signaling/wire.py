"""Redis's protocol (RESP2) on a plain asyncio connection, replies parsed by hiredis.

The layer's hot path publishes batches and reads subscriptions, nothing else,
and redis-py's general machinery cost it more than Redis itself: measured
here, one pipelined ``SPUBLISH`` took 69 µs of CPU through redis-py 8 and
11 µs written and read directly. So the workers' inboxes speak RESP
themselves, with hiredis (redis-py's own parser) for the replies; redis-py
still maps a Redis Cluster's slots to its nodes (signaling.layer).
"""
import asyncio
import socket

import hiredis

CONNECT_TIMEOUT = 5.0


class Connection:
    """One connection to one Redis server: commands out, replies (and pushes) in."""

    def __init__(self, host, port, username=None, password=None, tls=False):
        self.host = host
        self.port = port
        self.username = username
        self.password = password
        self.tls = tls  # rediss://
        self.reader = self.writer = None
        self.parser = hiredis.Reader()

    async def open(self):
        self.reader, self.writer = await asyncio.wait_for(
            asyncio.open_connection(self.host, self.port, ssl=self.tls or None), CONNECT_TIMEOUT
        )
        sock = self.writer.get_extra_info("socket")
        if sock is not None:
            # A peer gone without a word (a network cut) is noticed within a minute.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            for option, value in (("TCP_KEEPIDLE", 30), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 3)):
                if hasattr(socket, option):
                    sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)
        if self.password:
            auth = ("AUTH", self.username, self.password) if self.username else ("AUTH", self.password)
            (reply,) = await self.call([auth], CONNECT_TIMEOUT)
            if isinstance(reply, hiredis.ReplyError):
                raise ConnectionError(f"Redis refused the credentials: {reply}")
        return self

    @property
    def closed(self):
        return self.writer is None or self.writer.is_closing()

    def send(self, commands):
        """Write ``commands`` (tuples of str or bytes) in one buffer."""
        self.writer.write(b"".join(pack(*command) for command in commands))

    async def call(self, commands, timeout):
        """Send ``commands`` and return their replies, in order (error replies as hiredis.ReplyError)."""
        self.send(commands)
        return await asyncio.wait_for(self._replies(len(commands)), timeout)

    async def _replies(self, count):
        replies = []
        while len(replies) < count:
            replies.append(await self.next())
        return replies

    async def next(self):
        """The next reply, or push (a subscription's message); ConnectionError when the server is gone."""
        while True:
            reply = self.parser.gets()
            if reply is not False:
                return reply
            data = await self.reader.read(65536)
            if not data:
                raise ConnectionError(f"Redis at {self.host}:{self.port} closed the connection")
            self.parser.feed(data)

    def close(self):
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def pack(*args):
    """A command in RESP: an array of bulk strings."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, str):
            arg = arg.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(parts)
