import logging
import re

from signaling.conf import options
from signaling.consumers import PeerConsumer
from signaling.logs import Occasional
from signaling.readiness import can_deny

logger = logging.getLogger(__name__)
_unknown = Occasional(logger)

NOT_FOUND_BODY = b"No WebSocket here: the PeerJS socket is at {path}/peerjs\n"


async def not_found(scope, receive, send):
    """A WebSocket handshake to a path that is not the socket: 404 where the server can say it (uvicorn), else refused.

    Refused before accept, daphne answers 403. One log line a minute at
    most: anyone can send these.
    """
    await receive()  # websocket.connect
    _unknown.warning("WebSocket handshakes to paths that are not the socket are refused, e.g. %.100r", scope.get("path"))
    if not can_deny(scope):
        await send({"type": "websocket.close"})
        return
    await send({
        "type": "websocket.http.response.start",
        "status": 404,
        "headers": [(b"content-type", b"text/plain; charset=utf-8")],
    })
    await send({"type": "websocket.http.response.body", "body": NOT_FOUND_BODY.replace(b"{path}", options().path.encode())})


# The PeerJS client connects to ``{path}/peerjs?key=..&id=..&token=..``.
SOCKET_PATH = re.compile(rf"^{re.escape(options().path.lstrip('/'))}/?peerjs$")


def route(scope, receive, send):
    """The app's WebSocket paths: the PeerJS socket to its consumer, any other to :func:`not_found`.

    A plain function that returns the application's coroutine rather than a
    coroutine that awaits it, as channels' URLRouter and ``as_asgi`` are:
    each such layer keeps a coroutine frame, a copy of the scope and the
    scope itself (the handshake's headers) for as long as the socket lives,
    about 1.3 KB of every idle peer (bench/perpeer.py, docs/performance.md).
    """
    path = scope["path"]
    root = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root):]
    if SOCKET_PATH.match(path.lstrip("/")):
        return PeerConsumer()(scope, receive, send)
    return not_found(scope, receive, send)
