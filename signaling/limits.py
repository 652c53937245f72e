"""Rate limits per client address: socket opens, ``/id`` and ``/ice-servers`` requests per window.

An IPv6 client is counted by its network (signaling.http.client_group). A
fixed window per (kind, address): the first event of a window starts it,
and the window frees ``rate_limit_window`` ms later. With REDIS_URL set the
count is the cluster's: one Redis key per kind and address, counted and
given its expiry by one small script (one key per command, so it stays on
one slot of a Redis Cluster). Without Redis, or while Redis cannot be
reached, each worker counts in its own memory: a limiter must never be the
reason a client is refused service, so an unreachable Redis costs the
limits their cluster-wide reach, nothing more (logged once per outage).

Only opens, ``/id`` and ``/ice-servers`` are counted: relaying never comes here.
"""
import asyncio
import collections
import logging
import math
import threading
import time
import weakref

from asgiref.sync import async_to_sync
from redis.asyncio.cluster import RedisCluster

from signaling import sentinel
from signaling.conf import options
from signaling.http import client_group

logger = logging.getLogger(__name__)

OPEN = "open"
ID = "id"
ICE = "ice"
KINDS = (OPEN, ID, ICE)

REDIS_TIMEOUT = 0.5  # seconds a count may wait for Redis before this worker counts alone
REDIS_RETRY = 2.0  # seconds after a failure before Redis is asked again
MEMORY_PRUNE_AT = 10_000  # windows kept in memory before the finished ones are dropped

# INCR, and on the window's first event its expiry; the time left either way.
# A key that somehow has no expiry gets one, so no address stays limited forever.
_COUNT = """
local n = redis.call('INCR', KEYS[1])
local left = redis.call('PTTL', KEYS[1])
if n == 1 or left < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  left = tonumber(ARGV[1])
end
return {n, left}
"""

# Refusals by kind, for the metrics (peerjs_rate_limited_total{kind}).
refused = collections.Counter({kind: 0 for kind in KINDS})


class Verdict:
    """Whether an event is over its limit, and in how many seconds its window frees."""

    __slots__ = ("over", "retry_after")

    def __init__(self, over, retry_after=0):
        self.over = over
        self.retry_after = retry_after


ALLOWED = Verdict(False)


class Limiter:
    def __init__(self):
        self._windows = {}  # (kind, address) -> [count, monotonic time the window frees]
        self._lock = threading.Lock()  # /id views run on threads; opens on the event loop
        self._clients = weakref.WeakKeyDictionary()  # event loop -> Redis client of that loop
        self._redis_down_until = 0.0
        self._outage_since = None

    def limit(self, kind):
        o = options()
        return {OPEN: o.rate_limit_opens, ID: o.rate_limit_ids, ICE: o.rate_limit_ice}[kind]

    def enabled(self, kind, address):
        return bool(address) and bool(self.limit(kind)) and bool(options().rate_limit_window)

    async def ahit(self, kind, address):
        """Count one ``kind`` event from ``address``; the Verdict (async code)."""
        if not self.enabled(kind, address):
            return ALLOWED
        window = options().rate_limit_window
        count = left_ms = None
        if options().redis_url and time.monotonic() >= self._redis_down_until:
            try:
                count, left_ms = await asyncio.wait_for(self._redis_count(kind, address, window), REDIS_TIMEOUT)
            except Exception as exc:
                self._redis_failed(exc)
            else:
                self._redis_back()
        if count is None:
            count, left_ms = self._memory_count(kind, address, window)
        return self._verdict(kind, count, left_ms)

    def hit(self, kind, address):
        """:meth:`ahit` for synchronous code (the ``/id`` and ``/ice-servers`` views)."""
        if not self.enabled(kind, address):
            return ALLOWED
        if not options().redis_url:
            count, left_ms = self._memory_count(kind, address, options().rate_limit_window)
            return self._verdict(kind, count, left_ms)
        # Under the ASGI server this runs on the worker's event loop, whose
        # Redis client is already connected.
        return async_to_sync(self.ahit)(kind, address)

    def _verdict(self, kind, count, left_ms):
        if count <= self.limit(kind):
            return ALLOWED
        refused[kind] += 1
        return Verdict(True, max(1, math.ceil(left_ms / 1000)))

    def _memory_count(self, kind, address, window_ms):
        address = client_group(address, options())
        now = time.monotonic()
        with self._lock:
            if len(self._windows) >= MEMORY_PRUNE_AT:
                for key in [key for key, (_, frees) in self._windows.items() if frees <= now]:
                    del self._windows[key]
            entry = self._windows.get((kind, address))
            if entry is None or entry[1] <= now:
                entry = self._windows[kind, address] = [0, now + window_ms / 1000]
            entry[0] += 1
            return entry[0], (entry[1] - now) * 1000

    async def _redis_count(self, kind, address, window_ms):
        address = client_group(address, options())
        count, left = await self._client().eval(_COUNT, 1, f"peerjs:rate:{kind}:{address}", window_ms)
        return int(count), int(left)

    def _client(self):
        # A client's connections belong to the loop that opened them.
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            connection = {"socket_timeout": REDIS_TIMEOUT, "socket_connect_timeout": REDIS_TIMEOUT}
            o = options()
            if o.redis_cluster:
                client = RedisCluster.from_url(o.redis_url, **connection)
            else:
                client = sentinel.client(o, **connection)
            self._clients[loop] = client
        return client

    def _redis_failed(self, exc):
        # Counting alone for a moment, not asking a Redis that is away on every
        # open: an unreachable host would add its timeout to each of them.
        self._redis_down_until = time.monotonic() + REDIS_RETRY
        if self._outage_since is None:
            self._outage_since = time.monotonic()
            logger.error(
                "rate limits: Redis unreachable (%s); each worker counts its own clients until it is back",
                f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__,
            )

    def _redis_back(self):
        if self._outage_since is not None:
            logger.warning("rate limits: Redis reachable again after %.1f s", time.monotonic() - self._outage_since)
            self._outage_since = None

    def forget(self):
        """Drop the worker's own counts (tests)."""
        with self._lock:
            self._windows.clear()


limiter = Limiter()
