"""A closed socket is freed by reference counting, not left to a full collection (signaling.garbage).

A worker freezes the sockets it holds out of its full collections (each
walked 900 000 objects for a second with 17 000 peers), so what a closed
socket leaves as cyclic garbage stays until the worker thaws. The consumer,
uvicorn's protocol and websockets' parser let go of each other at the close:
only the asyncio transport is left (its read callback is its own method).
"""
import asyncio
import json
import signal
import time

from tests.client import connect, roundtrip

COUNT = 100
# What an asyncio transport leaves: itself, its __dict__, its read callback
# (a method of its own: the cycle), its socket and the TransportSocket.
TRANSPORT = {
    "asyncio.selector_events._SelectorSocketTransport", "builtins.dict", "builtins.method", "socket.socket",
    "asyncio.trsock.TransportSocket",
}


async def garbage_now(worker, probe):
    """What the worker's cyclic collector alone would free now, by type (tests.signal_probe)."""
    probe.unlink(missing_ok=True)
    worker.signal(signal.SIGUSR2)
    deadline = time.monotonic() + 10
    while not probe.exists() or not probe.stat().st_size:
        assert time.monotonic() < deadline, "the worker never answered the garbage probe"
        await asyncio.sleep(0.05)
    return json.loads(probe.read_text())


async def test_closed_sockets_leave_only_their_transports_to_the_cyclic_collector(make_server, tmp_path):
    probe = tmp_path / "garbage.json"
    worker = make_server(
        env={"DJANGO_SETTINGS_MODULE": "tests.probe_settings", "PEERJS_GARBAGE_PROBE": str(probe)},
        own=True, server="uvicorn",
    )
    await garbage_now(worker, probe)  # what start-up left
    clients = [await connect(worker) for _ in range(COUNT)]
    for sender, receiver in zip(clients[::2], clients[1::2]):
        await roundtrip(sender, receiver)  # every part of a socket has been used
    for client in clients:
        await client.close()
    deadline = time.monotonic() + 10
    while worker.database.query("SELECT COUNT(*) FROM signaling_peer")[0][0]:
        assert time.monotonic() < deadline, "the worker never released the closed sockets"
        await asyncio.sleep(0.05)
    assert worker.get("/healthz")[0] == 200  # a turn of its event loop after the last release
    garbage = await garbage_now(worker, probe)
    for kind in ("signaling.consumers.PeerConsumer", "signaling.servers.uvicorn.WebSocketProtocol",
                 "websockets.server.ServerProtocol", "builtins.generator"):
        assert kind not in garbage, garbage
    # Per socket its transport's five objects. The rest does not grow with the
    # sockets: an HTTP request leaves about 50 (Django's request cycle), the
    # start-up's polling and /healthz one or two (a closed socket left 19).
    assert all(garbage.get(kind, 0) <= COUNT + 25 for kind in TRANSPORT), garbage
    assert sum(n for kind, n in garbage.items() if kind not in TRANSPORT) < 2 * COUNT, garbage
