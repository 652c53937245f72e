"""signaling.directory on its own: a peer that moved, learnt from an announcement or from the registry."""
import asyncio

from signaling.directory import Directory


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
    directory.routes[("k", "b")] = "dead"
    directory.inbox_gone(("k", "b"), "dead")
    directory.reseed([("k", "b", "new")])
    assert ("k", "b") in directory.moving
    await settle(hub, directory, "dead")


async def test_the_registry_confirming_what_an_announcement_said_holds_nothing_back():
    hub = Hub()
    directory = Directory(hub)
    directory.learn("new", [("k", "b")], [])
    directory.reseed([("k", "b", "new"), ("k", "mine", "here")])
    assert directory.routes == {("k", "b"): "new"} and not directory.moving
