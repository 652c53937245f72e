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
"""
import concurrent.futures
import functools
import logging
import threading
import time

from channels.db import database_sync_to_async
from django.db import InterfaceError, OperationalError, connection

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

    def failed(self, exc):
        with self.lock:
            self.failures += 1
            if self.since is not None:
                return
            self.since = time.monotonic()
            self.count += 1
        logger.error("database unreachable (%s); answering what needs it with 'try again', 503 or EXPIRE", exc)

    def succeeded(self):
        if self.since is None:
            return
        with self.lock:
            if self.since is None:
                return
            lasted, failures = time.monotonic() - self.since, self.failures
            self.since, self.failures = None, 0
        logger.warning("database reachable again after %.1f s; %d calls failed meanwhile", lasted, failures)

    def reconnect_if_stale(self):
        """In the calling thread, before it uses the database: drop a connection an outage may have broken."""
        if getattr(self._seen, "count", 0) != self.count:
            self._seen.count = self.count
            connection.close()


outage = Outage()


class Database:
    """Runs registry functions on a pool of threads, for an event loop."""

    def __init__(self, stats, threads, name):
        self.stats = stats
        self.executor = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix=name)

    async def __call__(self, function, *args):
        try:
            result = await database_sync_to_async(_fresh, thread_sensitive=False, executor=self.executor)(function, *args)
        except UNREACHABLE as exc:
            self.stats["database_errors"] += 1
            outage.failed(exc)
            raise DatabaseUnavailable(str(exc)) from exc
        outage.succeeded()
        return result


def _fresh(function, *args):
    outage.reconnect_if_stale()
    return function(*args)


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
