"""What keeps a worker's hub in step with the cluster, acting on it from outside.

Every worker runs these; the database makes sure each job is done once.

- **Beat and reaping.** A worker writes a beat every ``worker_beat``, on a
  thread of its own, whatever its other registry calls wait for (a lock
  another transaction holds on its peers' rows, a long reap): the beat's
  upkeep (releases, who lives, reaping, last-seen times) runs beside it, one
  at a time. A worker that stayed silent for ``worker_timeout`` is presumed
  dead and its peers' rows are reaped, so their ids come free. Liveness a shared outage
  cannot fake: a worker reaps others only once its own beats have succeeded
  without a gap for longer than ``worker_timeout``. A gap is a beat that
  failed (the database refused or lost the connection), or two successful
  beats more than ``BEAT_GAP`` beat intervals apart (the database hung, or
  answered too slowly to tell anyone's silence from its own). When the
  database was away for everyone, every worker's beats failed or stalled
  alike, and by the time any of them may reap again every live worker has
  beaten again: nobody is reaped, no socket is closed. That holds while
  ``worker_timeout`` is at least four beat intervals (signaling.conf checks
  it): a live worker is then never silent longer than the gap a reaper
  could miss plus two of its own beat intervals. A worker that really died
  meanwhile is reaped ``worker_timeout`` plus a beat or two after the
  database came back.
- **Expiry**: queued frames past their time, and frames for impossible ids,
  end as one EXPIRE per sender and destination.
- **Liveness**: sockets silent for ``alive_timeout`` are closed, and so are
  sockets whose client stopped reading what it is sent.
- **Directory**: where every peer of the cluster is, re-read from the
  registry in case an announcement was lost: the peers registered lately
  every ``DIRECTORY_REFRESH``, all of them every ``DIRECTORY_RESEED``.
- **Bans**: the active bans, re-read every ``ban_refresh`` (and at once when
  the admin says so, signaling.broadcasts), so that checking a socket's open
  costs no query.
- **Garbage**: when the worker runs full garbage collections
  (signaling.garbage): never over what it held once started, not in a storm.
- **Drain**: on SIGTERM every socket is closed with 1001 and the worker's
  rows are removed before the ASGI server stops.
"""
import asyncio
import datetime
import functools
import logging
import os
import signal
import threading
import weakref

from django.utils import timezone

from signaling import bans, codes, garbage, metrics, registry, webhooks
from signaling.db import DatabaseUnavailable
from signaling.hub import get_hub

logger = logging.getLogger(__name__)

# Seconds between re-reads of where the peers that arrived lately are, and
# between re-reads of where every peer is: either heals lost announcements.
# A whole re-read of 100 000 rows held a worker's event loop and its GIL for
# 300 ms (bench/scale.py), so most re-reads take only the rows of peers
# registered since the last one (and CLOCK_SLACK before: their times are the
# workers' clocks). The whole re-read only forgets routes whose "gone" was
# lost (a stale route costs a hop, never a frame): once an hour. Even in
# pages it slowed a worker's frames for 2-3 s with 100 000 peers, 1 % of the
# time at one every 5 minutes, which was the pairs' p99 (bench/scale.py).
DIRECTORY_REFRESH = 10.0
DIRECTORY_RESEED = 3600.0
DIRECTORY_PAGE = 5000  # rows read per turn of the event loop (about 6 ms of it)
CLOCK_SLACK = datetime.timedelta(seconds=30)
BEAT_GAP = 2  # successful beats further apart than this many beat intervals are a gap
# The longest a SIGTERM drain takes before the server stops anyway, in seconds.
# An orchestrator's grace period must outlast it (deploy/helm/peerserver).
DRAIN_TIMEOUT = 10


