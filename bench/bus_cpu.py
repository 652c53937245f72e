"""CPU per message through the bus's batching layer alone: send_nowait, Redis, on_messages, acknowledgement.

One process holds a sender and a receiver on a private redis-server; 200 000
messages of a relayed frame's size, 16 per event-loop turn, three runs.

    .venv/bin/python bench/bus_cpu.py
"""
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from signaling.bus.layer import RedisBatchLayer  # noqa: E402
from tests.servers import RedisServer  # noqa: E402

async def main(url, total=200_000, per_turn=16):
    sender, receiver = RedisBatchLayer(url=url), RedisBatchLayer(url=url)
    got, done = 0, asyncio.Event()

    def take(batch):
        nonlocal got
        got += len(batch)
        if got >= total:
            done.set()

    await receiver.listen("inbox", on_messages=take)
    await sender.listen("sender")
    message = {"type": "peerjs.relay", "key": "peerjs", "src": "a" * 12, "dst": "b" * 12, "kind": "CANDIDATE",
               "frame": "x" * 300, "hops": 1}
    cpu, wall = time.process_time(), time.perf_counter()
    sent = 0
    while sent < total:
        for _ in range(per_turn):
            sender.send_nowait("inbox", message)
            sent += 1
        await asyncio.sleep(0)
        while sender.in_flight() > 2000:  # within the inbox's capacity
            await asyncio.sleep(0.001)
    await done.wait()
    await sender.settled("inbox")
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    print(f"{total/wall:9.0f} msgs/s, {cpu/total*1e6:5.2f} µs CPU/msg (sender+receiver in one process)")
    await sender.close()
    await receiver.close()


if __name__ == "__main__":
    redis = RedisServer()
    try:
        for _ in range(3):
            asyncio.run(main(redis.url))
    finally:
        redis.stop()
