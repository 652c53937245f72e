"""signaling.servers.uvicorn.HandshakeGate on its own: order, places, and a handshake that fails to start.

The gate inside a real uvicorn worker: tests/test_hostile_clients.py.
"""
import pytest

from signaling.servers.uvicorn import HandshakeGate

pytestmark = pytest.mark.fast  # the first tier: no server (tests/test_consumer.py)


class Transport:
    def __init__(self, name, log):
        self.name, self.log = name, log
        self.paused = self.closed = False

    def pause_reading(self):
        self.paused = True

    def resume_reading(self):
        self.paused = False

    def is_closing(self):
        return self.closed

    def close(self):
        self.closed = True


def test_handshakes_past_the_limit_wait_unread_and_start_in_the_order_they_came():
    started = []
    gate = HandshakeGate(2)
    a, b, c, d = (Transport(name, started) for name in "abcd")
    for t in (a, b, c, d):
        gate.enter(t, lambda t=t: started.append(t.name))
    assert started == ["a", "b"] and c.paused and d.paused
    gate.leave(b)
    assert started == ["a", "b", "c"] and not c.paused and d.paused
    gate.leave(b)  # a second word from the same connection changes nothing
    assert started == ["a", "b", "c"]
    d.close()  # gone while it waited: skipped, its place stays free
    gate.leave(a)
    assert started == ["a", "b", "c"] and gate.busy == {c}


def test_a_handshake_that_fails_to_start_is_closed_and_the_next_one_goes_in():
    started = []
    gate = HandshakeGate(1)
    a, b, c = (Transport(name, started) for name in "abc")
    gate.enter(a, lambda: started.append("a"))

    def broken():
        raise ValueError("a request uvicorn cannot upgrade")

    gate.enter(b, broken)
    gate.enter(c, lambda: started.append("c"))
    gate.leave(a)  # the end of a's handshake must not fail for b's sake
    assert b.closed and started == ["a", "c"] and gate.busy == {c}
