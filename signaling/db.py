"""The worker's way to the registry: registry functions on threads, outages noticed once.

Registry calls run on small pools of threads of their own, so that one slow
call (a burst of queued frames, a database that stopped answering) never
holds up the others, and the event loop never waits on the database.

A database that cannot be reached raises :class:`DatabaseUnavailable` to
the caller, which answers its client plainly (try again, EXPIRE, HTTP 503).
The outage is logged when it starts and when it ends, with how many calls
failed meanwhile, instead of a traceback per call.

Each thread keeps its connection between calls, and a connection that was
open when the database went away is dead even once the database is back:
its first use would fail and look like a second outage. So a thread drops
a connection older than the last outage before it uses it
(:meth:`Outage.reconnect_if_stale`): once per thread and outage, no round
trip.

A database that hangs instead of refusing (a frozen server, a dead network
link) must be answered too, not waited on: every call made from the event
loop has a deadline, ``PEERJS_DATABASE_TIMEOUT``, past which it fails with
:class:`DatabaseUnavailable` like a refused one (see :meth:`Database.__call__`
for what becomes of the thread still in the call).
"""
import asyncio
import concurrent.futures
import functools
import logging
import threading
import time
import weakref

from django.db import InterfaceError, OperationalError, close_old_connections, connection

from signaling import logs
from signaling.conf import options

logger = logging.getLogger(__name__)

# What a database that went away raises (a lost connection, a refused one,
# SQLite's "database is locked" after its timeout).
UNREACHABLE = (OperationalError, InterfaceError)


class DatabaseUnavailable(Exception):
    """The registry could not be reached; the operation did not happen."""


class Outage:
    """Whether the database is away, shared by every caller in the process."""

    def __init__(self):
        self.lock = threading.Lock()
        self.since = None
        self.failures = 0
        self.count = 0  # outages so far
        self._seen = threading.local()  # per thread: the outages its connection has been through
        # A database that comes and goes (a worker out of file descriptors
        # cannot open SQLite's file, then can) would log two lines per flap:
        # an outage is logged at most once per interval, with its end, and the
        # next line counts those held back.
        self.quiet_until = None
        self.logged = False  # whether the current outage's start was logged
        self.held = 0

    def failed(self, exc):
        with self.lock:
            self.failures += 1
            if self.since is not None:
                return
            self.since = now = time.monotonic()
            self.count += 1
            self.logged = self.quiet_until is None or now >= self.quiet_until
            if not self.logged:
                self.held += 1
                return
            self.quiet_until = now + logs.INTERVAL
            held, self.held = self.held, 0
        more = f" ({held} more outages since the last such line)" if held else ""
        logger.error("database unreachable (%s)%s; answering what needs it with 'try again', 503 or EXPIRE", exc, more)

    def succeeded(self):
        if self.since is None:
            return
        with self.lock:
            if self.since is None:
                return
            lasted, failures, logged = time.monotonic() - self.since, self.failures, self.logged
            self.since, self.failures = None, 0
        if logged:
            logger.warning("database reachable again after %.1f s; %d calls failed meanwhile", lasted, failures)

    def reconnect_if_stale(self):
        """In the calling thread, before it uses the database: drop a connection an outage may have broken."""
        if getattr(self._seen, "count", 0) != self.count:
            self._seen.count = self.count
            connection.close()


outage = Outage()


_pools = weakref.WeakSet()  # every Database of the process, for close_all


def close_all():
    """End every pool's threads, and so their connections (a test session, before its test database is dropped)."""
    for pool in list(_pools):
        pool.executor.shutdown(wait=True, cancel_futures=True)


class Database:
    """Runs registry functions on a pool of threads, for an event loop, each within a deadline."""

    def __init__(self, stats, threads, name):
        self.stats = stats  # a Counter the failures are counted in (the hub's), or None
        self.executor = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix=name)
        self.stuck = 0  # calls past their deadline whose thread is still in them
        _pools.add(self)

    async def __call__(self, function, *args, late=None):
        """``function(*args)`` on a thread of the pool; DatabaseUnavailable if the database cannot answer in time.

        A thread cannot be interrupted inside a database driver, so a call
        past its deadline is abandoned, not stopped: the caller answers its
        client (try again, 503, EXPIRE) and the thread stays in the call
        until the database answers or its connection breaks (PostgreSQL's
        keepalives and timeouts, p2psite.settings). What it did then still
        counts: ``late(result)`` runs on the event loop with the result of
        a call that completed after all, for callers whose call took
        something (a claim, queued frames) that must not be lost.

        Calls must not pile up behind stuck ones, nor each wait out its own
        deadline: a call still waiting for a thread at its deadline is
        cancelled (it never runs), and while a call of the pool is stuck a
        new one fails at once, without queueing. A healthy database answers
        within the deadline (PostgreSQL cancels a longer statement itself),
        so a stuck call means it hangs, and the stuck call is the probe: it
        comes back when the database does (or its connection breaks), and
        calls go through again.
        """
        if self.stuck:
            self._failed(TimeoutError(f"no answer yet to {self.stuck} earlier call(s)"))
        timeout = options().database_timeout / 1000
        call = self.executor.submit(_fresh, function, *args)
        future = asyncio.wrap_future(call)
        done, _ = await asyncio.wait((future,), timeout=timeout)
        if not done:
            # cancel() succeeds only for a call no thread has started.
            if not call.cancel():
                self.stuck += 1
                future.add_done_callback(functools.partial(self._returned, function, late))
            self._failed(TimeoutError(f"no answer within {timeout:g} s"))
        try:
            result = future.result()
        except UNREACHABLE as exc:
            self._failed(exc)
        outage.succeeded()
        return result

    def _failed(self, exc):
        if self.stats is not None:
            self.stats["database_errors"] += 1
        outage.failed(exc)
        raise DatabaseUnavailable(str(exc)) from exc

    def _returned(self, function, late, future):
        """An abandoned call came back: its thread is free again, and what it did is handed to ``late``."""
        self.stuck -= 1
        exc = future.exception()
        if exc is not None:
            if not isinstance(exc, UNREACHABLE):
                logger.error("a late %s failed", function.__name__, exc_info=exc)
            return  # nothing happened to undo or hand on
        if late is not None:
            try:
                late(future.result())
            except Exception:
                logger.exception("what a late %s returned could not be handled", function.__name__)


def _fresh(function, *args):
    # As Channels' database_sync_to_async does: a connection past its
    # CONN_MAX_AGE, or broken, is closed before and after the call.
    close_old_connections()
    try:
        outage.reconnect_if_stale()
        return function(*args)
    finally:
        close_old_connections()


def unavailable_is_503(view):
    """A view that needs the registry answers 503 with Retry-After while the database is away."""
    from django.http import HttpResponse

    @functools.wraps(view)
    def wrapper(request, *args, **kwargs):
        try:
            outage.reconnect_if_stale()
            response = view(request, *args, **kwargs)
        except UNREACHABLE as exc:
            outage.failed(exc)
            response = HttpResponse(
                "The server's database is unavailable; try again in a moment",
                status=503,
                content_type="text/plain; charset=utf-8",
            )
            response["Retry-After"] = "5"
            return response
        outage.succeeded()
        return response

    return wrapper
