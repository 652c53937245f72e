"""signaling.directory on its own: a peer that moved, learnt from an announcement or from the registry."""
import asyncio

import pytest

from signaling.directory import Directory

pytestmark = pytest.mark.fast  # the first tier: no server (tests/test_consumer.py)


class Hub:
    """What the directory uses of a hub: its peers, its tasks, the transport's settling, and routing."""

    name = "here"

    def __init__(self):
        self.local = {}
        self.loop = asyncio.get_running_loop()
        self.transport = self
        self.settling = {}  # worker -> Event set when what was sent to it is settled
        self.routed = []

    def send(self, worker, message):
        pass  # learning of a new worker greets it; nothing to check here

    def spawn(self, coroutine):
        return self.loop.create_task(coroutine)

    async def settled(self, worker):
        await self.settling.setdefault(worker, asyncio.Event()).wait()

    def route(self, key, src, dst, kind, frame, hops=0):
        self.routed.append(frame)


async def settle(hub, directory, worker):
    hub.settling.setdefault(worker, asyncio.Event()).set()
    while directory.moving:
        await asyncio.sleep(0)


async def test_a_peer_the_registry_places_on_another_worker_waits_for_its_old_worker_to_settle():
    hub = Hub()
    directory = Directory(hub)
    directory.meet({"w1", "w2", "new"})
    directory.routes[("k", "b")] = "dead"
    directory.reseed([("k", "b", "new"), ("k", "c", "new")])
    assert directory.routes == {("k", "b"): "new", ("k", "c"): "new"}
    # b moved: what comes for it now waits behind what may still come back from "dead".
    assert list(directory.moving) == [("k", "b")]
    directory.moving["k", "b"].hold("a", "CANDIDATE", "104", 0)
    directory.moving["k", "b"].put_back("a", "CANDIDATE", "103", 0)
    await settle(hub, directory, "dead")
    assert hub.routed == ["103", "104"]


async def test_a_peer_whose_old_inbox_was_gone_moves_too_when_the_registry_says_where_it_is():
    hub = Hub()
    directory = Directory(hub)
    directory.meet({"w1", "w2", "new"})
    directory.routes[("k", "b")] = "dead"
    directory.inbox_gone(("k", "b"), "dead")
    directory.reseed([("k", "b", "new")])
    assert ("k", "b") in directory.moving
    await settle(hub, directory, "dead")


async def test_the_registry_confirming_what_an_announcement_said_holds_nothing_back():
    hub = Hub()
    directory = Directory(hub)
    directory.meet({"w1", "w2", "new"})
    directory.learn("new", [("k", "b")], [])
    directory.reseed([("k", "b", "new"), ("k", "mine", "here")])
    assert directory.routes == {("k", "b"): "new"} and not directory.moving


async def test_an_update_adds_the_lately_registered_peers_and_forgets_nothing():
    hub = Hub()
    directory = Directory(hub)
    directory.meet({"w1", "w2", "new"})
    directory.learn("w1", [("k", "a"), ("k", "b")], [])
    directory.update([("k", "c", "w2"), ("k", "mine", "here")])
    assert directory.routes == {("k", "a"): "w1", ("k", "b"): "w1", ("k", "c"): "w2"}
    directory.update([("k", "b", "w2")])  # b moved: it waits as with an announcement
    assert directory.routes[("k", "b")] == "w2" and list(directory.moving) == [("k", "b")]
    await settle(hub, directory, "w1")
    directory.reseed([("k", "c", "w2")])  # a whole re-read forgets the rest
    assert directory.routes == {("k", "c"): "w2"}


async def test_a_reseed_in_pages_keeps_what_announcements_told_meanwhile_and_forgets_the_rest():
    hub = Hub()
    directory = Directory(hub)
    directory.meet({"w1", "w2", "new"})
    directory.learn("w1", [("k", "stale"), ("k", "a")], [])
    directory.begin_reseed()
    directory.update([("k", "a", "w1", 1)])
    directory.learn("w2", [("k", "new")], [])  # arrived while the pages were read
    directory.update([("k", "b", "w2", 2)])
    directory.end_reseed()
    assert directory.routes == {("k", "a"): "w1", ("k", "b"): "w2", ("k", "new"): "w2"}


async def test_the_registry_places_no_peer_on_a_worker_that_is_not_alive():
    # A row left by a worker that died (awaiting reaping): a route there
    # would hand frames to an inbox nobody reads.
    hub = Hub()
    directory = Directory(hub)
    directory.meet({"w1"})
    directory.reseed([("k", "a", "w1"), ("k", "ghost", "crashed")])
    assert directory.routes == {("k", "a"): "w1"}
    directory.learn("crashed-and-back", [("k", "b")], [])  # an announcement says the worker lives
    directory.update([("k", "c", "crashed-and-back")])
    assert directory.worker_of(("k", "c")) == "crashed-and-back"


async def test_the_peers_of_a_worker_that_died_wait_for_its_inbox_together():
    # A worker dies and its peers move at once: one wait for its inbox, not
    # a task each. A peer that moves once that wait has begun may have had
    # frames sent there since: it waits on a turn of its own.
    hub = Hub()
    waits = []
    settled = hub.settled

    async def counting(worker):
        waits.append(worker)
        await settled(worker)

    hub.settled = counting
    directory = Directory(hub)
    directory.meet({"dead", "new"})
    directory.learn("dead", [("k", n) for n in "abcd"], [])
    directory.learn("new", [("k", n) for n in "abc"], [])
    await asyncio.sleep(0)
    assert waits == ["dead"] and len(directory.moving) == 3
    directory.moving["k", "a"].hold("x", "CANDIDATE", "a1", 0)
    directory.learn("new", [("k", "d")], [])
    await asyncio.sleep(0)
    assert waits == ["dead", "dead"]
    await settle(hub, directory, "dead")
    assert hub.routed == ["a1"] and directory.routes == {("k", n): "new" for n in "abcd"}
