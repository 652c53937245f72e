"""The registry's last-seen times are written once per LAST_SEEN_INTERVAL per peer, not at every beat.

At a beat of 2 s every heard-from peer's row was rewritten every 2 s: with
100 000 peers, 50 000 row updates a second, the registry's busiest work
(bench/scale.py). Each peer now has its turn once per interval.
"""
import types

import pytest

from signaling.services import Services

pytestmark = pytest.mark.fast


class Hub:
    def __init__(self, peers, beat_ms=2000, interval_ms=60000):
        self.options = types.SimpleNamespace(worker_beat=beat_ms, last_seen_interval=interval_ms)
        self.local = {("peerjs", f"p{n}"): types.SimpleNamespace(connection_id=f"c{n:05d}x", last_frame=0.0) for n in range(peers)}
        self.written = []

    async def db(self, function, connection_ids):
        assert function.__name__ == "touch"
        self.written.append(list(connection_ids))


def services(hub):
    s = Services.__new__(Services)  # the beat's touch alone, without the worker's other jobs
    s.hub, s.touches = hub, 0
    return s


async def test_each_heard_peer_is_written_once_per_interval_and_a_silent_one_not_at_all():
    hub = Hub(3000)
    silent = hub.local["peerjs", "p7"]
    silent.last_frame = -1000.0  # heard from long before the interval
    s = services(hub)
    for beat in range(30):  # one interval: 60 s of beats every 2 s
        for connection in hub.local.values():
            if connection is not silent:
                connection.last_frame = beat * 2.0  # a heartbeat every beat
        await s.touch(now=beat * 2.0)
    written = [c for batch in hub.written for c in batch]
    assert sorted(written) == sorted(c.connection_id for c in hub.local.values() if c is not silent)
    # Spread over the beats, not all at once: no beat writes more than a few times its share.
    assert max(len(batch) for batch in hub.written) < 3 * 3000 / 30


async def test_an_interval_as_short_as_the_beat_writes_every_heard_peer_at_every_beat():
    hub = Hub(50, beat_ms=2000, interval_ms=2000)
    s = services(hub)
    await s.touch(now=1.0)
    assert len(hub.written) == 1 and len(hub.written[0]) == 50
