"""signaling.garbage: a worker's full collections, put off in a storm (issue 8)."""
import collections
import gc
import weakref

import pytest

from signaling import garbage

pytestmark = pytest.mark.fast  # the first tier: no server (tests/test_consumer.py)


class Hub:
    def __init__(self):
        self.stats = collections.Counter()
        self.connections = {}
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


class Cyclic:
    pass


def cyclic_garbage():
    """A weak reference to an object only the cyclic collector can free (as a closed socket's transport)."""
    thing = Cyclic()
    thing.me = thing
    return weakref.ref(thing)


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

    collector = garbage.Collector(hub)
    seconds(hub, collector, 1, garbage.BULK_OPENS)
    cycle = cyclic_garbage()
    seconds(hub, collector, garbage.MAX_DEFERRED - 1, garbage.BULK_OPENS)
    assert cycle() is not None  # put off
    seconds(hub, collector, 1, garbage.BULK_OPENS)
    assert cycle() is None  # collected: garbage does not pile up for the storm's length
    assert gc.get_threshold()[2] == garbage.NEVER  # and the storm goes on without


def test_sockets_that_left_in_bulk_give_their_memory_back_once_it_is_calm(hub):
    gc.disable()  # only the collector's own collection may free what follows

    hub.connections = dict.fromkeys(range(garbage.BULK_OPENS * 3))
    collector = garbage.Collector(hub)
    few = cyclic_garbage()
    hub.connections = dict.fromkeys(range(garbage.BULK_OPENS * 2 + 1))  # a few left: nothing to do
    seconds(hub, collector, garbage.CALM_SECONDS + 1, 0)
    assert few() is not None
    hub.connections = {}
    left = cyclic_garbage()
    seconds(hub, collector, garbage.CALM_SECONDS, 0)
    assert left() is not None  # not calm for long enough yet
    seconds(hub, collector, 1, 0)
    assert left() is None


def test_sockets_that_stay_are_frozen_out_of_full_collections_once_it_is_calm(hub):
    collector = garbage.Collector(hub)
    frozen = gc.get_freeze_count()
    # Opens at a pace below a storm's: frozen once FREEZE_AFTER have come.
    per_second = garbage.BULK_OPENS - 1
    opened = 0
    while opened + per_second < garbage.FREEZE_AFTER:
        hub.connections.update(dict.fromkeys(range(opened, opened + per_second)))
        seconds(hub, collector, 1, per_second)
        opened += per_second
    assert gc.get_freeze_count() == frozen
    hub.connections.update(dict.fromkeys(range(opened, opened + per_second)))
    keep = [[] for _ in range(100)]  # what the new sockets hold, tracked by the collector
    seconds(hub, collector, 1, per_second)
    assert gc.get_freeze_count() >= frozen + len(keep)


def test_frozen_sockets_that_close_one_by_one_are_collected_once_half_of_them_have_gone(hub):
    gc.disable()  # only the collector's own collections may free what follows

    collector = garbage.Collector(hub)
    held = garbage.FREEZE_AFTER + 200
    hub.connections = dict.fromkeys(range(held))
    left = cyclic_garbage()
    seconds(hub, collector, 1, held)  # a storm of opens
    seconds(hub, collector, garbage.CALM_SECONDS, 0)  # then calm: frozen, the garbage with them
    assert gc.get_freeze_count() > 0 and left() is not None
    # Closes one second after another, never in bulk: the garbage stays frozen ...
    while len(hub.connections) > held - held // garbage.REFREEZE_SHARE + 1:
        hub.connections.popitem()
        seconds(hub, collector, 1, 0)
    assert left() is not None
    hub.connections.popitem()  # ... until half the frozen sockets have closed
    seconds(hub, collector, 1, 0)
    assert left() is None
