"""Redis's protocol (RESP2) on a plain asyncio connection, replies parsed by hiredis.

The layer's hot path publishes batches and reads subscriptions, nothing else,
and redis-py's general machinery cost it more than Redis itself: measured
here, one pipelined ``SPUBLISH`` took 69 µs of CPU through redis-py 8 and
11 µs written and read directly. So the workers' inboxes speak RESP
themselves, with hiredis (redis-py's own parser) for the replies; redis-py
still maps a Redis Cluster's slots to its nodes (signaling.bus.layer).
"""
import asyncio
import collections
import socket

import hiredis

CONNECT_TIMEOUT = 5.0


class Connection(asyncio.Protocol):
    """One connection to one Redis server: commands out, replies (and pushes) in.

    Read as the bytes arrive, in the event loop's callback: a reply goes to
    the oldest call still waiting (calls may overlap; Redis answers in
    order), anything else -- a subscription's messages -- to ``on_push``,
    at once. Not through a reading task, which would cost every batch
    between workers a turn of the event loop.
    """

    def __init__(self, host, port, username=None, password=None, tls=False):
        self.host = host
        self.port = port
        self.username = username
        self.password = password
        self.tls = tls  # rediss://
        self.transport = None
        self.parser = hiredis.Reader()
        self.waiting = collections.deque()  # [replies expected, replies so far, on_replies], oldest first
        self.on_push = None  # called with each reply no call waits for
        self.ended = None  # future: the ConnectionError that ended the connection

    async def open(self):
        loop = asyncio.get_running_loop()
        self.ended = loop.create_future()
        await asyncio.wait_for(
            loop.create_connection(lambda: self, self.host, self.port, ssl=self.tls or None), CONNECT_TIMEOUT
        )
        sock = self.transport.get_extra_info("socket")
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
                self.close()
                raise ConnectionError(f"Redis refused the credentials: {reply}")
        return self

    @property
    def closed(self):
        return self.transport is None or self.transport.is_closing()

    def send(self, commands):
        """Write ``commands`` (tuples of str or bytes) in one buffer."""
        if self.closed:
            raise ConnectionError(f"the connection to Redis at {self.host}:{self.port} is closed")
        self.transport.write(b"".join(pack(*command) for command in commands))

    def request(self, commands, on_replies):
        """Send ``commands``; ``on_replies`` is called with their replies, in order, as they are read.

        Or with the exception that ended the connection first. Called from
        the read callback, not a turn of the event loop later as a future's
        waiter would be.
        """
        if not commands:
            raise ValueError("no commands: nothing would answer")  # the call would swallow the next reply
        self.send(commands)
        self.waiting.append([len(commands), [], on_replies])

    async def call(self, commands, timeout):
        """Send ``commands`` and return their replies, in order (error replies as hiredis.ReplyError).

        Past ``timeout`` the connection is closed (its replies are out of
        step from then on) and asyncio.TimeoutError raised.
        """
        future = asyncio.get_running_loop().create_future()

        def answered(replies):
            if not future.done():
                if isinstance(replies, BaseException):
                    future.set_exception(replies)
                else:
                    future.set_result(replies)

        self.request(commands, answered)
        try:
            return await asyncio.wait_for(future, timeout)
        except asyncio.TimeoutError:
            self.close()
            raise

    def fail(self, reason):
        """End the connection: ``ended`` says ``reason`` (a ConnectionError); calls still waiting raise it."""
        self._end(reason)
        self.close()

    def close(self):
        if self.transport is not None:
            self.transport.close()

    # asyncio.Protocol

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.parser.feed(data)
        while not self.closed:  # the rest of the buffer is nobody's once a push ended the connection
            try:
                reply = self.parser.gets()
            except hiredis.ProtocolError as exc:
                self.fail(ConnectionError(f"Redis at {self.host}:{self.port} sent what is not RESP: {exc}"))
                return
            if reply is False:
                return
            if self.waiting:
                entry = self.waiting[0]
                entry[1].append(reply)
                if len(entry[1]) == entry[0]:
                    self.waiting.popleft()
                    entry[2](entry[1])
            elif self.on_push is not None:
                self.on_push(reply)

    def connection_lost(self, exc):
        self.transport = None
        self._end(ConnectionError(f"Redis at {self.host}:{self.port} closed the connection"))

    def _end(self, reason):
        if self.ended is not None and not self.ended.done():
            self.ended.set_result(reason)
        while self.waiting:
            self.waiting.popleft()[2](reason)


def pack(*args):
    """A command in RESP: an array of bulk strings."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, str):
            arg = arg.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(parts)
