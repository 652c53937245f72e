"""When a worker collects its cyclic garbage.

CPython's cycle collector runs a full collection, one that walks every object
the process tracks, when the objects that outlived the young generations
reach a quarter of the old ones. A worker's heap is mostly its sockets (about
90 tracked objects each under uvicorn), and in a reconnect storm it grows by
thousands of sockets a second: full collections then come one after another,
each stopping the event loop for as long as the walk takes (300 ms at 2 500
sockets on the benchmark's machine), and every peer's frames wait for it.

So a worker

* freezes what it holds once it has started (Django and the modules, about
  100 000 objects, 80 ms of every full collection): no collection walks them
  again (``gc.freeze``);
* puts full collections off while it opens sockets in bulk (``BULK_OPENS``
  in a second), until ``CALM_SECONDS`` have passed without such a second;
  a storm that lasts longer than ``MAX_DEFERRED`` seconds gets one full
  collection then, so that cyclic garbage cannot pile up without bound.

Young collections run as CPython schedules them, storm or not: they walk only
what is new. Out of a storm the thresholds are CPython's own.

Sockets that stay are frozen too. A worker holding 17 000 idle peers tracks
about 900 000 objects, and CPython's thresholds call a full collection over
them every few tens of seconds: 400 ms to 1.2 s each, while every frame of
the worker waits (bench/scale.py: a pair's relay p99 of 1 s among 100 000
idle peers). So once ``FREEZE_AFTER`` sockets have opened since the last
freeze and it is calm, what the worker holds is frozen as well, and full
collections walk only what came since.

A frozen object that dies of reference counting is freed as ever, and a
closed socket is (the consumer, uvicorn's protocol and websockets' parser let
go of each other at the close), all but its asyncio transport, whose read
callback is a method of its own: about 1 KB of cyclic garbage that no
collection reaches while frozen. So once as many sockets have closed since
the freeze as half of those it held (``REFREEZE_SHARE``), or sockets left in
bulk, the worker thaws, collects everything once and freezes again: one long
collection per half of its peers gone, instead of one every few tens of
seconds.

A closed socket is cyclic garbage (uvicorn's protocol and its websockets
connection, whose parser is a generator that refers back to it; the consumer
and the protocol refer to each other). Once thousands have closed, CPython's
thresholds may not call for a full collection for a long while, and their
memory stays taken (10 000 closed: 170 MB, measured with bench/perpeer.py). So
once the worker's sockets have fallen by ``BULK_OPENS`` or more in a second,
and ``CALM_SECONDS`` have passed since, it runs one full collection: its walk
is over what the worker still holds, and that is then fewer sockets.
"""
import gc

BULK_OPENS = 50  # sockets opened in one second that make a storm
CALM_SECONDS = 5
MAX_DEFERRED = 60
FREEZE_AFTER = 1000  # sockets opened since the last freeze that are worth freezing
REFREEZE_SHARE = 2  # thaw and collect once closes since the freeze reach 1/2 of the sockets frozen
NEVER = 1 << 30  # as an oldest-generation threshold: no automatic full collection


class Collector:
    """A worker's collection policy; :meth:`check` runs every second (signaling.services)."""

    def __init__(self, hub):
        self.hub = hub
        self.thresholds = gc.get_threshold()
        self.opened = hub.stats["sockets_opened:open"]
        self.deferred_since = None  # when full collections were put off
        self.last_bulk = None  # the last second in which sockets opened in bulk
        self.held = len(hub.connections)
        self.left_at = None  # the last second in which sockets closed in bulk, until collected
        self._frozen_now()  # settle() freezes what the worker holds at start

    def settle(self):
        """The worker has started: what it holds now is held for good."""
        gc.collect()
        gc.freeze()

    def refreeze(self):
        """Collect everything, then freeze what is left: no collection walks it again until the next refreeze."""
        gc.unfreeze()
        gc.collect()
        gc.freeze()
        self._frozen_now()

    def _frozen_now(self):
        """Sockets opened, closed and held as of the last full freeze."""
        self.frozen_opened = self.opened
        self.frozen_closed = self.opened - self.held
        self.frozen_held = self.held

    def check(self):
        now = self.hub.loop.time()
        opened = self.hub.stats["sockets_opened:open"]
        if opened - self.opened >= BULK_OPENS:
            self.last_bulk = now
        self.opened = opened
        held = len(self.hub.connections)
        if self.held - held >= BULK_OPENS:
            self.left_at = now
        self.held = held
        storm = self.last_bulk is not None and now - self.last_bulk < CALM_SECONDS
        if not storm:
            if self.deferred_since is not None:
                self.deferred_since = None
                gc.set_threshold(*self.thresholds)  # the next young collection decides, as ever
            closed = opened - held
            if self.left_at is not None:
                if now - self.left_at >= CALM_SECONDS:
                    self.left_at = None
                    self.refreeze()  # the sockets that left give their memory back
            elif closed - self.frozen_closed >= max(BULK_OPENS, self.frozen_held // REFREEZE_SHARE):
                self.refreeze()  # what the frozen sockets that closed left behind
            elif opened - self.frozen_opened >= FREEZE_AFTER and (
                self.last_bulk is None or now - self.last_bulk >= CALM_SECONDS
            ):
                gc.freeze()  # the sockets that came since: held for good, as far as collections go
                self.frozen_opened = opened
                self.frozen_held = held
            return
        if self.deferred_since is None:
            self.deferred_since = now
            gc.set_threshold(*self.thresholds[:2], NEVER)
        elif now - self.deferred_since >= MAX_DEFERRED:
            gc.collect()
            self.deferred_since = now
