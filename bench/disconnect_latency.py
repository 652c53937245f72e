"""How long an operator's "Disconnect" in the admin takes to close a socket on another worker.

Two uvicorn workers on a private redis-server; a peer on the second, the
admin on the first. Each round: POST the admin action, then wait for the
peer's socket to close. Prints the median and the worst of the POST alone
and of POST-to-close (the operator's view), in milliseconds; then of the
request alone, made from this process as the admin makes it (the message's
way from the asking process to the socket's close).

    .venv/bin/python bench/disconnect_latency.py [ROUNDS]
"""
import asyncio
import os
import re
import statistics
import sys
import time
import urllib.parse
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "p2psite.settings")
os.environ.setdefault("DJANGO_SECRET_KEY", "bench-only-secret-key-" + "x" * 40)

from tests.servers import Database, RedisServer, Worker  # noqa: E402

REDIS = RedisServer()
os.environ["REDIS_URL"] = REDIS.url  # this process asks as the admin does, on the same layers

import django  # noqa: E402

django.setup()

try:
    from signaling.broadcasts import request_disconnect  # Channels groups on the default layer
except ImportError:
    from signaling.hub import request_disconnect  # before: through the bus between workers

import types  # noqa: E402

from tests.admin_http import AdminSession, create_superuser  # noqa: E402
from tests.client import connect  # noqa: E402
from tests.conftest import TEST_ENV  # noqa: E402

LIST = "/admin/signaling/peer/"


async def main(rounds):
    redis = REDIS
    database = Database()
    env = {**TEST_ENV, "REDIS_URL": redis.url}
    workers = [Worker(database, env, server="uvicorn", name=f"w{n}") for n in range(2)]
    try:
        w1, w2 = workers
        admin = AdminSession(w1)
        assert admin.login(create_superuser(w1, "bench-operator-pw"), "bench-operator-pw").status == 200
        posts, closes = [], []
        for _ in range(rounds):
            peer = await connect(w2)
            row = database.peer_row(peer.peer_id)
            page = admin.get(LIST)  # the form's CSRF token, outside the timing
            token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.body).group(1)
            fields = {"action": "disconnect", "_selected_action": [row], "csrfmiddlewaretoken": token}
            data = urllib.parse.urlencode(fields, doseq=True).encode()
            started = time.perf_counter()
            page = await asyncio.to_thread(admin.request, LIST, data, {"Referer": admin.base + LIST})
            posted = time.perf_counter()
            code, _frames = await peer.closed(timeout=10)
            closed = time.perf_counter()
            assert "Asked to disconnect 1 peer" in page.body and code == 4102, (code, page.body[-500:])
            posts.append((posted - started) * 1000)
            closes.append((closed - started) * 1000)
        asks = []
        for _ in range(rounds):
            peer = await connect(w2)
            ((worker, connection),) = database.query(
                "SELECT worker, connection FROM signaling_peer WHERE peer_id = ?", (peer.peer_id,)
            )
            started = time.perf_counter()
            await asyncio.to_thread(request_disconnect, types.SimpleNamespace(worker=worker, connection=connection))
            code, _frames = await peer.closed(timeout=10)
            asks.append((time.perf_counter() - started) * 1000)
            assert code == 4102, code
        for name, values in (("POST", posts), ("POST to close", closes), ("ask to close", asks)):
            print(f"{name:>14}: median {statistics.median(values):6.1f} ms, max {max(values):6.1f} ms ({rounds} rounds)")
    finally:
        for worker in workers:
            worker.stop()
        database.drop()
        redis.stop()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 30))
