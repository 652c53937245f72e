"""signaling.db alone: how a database outage is noticed and logged."""
import pytest

pytestmark = pytest.mark.fast  # the first tier: no server (tests/test_consumer.py)


def test_a_database_that_comes_and_goes_is_logged_once_per_interval(caplog):
    """A worker out of file descriptors cannot open SQLite's file, then can: two lines per flap would flood the log."""
    from django.db import OperationalError

    from signaling.db import Outage

    outage = Outage()
    with caplog.at_level("WARNING", logger="signaling.db"):
        for _ in range(50):
            outage.failed(OperationalError("unable to open database file"))
            outage.succeeded()
    assert [r.getMessage().split(" (")[0] for r in caplog.records] == ["database unreachable", "database reachable again after 0.0 s; 1 calls failed meanwhile"]
    assert outage.count == 50  # every outage still counted (and each makes threads reconnect)
    outage.quiet_until = 0  # the interval has passed: the next outage is logged with those held back
    outage.failed(OperationalError("unable to open database file"))
    assert "(49 more outages since the last such line)" in caplog.records[-1].getMessage()
