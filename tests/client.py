"""A minimal PeerJS-protocol client over a real WebSocket, for the tests."""
import asyncio
import json
import uuid

import websockets

from tests.servers import BASE

TIMEOUT = 10


def uid(prefix="p"):
    """A fresh peer id, so tests sharing a server never meet."""
    return f"{prefix}{uuid.uuid4().hex[:12]}"


def socket_url(worker, peer_id, token, key="peerjs"):
    return f"{worker.ws}{BASE}/peerjs?key={key}&id={peer_id}&token={token}&version=1.5.5"


class Client:
    def __init__(self, ws, peer_id, token):
        self.ws = ws
        self.peer_id = peer_id
        self.token = token

    async def send(self, frame):
        await self.ws.send(frame if isinstance(frame, (str, bytes)) else json.dumps(frame))

    async def relay(self, kind, dst, payload=None):
        await self.send({"type": kind, "dst": dst, "payload": payload})

    async def recv(self, timeout=TIMEOUT):
        return json.loads(await asyncio.wait_for(self.ws.recv(), timeout))

    async def expect(self, kind, timeout=TIMEOUT):
        frame = await self.recv(timeout)
        assert frame["type"] == kind, f"expected {kind}, got {frame}"
        return frame

    async def closed(self, timeout=TIMEOUT):
        """Wait until the server closes the socket; return the close code.

        Frames that arrive first are returned too, so tests can assert on them.
        """
        frames = []
        try:
            while True:
                frames.append(json.loads(await asyncio.wait_for(self.ws.recv(), timeout)))
        except websockets.ConnectionClosed as closed:
            code = closed.rcvd.code if closed.rcvd else None
            return code, frames

    async def close(self):
        await self.ws.close()


async def connect(worker, peer_id=None, token=None, key="peerjs", expect_open=True, url=None, **kwargs):
    peer_id = peer_id or uid()
    token = token or uuid.uuid4().hex[:10]
    ws = await websockets.connect(url or socket_url(worker, peer_id, token, key), **kwargs)
    client = Client(ws, peer_id, token)
    if expect_open:
        await client.expect("OPEN")
    return client


async def roundtrip(sender, receiver, payload="ping"):
    """Prove the pair still relays: a CANDIDATE from sender reaches receiver."""
    await sender.relay("CANDIDATE", receiver.peer_id, payload)
    frame = await receiver.expect("CANDIDATE")
    assert frame["src"] == sender.peer_id and frame["payload"] == payload
