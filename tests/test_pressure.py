"""Under pressure, over real sockets on production workers (uvicorn): outcomes only.

How long any of it takes is measured by the benchmark (bench/), not here.
"""
import asyncio
import os

import pytest

from tests.client import connect, roundtrip, uid
from tests.conftest import TEST_ENV
from tests.servers import Database, Worker, wait_until

LIMIT_MSG = "Server has reached its concurrent user limit"


@pytest.mark.db
@pytest.mark.postgres
async def test_a_burst_to_an_offline_peer_is_answered_from_memory_while_others_open(make_server):
    """5 000 CANDIDATEs for an id nobody holds, from one socket, while other sockets open beside it.

    The sender's cap is kept in memory and what fits is queued in batches,
    so the burst neither costs the database a trip per frame nor holds the
    registry's threads: every other socket opens. The burster hears EXPIRE.
    """
    worker = make_server({"PEERJS_FLOOD_LIMIT": "0"}, server="uvicorn")
    burster, nobody = await connect(worker), uid()

    async def burst():
        for n in range(5000):
            await burster.relay("CANDIDATE", nobody, {"candidate": f"candidate:{n} 1 udp 2122260223 10.0.0.1 {n} typ host"})

    bursting = asyncio.create_task(burst())
    others = await asyncio.gather(*(connect(worker) for _ in range(40)))
    await bursting
    assert len(others) == 40
    await roundtrip(others[0], others[-1])
    # What the burster hears before a marker sent after the burst: EXPIREs about nobody, and nothing else.
    await others[1].relay("CANDIDATE", burster.peer_id, "marker")
    heard = []
    while (frame := await burster.recv())["type"] == "EXPIRE":
        heard.append(frame)
    assert frame["payload"] == "marker"
    assert heard and all(f == {"type": "EXPIRE", "src": nobody, "dst": burster.peer_id} for f in heard)
    await roundtrip(burster, others[2])  # and its socket is still open


@pytest.mark.cluster
@pytest.mark.postgres
async def test_the_concurrent_limit_is_exact_when_sockets_race_across_workers(redis_server):
    """Sockets racing for the last places on three workers: exactly the limit open, the rest are told why."""
    limit, racers = 10, 36
    database = Database()
    env = {**TEST_ENV, "REDIS_URL": redis_server.url, "PEERJS_CONCURRENT_LIMIT": str(limit)}
    workers = []
    try:
        for n in range(3):
            workers.append(Worker(database, env, server="uvicorn", name=f"w{n}"))
        count = lambda: database.query("SELECT COUNT(*) FROM signaling_peer")[0][0]  # noqa: E731
        for _round in range(3):
            clients = await asyncio.gather(
                *(connect(workers[n % len(workers)], expect_open=False) for n in range(racers))
            )
            firsts = await asyncio.gather(*(client.recv() for client in clients))
            opened = [client for client, frame in zip(clients, firsts) if frame["type"] == "OPEN"]
            refused = [frame for frame in firsts if frame["type"] != "OPEN"]
            assert len(opened) == limit
            assert refused == [{"type": "ERROR", "payload": {"msg": LIMIT_MSG}}] * (racers - limit)
            assert count() == limit
            await roundtrip(opened[0], opened[-1])
            for client in clients:
                await client.close()
            wait_until(lambda: count() == 0, 20, "every row to be released")
    finally:
        for worker in workers:
            worker.stop()
        database.drop()
