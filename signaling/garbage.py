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
"""
import gc

BULK_OPENS = 50  # sockets opened in one second that make a storm
CALM_SECONDS = 5
MAX_DEFERRED = 60
NEVER = 1 << 30  # as an oldest-generation threshold: no automatic full collection


class Collector:
    """A worker's collection policy; :meth:`check` runs every second (signaling.services)."""

    def __init__(self, hub):
        self.hub = hub
        self.thresholds = gc.get_threshold()
        self.opened = hub.stats["sockets_opened:open"]
        self.deferred_since = None  # when full collections were put off
        self.last_bulk = None  # the last second in which sockets opened in bulk

    def settle(self):
        """The worker has started: what it holds now is held for good."""
        gc.collect()
        gc.freeze()

    def check(self):
        now = self.hub.loop.time()
        opened = self.hub.stats["sockets_opened:open"]
        if opened - self.opened >= BULK_OPENS:
            self.last_bulk = now
        self.opened = opened
        storm = self.last_bulk is not None and now - self.last_bulk < CALM_SECONDS
        if not storm:
            if self.deferred_since is not None:
                self.deferred_since = None
                gc.set_threshold(*self.thresholds)  # the next young collection decides, as ever
            return
        if self.deferred_since is None:
            self.deferred_since = now
            gc.set_threshold(*self.thresholds[:2], NEVER)
        elif now - self.deferred_since >= MAX_DEFERRED:
            gc.collect()
            self.deferred_since = now