class Services:
    def __init__(self, hub):
        self.hub = hub
        self.tasks = []
        self.beats_ok_since = None  # loop time since which every beat succeeded, without a gap
        self.last_beat = None  # loop time the last successful beat ended
        self.beaten = False
        self.upkeep = None  # the task of the beat's upkeep under way (see beat)
        self.touches = 0  # beats that wrote last-seen times: whose turn it is (touch)
        self.reseeded_at = None  # loop time of the last whole re-read of the registry
        self.refreshed_since = None  # wall-clock time the last re-read began
        self.recent = metrics.Recent(hub)
        self.garbage = garbage.Collector(hub)

    async def start(self):
        """Listen for other workers, announce this one, and start the periodic jobs."""
        hub = self.hub
        if hub.transport is not None:
            await hub.transport.start()
        if hub.membership is not None:
            await hub.membership.start()
        await self.beat()
        if self.upkeep is not None:
            await self.upkeep  # who lives, before the first sockets
        try:
            await self.refresh_directory()
        except DatabaseUnavailable:
            pass  # the next refresh fills it; until then frames take the registry's way
        await bans.refresh(hub)
        o = hub.options
        self.tasks = [
            hub.loop.create_task(self._every(o.worker_beat / 1000, self.beat)),
            hub.loop.create_task(self._every(o.cleanup_out_msgs / 1000, self.expire)),
            hub.loop.create_task(self._every(min(o.alive_timeout / 4, 5000) / 1000, self.check_liveness)),
            hub.loop.create_task(self._every(DIRECTORY_REFRESH, self.refresh_directory)),
            hub.loop.create_task(self._every(o.ban_refresh / 1000, functools.partial(bans.refresh, hub))),
            hub.loop.create_task(self._every(1, self.check_garbage)),
        ]
        self.garbage.settle()
        self._drain_on_sigterm()
        logger.info("worker %s started", hub.name)

    async def _every(self, seconds, job):
        while True:
            await asyncio.sleep(seconds)
            await self._attempt(job)

    async def _attempt(self, job, *args):
        """Run a periodic job once; its failure is logged (a database outage once, by the database link)."""
        try:
            await job(*args)
        except asyncio.CancelledError:
            raise
        except DatabaseUnavailable:
            pass  # logged once per outage by the database link
        except Exception:
            logger.exception("worker %s: %s failed; will retry", self.hub.name, job.__name__)

    # Beat and reaping.

    async def beat(self):
        """Tell the cluster this worker lives; then, unless the last beat's is still at it, the upkeep.

        The upkeep is not awaited: its calls share the registry's threads
        with the sockets' claims and releases, and may wait on rows another
        transaction has locked. A beat that waited for them would fall
        silent, and other workers would reap this one while it serves its
        peers (and it would close all their sockets on learning it).
        """
        hub, o = self.hub, self.hub.options
        # Taken whether or not the database answers, so that the minute the
        # overview shows stays a minute; written in the beat's own UPDATE.
        stats = self.recent.snapshot()
        try:
            existed = await hub.db_aside(registry.worker_beat, hub.name, hub.host, hub.pid, hub.started_at, stats)
        except DatabaseUnavailable:
            self.beats_ok_since = None
            return
        now = hub.loop.time()
        gap = now - self.last_beat if self.last_beat is not None else 0.0
        self.last_beat = now
        if self.beats_ok_since is None:
            self.beats_ok_since = now
        elif gap > BEAT_GAP * o.worker_beat / 1000:
            # No beat failed, but one hung: the database stalled, for this
            # worker and maybe for all. Others' beats may have stalled alike.
            logger.warning(
                "worker %s: %.1f s between beats (the database stalled); reaping no worker for %.1f s",
                hub.name, gap, o.worker_timeout / 1000,
            )
            self.beats_ok_since = now
        if self.beaten and not existed:
            # Another worker reaped us: it could, so the database was there
            # for it and not for us, long enough to take us for dead. Our
            # rows are gone and others may hand out our peers' ids.
            logger.error("worker %s was reaped while alive; closing its sockets so they reconnect", hub.name)
            for connection in list(hub.connections.values()):
                hub.spawn(connection.drop(codes.WORKER_LOST, "Worker lost its registrations"))
        self.beaten = True
        if self.upkeep is None or self.upkeep.done():
            self.upkeep = hub.loop.create_task(self._attempt(self.keep_up, now))

    async def keep_up(self, now):
        """What follows a beat: releases missed, who lives, reaping the silent, last-seen times."""
        hub, o = self.hub, self.hub.options
        if hub.unreleased:
            unreleased, hub.unreleased = hub.unreleased, set()
            await hub.db(registry.release_connections, [connection for _k, _p, connection in unreleased])
        live = set(await hub.db(registry.live_workers, o.worker_timeout)) - {hub.name}
        hub.directory.meet(live)
        if self._may_reap():
            dead, freed = await hub.db(registry.reap, o.worker_timeout)
            if dead or freed:
                hub.stats["workers_reaped"] += len(dead)
                logger.warning("reaped workers %s and %d peer rows", dead, freed)
                hub.directory.forget_workers(dead)
        await self.touch(now)

    def _may_reap(self):
        """Whether this worker's beats have succeeded without a gap for longer than the worker timeout, until now.

        Asked when the reap would go out, not when the beat ended: the
        upkeep may have waited on the database meanwhile, and a beat of
        this worker's hanging now (the database stalled for everyone) means
        every other worker's may hang too.
        """
        o, now = self.hub.options, self.hub.loop.time()
        return (
            self.beats_ok_since is not None
            and now - self.beats_ok_since > o.worker_timeout / 1000
            and now - self.last_beat <= BEAT_GAP * o.worker_beat / 1000
        )

    async def touch(self, now):
        """Write the last-seen time of this beat's share of the peers heard from within LAST_SEEN_INTERVAL.

        Each peer's turn comes once per interval (its share is by a hash of
        its socket's id), so a peer costs one row update per interval, not
        one per beat: at a beat of 2 s every peer's row was rewritten about
        every 2 s, the registry's busiest work with 100 000 peers
        (bench/scale.py).
        """
        hub, o = self.hub, self.hub.options
        shares = max(1, o.last_seen_interval // o.worker_beat)
        self.touches += 1
        turn = self.touches % shares
        heard_since = now - o.last_seen_interval / 1000
        due = [
            c.connection_id for c in hub.local.values()
            if c.last_frame >= heard_since and hash(c.connection_id) % shares == turn
        ]
        if due:
            await hub.db(registry.touch, due)

    async def check_garbage(self):
        self.garbage.check()

    async def refresh_directory(self):
        hub = self.hub
        if hub.transport is None:
            return
        began, now = timezone.now(), hub.loop.time()
        whole = self.reseeded_at is None or now - self.reseeded_at >= DIRECTORY_RESEED
        since = None if whole else self.refreshed_since - CLOCK_SLACK
        if whole:
            hub.directory.begin_reseed()
        after = 0
        while True:
            rows = await hub.db(registry.locations, since, after, DIRECTORY_PAGE)
            hub.directory.update(rows)
            if len(rows) < DIRECTORY_PAGE:
                break
            after = rows[-1][3]
        if whole:
            hub.directory.end_reseed()
            self.reseeded_at = now
        self.refreshed_since = began

    # Expiry and liveness.

    async def expire(self):
        """Drop queued messages past their time; tell each sender once."""
        hub = self.hub
        hub.expire_unknown()
        hub.offline.forget_idle_senders()
        hub.directory.forget_departed()
        # A late answer (signaling.db) still tells the senders: the rows are gone.
        self._expired(await hub.db(registry.take_expired, late=self._expired))

    def _expired(self, pairs):
        for key, src, dst in pairs:
            self.hub.stats["frames_expired"] += 1
            self.hub.tell_expire(key, dst, src)

    async def check_liveness(self):
        """Close sockets silent for alive_timeout, and those whose client does not read."""
        hub, o = self.hub, self.hub.options
        now = hub.loop.time()
        silent = now - o.alive_timeout / 1000
        stuck = now - o.write_timeout / 1000
        for connection in list(hub.connections.values()):
            if connection.last_frame < silent:
                hub.stats["timed_out"] += 1
                hub.spawn(connection.drop(codes.TIMEOUT, "No sign of life within alive_timeout"))
            elif connection.stalled_since() < stuck:
                hub.stats["slow_consumers"] += 1
                hub.spawn(connection.drop(codes.TOO_SLOW, "Too slow: the client does not read"))

    # Drain.

    def _drain_on_sigterm(self):
        """On SIGTERM, close every socket and free this worker's rows, then let the server stop.

        The handler is chained in front of the ASGI server's own (daphne's
        reactor, uvicorn's), which runs once the drain is done.
        """
        if threading.current_thread() is not threading.main_thread():
            return
        previous = signal.getsignal(signal.SIGTERM)
        loop = self.hub.loop

        def on_sigterm(signum, frame):
            signal.signal(signal.SIGTERM, previous)  # a second SIGTERM stops at once
            loop.call_soon_threadsafe(loop.create_task, self._stop_then(previous, signum, frame))

        signal.signal(signal.SIGTERM, on_sigterm)

    async def _stop_then(self, previous, signum, frame):
        try:
            await asyncio.wait_for(self.stop(), timeout=DRAIN_TIMEOUT)
        except Exception:
            logger.exception("worker %s did not drain cleanly", self.hub.name)
        if callable(previous):
            previous(signum, frame)
        else:
            os.kill(os.getpid(), signal.SIGTERM)

    async def stop(self):
        """Close every socket with 1001 and remove this worker's rows at once."""
        hub = self.hub
        hub.stopping = True
        for task in self.tasks:
            task.cancel()
        if self.upkeep is not None:
            self.upkeep.cancel()
        await asyncio.gather(
            *(connection.drop(codes.GOING_AWAY, "Server shutting down") for connection in list(hub.connections.values()))
        )
        try:
            await hub.db(registry.worker_gone, hub.name)
        except DatabaseUnavailable:
            logger.error("worker %s could not remove its rows; they are reaped after the worker timeout", hub.name)
        if hub.transport is not None:
            hub.transport.stop()
        # The webhooks of the peers just drained, before the process goes.
        await asyncio.to_thread(webhooks.shutdown, 5)
        if hub.membership is not None:
            await hub.membership.stop()
        logger.info(
            "worker %s stopped: %d sockets closed, registrations removed; counts %s",
            hub.name, hub.stats["drained"], dict(hub.stats),
        )


_started = weakref.WeakKeyDictionary()  # hub -> the task that started its services


async def running_hub():
    """This worker's hub, its services started on first use (at lifespan start-up, or the first socket under daphne)."""
    hub = get_hub()
    started = _started.get(hub)
    if started is None:
        started = _started[hub] = hub.loop.create_task(Services(hub).start())
    await asyncio.shield(started)
    return hub
