"""Takeovers: a socket with a connected peer's id and token takes the id over, unless the app keeps ids on their address.

Real uvicorn workers behind a proxy (the test: PEERJS_PROXIED, each client
named by X-Forwarded-For), one alone and two sharing a database and a
private redis-server; the peer list's address, the logs and /metrics are
read as an operator reads them.
"""
import re

import pytest

from tests.admin_http import AdminSession, Apps, create_superuser
from tests.client import connect, roundtrip, uid
from tests.conftest import TEST_ENV
from tests.servers import Worker
from tests.test_cluster import Cluster

pytestmark = pytest.mark.db

REPLACED = 4100
VICTIM, ATTACKER = "203.0.113.10", "198.51.100.66"


def xff(address):
    return {"X-Forwarded-For": address}


async def open_as(worker, address, peer_id=None, token=None, key="peerjs"):
    """A socket from ``address``; the client, and its first frame (OPEN, ID-TAKEN, ERROR)."""
    client = await connect(worker, peer_id, token, key=key, expect_open=False, additional_headers=xff(address))
    return client, await client.recv()


def takeovers(worker, outcome):
    status, _, body = worker.get("/metrics")
    assert status == 200
    return float(re.search(rf'^peerjs_takeovers_total{{outcome="{outcome}"}} (\S+)$', body, re.M).group(1))


@pytest.fixture(scope="module")
def lenient():
    """The default rule: whoever has the id's token takes it over."""
    worker = Worker(env={**TEST_ENV, "PEERJS_PROXIED": "1"}, server="uvicorn", name="lenient")
    yield worker
    worker.stop()


@pytest.fixture(scope="module")
def strict():
    """The default app keeps ids on their address (PEERJS_TAKEOVER_SAME_ADDRESS)."""
    env = {**TEST_ENV, "PEERJS_PROXIED": "1", "PEERJS_TAKEOVER_SAME_ADDRESS": "1"}
    worker = Worker(env=env, server="uvicorn", name="strict")
    yield worker
    worker.stop()


async def test_by_default_the_token_takes_the_id_over_from_anywhere_and_the_log_says_from_where(lenient):
    before = takeovers(lenient, "replaced")
    victim, first = await open_as(lenient, VICTIM)
    assert first["type"] == "OPEN"
    thief, first = await open_as(lenient, ATTACKER, victim.peer_id, victim.token)
    assert first["type"] == "OPEN"
    assert (await victim.closed())[0] == REPLACED
    assert takeovers(lenient, "replaced") == before + 1
    line = next(line for line in lenient.read_log().splitlines() if f"takeover: {victim.peer_id} " in line)
    assert ATTACKER in line and VICTIM in line
    await thief.close()


async def test_an_app_that_keeps_ids_on_their_address_answers_a_replayed_token_id_taken(strict):
    refused_before, replaced_before = takeovers(strict, "refused"), takeovers(strict, "replaced")
    victim, _ = await open_as(strict, VICTIM)
    partner, _ = await open_as(strict, "192.0.2.77")
    thief, first = await open_as(strict, ATTACKER, victim.peer_id, victim.token)
    assert first == {"type": "ID-TAKEN", "payload": {"msg": "ID is taken"}}
    assert (await thief.closed())[0] == 1008
    await roundtrip(victim, partner)  # the victim never noticed
    await roundtrip(partner, victim)
    assert takeovers(strict, "refused") == refused_before + 1
    line = next(line for line in strict.read_log().splitlines() if f"takeover refused: {victim.peer_id} " in line)
    assert ATTACKER in line and VICTIM in line

    # The peer itself, reconnecting from its own address, still takes over...
    again, first = await open_as(strict, VICTIM, victim.peer_id, victim.token)
    assert first["type"] == "OPEN"
    assert (await victim.closed())[0] == REPLACED
    assert takeovers(strict, "replaced") == replaced_before + 1
    # ... and an IPv6 peer from any address of its network (signaling.http.client_group).
    phone, _ = await open_as(strict, "2001:db8:5:1::10")
    moved, first = await open_as(strict, "2001:db8:5:1:aaaa::20", phone.peer_id, phone.token)
    assert first["type"] == "OPEN" and (await phone.closed())[0] == REPLACED
    for client in (again, partner, moved):
        await client.close()


async def test_the_rule_holds_across_workers_and_per_app(redis_server):
    """The holder's address is in the registry row: a worker refuses a takeover of a peer another worker holds."""
    cluster = Cluster(redis_server, server="uvicorn", env={"PEERJS_PROXIED": "1", "PEERJS_APP_CACHE": "0"})
    try:
        w1, w2 = cluster.workers
        operator = AdminSession(w1)
        operator.login(create_superuser(w1, "the-operators-password"), "the-operators-password")
        Apps(operator, cluster.database).add("kept", takeover_same_address=True)
        assert cluster.database.query("SELECT takeover_same_address FROM signaling_app WHERE key = 'kept'") == [(True,)]

        victim, first = await open_as(w1, VICTIM, key="kept")
        assert first["type"] == "OPEN"
        thief, first = await open_as(w2, ATTACKER, victim.peer_id, victim.token, key="kept")
        assert first["type"] == "ID-TAKEN"
        assert f"takeover refused: {victim.peer_id} of app kept asked from {ATTACKER}, held from {VICTIM}" in w2.read_log()
        partner, _ = await open_as(w2, "192.0.2.78", key="kept")
        await roundtrip(partner, victim)

        back, first = await open_as(w2, VICTIM, victim.peer_id, victim.token, key="kept")
        assert first["type"] == "OPEN"
        assert (await victim.closed())[0] == REPLACED  # closed on w1, by w2's claim
        await roundtrip(partner, back)
        # Other apps keep the default rule.
        loose, _ = await open_as(w1, VICTIM)
        taker, first = await open_as(w2, ATTACKER, loose.peer_id, loose.token)
        assert first["type"] == "OPEN" and (await loose.closed())[0] == REPLACED
        for client in (back, partner, taker):
            await client.close()
    finally:
        cluster.stop()


async def test_an_unused_id_is_claimed_from_anywhere(strict):
    peer_id = uid()
    client, first = await open_as(strict, ATTACKER, peer_id)
    assert first["type"] == "OPEN"
    await client.close()
