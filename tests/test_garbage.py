"""signaling.garbage: a worker's full collections, put off in a storm (issue 8)."""
import collections
import gc
import weakref

import pytest

from signaling import garbage


class Hub:
    def __init__(self):
        self.stats = collections.Counter()
        self.now = 1000.0
        self.loop = self

    def time(self):
        return self.now


@pytest.fixture
def hub():
    thresholds, enabled = gc.get_threshold(), gc.isenabled()
    yield Hub()
    gc.set_threshold(*thresholds)
    gc.unfreeze()
    (gc.enable if enabled else gc.disable)()


def seconds(hub, collector, count, opens_per_second):
    for _ in range(count):
        hub.now += 1
        hub.stats["sockets_opened:open"] += opens_per_second
        collector.check()


def test_what_a_started_worker_holds_is_frozen_out_of_every_later_collection(hub):
    garbage.Collector(hub).settle()
    assert gc.get_freeze_count() > 0


def test_a_storm_puts_full_collections_off_until_it_has_been_calm_for_a_while(hub):
    collector = garbage.Collector(hub)
    young = gc.get_threshold()[:2]
    seconds(hub, collector, 3, garbage.BULK_OPENS - 1)  # busy, not a storm
    assert gc.get_threshold()[2] != garbage.NEVER
    seconds(hub, collector, 1, garbage.BULK_OPENS)
    assert gc.get_threshold() == (*young, garbage.NEVER)  # young collections as ever
    seconds(hub, collector, garbage.CALM_SECONDS - 1, 0)
    assert gc.get_threshold()[2] == garbage.NEVER  # not calm for long enough yet
    seconds(hub, collector, 1, 0)
    assert gc.get_threshold() == collector.thresholds  # CPython's own again


def test_a_storm_that_goes_on_gets_a_full_collection_now_and_then(hub):
    gc.disable()  # only the collector's own collection may free what follows

    class Cycle:
        pass

    def garbage_cycle():
        cycle = Cycle()
        cycle.me = cycle
        return weakref.ref(cycle)

    collector = garbage.Collector(hub)
    seconds(hub, collector, 1, garbage.BULK_OPENS)
    cycle = garbage_cycle()
    seconds(hub, collector, garbage.MAX_DEFERRED - 1, garbage.BULK_OPENS)
    assert cycle() is not None  # put off
    seconds(hub, collector, 1, garbage.BULK_OPENS)
    assert cycle() is None  # collected: garbage does not pile up for the storm's length
    assert gc.get_threshold()[2] == garbage.NEVER  # and the storm goes on without
