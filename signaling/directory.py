"""Where the cluster's other peers are, and what this worker tells the others of its own.

Each worker announces the peers it takes and lets go, batched at the end of
the event loop's iteration, to every other live worker's inbox; each keeps
what it hears in a dict, so the first frame of a new pair across workers
goes straight to the right worker without a database query. The registry
re-seeds the dict now and then (signaling.services), in case an
announcement was lost. A stale entry costs a hop, never a frame: the worker
it names delivers, queues, or sends the frame on.

A peer that moves (its worker died, or it reconnected elsewhere) may still
have frames on their way to its old worker. Frames for it that come next
wait (:attr:`Directory.moving`) until the old worker's inbox is settled, so
that none overtakes them; what the old worker never got comes back to the
front of that line.
"""
import asyncio
import contextlib

DEPARTED_KEPT = 60.0  # seconds a dead worker's last routes are remembered, past any acknowledgement timeout
ANNOUNCE_WAIT = 0.5  # seconds a new peer waits for its announcement to reach Redis


class Directory:
    def __init__(self, hub):
        self.hub = hub
        self.routes = {}  # (key, id) -> the other worker that holds it
        self.moving = {}  # (key, id) -> Held: frames for a peer that moved, until its old route settles
        self._moved_from = {}  # old worker -> the peers in moving whose wait for it has not begun
        self.departed = {}  # (key, id) -> (worker whose inbox was gone, loop time): its last route
        self.workers = set()  # the other live workers
        self._announcements = {}  # (key, id) -> "here" or "gone", sent at the end of the loop iteration
        self._reseen = None  # during a re-seed: the peers placed since it began

    def worker_of(self, peer):
        """The other worker that holds ``peer``, as far as this one knows, or None."""
        return self.routes.get(peer)

    # What this worker tells the others.

    def arrived(self, peer):
        """A peer this worker now holds: no route elsewhere, and the others hear of it."""
        self.routes.pop(peer, None)
        self._announce(peer, "here")

    def left(self, peer):
        """A peer this worker let go: the others hear of it."""
        self._announce(peer, "gone")

    def _announce(self, peer, what):
        """Batched: the announcements go out at the end of this iteration of the event loop."""
        if self.hub.transport is None:
            return
        if not self._announcements:
            self.hub.loop.call_soon(self._send_announcements)
        self._announcements[peer] = what

    async def announced(self):
        """Return once the other workers can know where this worker's new peers are.

        Before a new peer hears OPEN: whoever it tells its id to next may send
        it a frame at once, and that frame then finds its worker here instead
        of taking the registry's slower way.
        """
        transport = self.hub.transport
        if transport is None:
            return
        if self._announcements:
            self._send_announcements()
        # Bounded: with Redis slow or away the peer opens anyway (inside the
        # opening slots, a long wait would hold up every other open), and a
        # frame for it takes the registry's way meanwhile.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(ANNOUNCE_WAIT):  # no task per open, unlike wait_for
                await transport.flushed()

    def _send_announcements(self):
        announcements, self._announcements = self._announcements, {}
        here = [list(peer) for peer, what in announcements.items() if what == "here"]
        gone = [list(peer) for peer, what in announcements.items() if what == "gone"]
        self._tell(self.workers, here, gone)

    def _tell(self, workers, here, gone):
        message = {"type": "peerjs.directory", "worker": self.hub.name, "here": here, "gone": gone}
        for worker in workers:
            self.hub.transport.send(worker, message)

    def meet(self, live):
        """The other workers alive now (from the registry): greet the new ones, forget the rest."""
        self.introduce(live - self.workers)
        self.workers = live

    def introduce(self, workers):
        """Tell ``workers``, new to this one, every peer it holds.

        What this worker announced before it knew of them never reached
        them, and without the database (the registry's re-seeding) they
        would not learn it: an empty list says hello, and their answer
        brings theirs.
        """
        if self.hub.transport is not None and workers:
            self._tell(workers, [list(peer) for peer in self.hub.local], [])

    # What the others tell this worker.

    def learn(self, worker, here, gone):
        """Another worker's announcement: peers it now holds, peers it let go."""
        if worker not in self.workers:
            self.workers.add(worker)
            self.introduce([worker])
        for key, peer_id in here:
            peer = (key, peer_id)
            if peer not in self.hub.local:
                self._moves(peer, self.routes.get(peer), worker)
                self.routes[peer] = worker
                if self._reseen is not None:
                    self._reseen.add(peer)
        for key, peer_id in gone:
            # Only if it still says so: the peer may have moved on meanwhile.
            if self.routes.get((key, peer_id)) == worker:
                del self.routes[key, peer_id]

    def reseed(self, rows):
        """Replace what this worker knows with the registry's ``(key, id, worker)`` rows: all of them."""
        self.begin_reseed()
        self.update(rows)
        self.end_reseed()

    def begin_reseed(self):
        """A re-seed comes, in pages (:meth:`update`): what it does not place by :meth:`end_reseed` is forgotten.

        Pages, because the whole registry at once (100 000 rows) held the
        event loop for 300 ms (bench/scale.py). What announcements tell
        meanwhile counts as placed.
        """
        self._reseen = set()

    def end_reseed(self):
        seen, self._reseen = self._reseen, None
        routes = self.routes
        for peer in [peer for peer in routes if peer not in seen]:
            del routes[peer]

    def update(self, rows):
        """Place the registry's ``(key, id, worker, ...)`` rows (a re-seed's page, or recent arrivals).

        A peer the registry places elsewhere than this worker thought has
        moved, as in :meth:`learn` (the registry may tell it first). Out of
        a re-seed nothing is forgotten: what the others let go stays until
        their announcement or the next re-seed (a stale route costs a hop,
        never a frame).

        A row of a worker not alive (its worker died and the row awaits
        reaping, or a new worker this one has not met yet) places nothing:
        frames for that peer go to the queue, where the peer finds them
        when it comes back, or which its worker is asked to drain. A route
        there would hand them to an inbox nobody reads, and with the
        in-memory layer of a single worker nothing says so: they were lost,
        with no EXPIRE for their sender.
        """
        local, here, routes, seen, live = self.hub.local, self.hub.name, self.routes, self._reseen, self.workers
        for row in rows:
            peer, worker = (row[0], row[1]), row[2]
            if worker != here and peer not in local and worker in live:
                previous = routes.get(peer)
                routes[peer] = worker
                if previous != worker:
                    self._moves(peer, previous, worker)
                if seen is not None:
                    seen.add(peer)

    def _moves(self, peer, previous, worker):
        """``peer`` is on ``worker`` now; ``previous`` is where this worker last sent its frames (or None)."""
        if previous is None:
            previous, _ = self.departed.pop(peer, (None, None))
        if previous not in (None, worker) and peer not in self.moving:
            # It moved (its old worker died or let it go) while frames for
            # it may still be on their way there: what comes next waits
            # until those are settled, so that none overtakes them. One wait
            # per old worker: when one dies, its thousands of peers move at
            # once, and a task each held the event loop for 20 ms when its
            # inbox settled (bench/run.py's storm, profiled).
            self.moving[peer] = Held()
            peers = self._moved_from.get(previous)
            if peers is None:
                peers = self._moved_from[previous] = []
                self.hub.spawn(self._moved(previous))
            peers.append(peer)

    def forget_workers(self, dead):
        """Workers the registry reaped: their peers are nobody's now."""
        self.routes = {peer: worker for peer, worker in self.routes.items() if worker not in dead}

    def inbox_gone(self, peer, worker):
        """Nobody reads ``worker``'s inbox any more: forget its route to ``peer``.

        Other frames may still be on their way there: if the peer turns up
        elsewhere, those go first (see :meth:`learn`).
        """
        if self.routes.get(peer) == worker:
            del self.routes[peer]
            self.departed[peer] = (worker, self.hub.loop.time())

    def forget_departed(self):
        """Drop old routes nothing can be on its way to any more (called by the expiry sweep)."""
        cutoff = self.hub.loop.time() - DEPARTED_KEPT
        for peer in [peer for peer, (_worker, since) in self.departed.items() if since < cutoff]:
            del self.departed[peer]

    async def _moved(self, previous):
        # The peers that moved before this wait begins: what was sent to
        # them at ``previous`` was sent before it. Those that move later
        # wait on a turn of their own.
        peers = self._moved_from.pop(previous)
        try:
            await self.hub.transport.settled(previous)
        finally:
            for peer in peers:
                held = self.moving.pop(peer)
                for src, kind, frame, hops in held.frames:
                    self.hub.route(peer[0], src, peer[1], kind, frame, hops)


class Held:
    """Frames for a peer that moved, held until what was sent to its old worker is settled."""

    def __init__(self):
        self.frames = []  # (src, kind, frame, hops), in the order they are to go
        self.returned = 0  # frames handed back by the old worker's inbox, at the front

    def hold(self, src, kind, frame, hops):
        self.frames.append((src, kind, frame, hops))

    def put_back(self, src, kind, frame, hops):
        """A frame the old worker never got: older than anything held since."""
        self.frames.insert(self.returned, (src, kind, frame, hops))
        self.returned += 1
