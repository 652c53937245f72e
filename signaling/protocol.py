"""The PeerJS wire protocol: frames in, frames out, and what each one means.

Plain functions with no I/O, so that tests (and the benchmark) call them
without a server. The consumer is a thin adapter around them.
"""
import dataclasses

import orjson

from signaling.conf import ID_RULE

# Types a client may send.
HEARTBEAT = "HEARTBEAT"
OFFER = "OFFER"
ANSWER = "ANSWER"
CANDIDATE = "CANDIDATE"
LEAVE = "LEAVE"
EXPIRE = "EXPIRE"
RELAYED = frozenset({OFFER, ANSWER, CANDIDATE, LEAVE, EXPIRE})
CLIENT_TYPES = RELAYED | {HEARTBEAT}
# Relayed types that wait in the queue while their destination is offline;
# LEAVE and EXPIRE to an offline peer mean nothing and are dropped.
QUEUED = frozenset({OFFER, ANSWER, CANDIDATE})

MSG_MISSING_PARAMS = "No id, token, or key supplied to websocket server"
MSG_INVALID_KEY = "Invalid key provided"
MSG_ID_TAKEN = "ID is taken"
MSG_LIMIT = "Server has reached its concurrent user limit"


class ProtocolError(Exception):
    """A frame the server cannot act on; ``str(error)`` is what the client is told."""


class FrameTooBig(ProtocolError):
    """A frame over the size limit (a socket that persists is closed with 1009)."""


def dumps(obj):
    """JSON text for a frame (orjson gives bytes; sockets want text)."""
    return orjson.dumps(obj).decode()


def error_frame(msg):
    return dumps({"type": "ERROR", "payload": {"msg": msg}})


OPEN_FRAME = dumps({"type": "OPEN"})
ID_TAKEN_FRAME = dumps({"type": "ID-TAKEN", "payload": {"msg": MSG_ID_TAKEN}})


def notice_frame(kind, src, dst):
    """An EXPIRE or LEAVE the server sends ``dst`` on behalf of peer ``src``."""
    return dumps({"type": kind, "src": src, "dst": dst})


def check_id(peer_id, max_length):
    """Why ``peer_id`` is not acceptable, or None. The rule is the PeerJS client's own."""
    if len(peer_id) > max_length:
        return f"Invalid id: longer than {max_length} characters"
    if not ID_RULE.match(peer_id):
        return (
            "Invalid id: use letters and digits, optionally separated by single "
            "spaces, dashes or underscores"
        )
    return None


@dataclasses.dataclass(frozen=True)
class ConnectRequest:
    peer_id: str
    token: str
    key: str


def check_connect(query, options):
    """Validate the socket's query parameters, in the order the reference checks them.

    ``query`` maps names to their first value. Returns a ConnectRequest or
    raises ProtocolError with the message to send in the ERROR frame.
    """
    peer_id = query.get("id") or ""
    token = query.get("token") or ""
    key = query.get("key") or ""
    if not (peer_id and token and key):
        raise ProtocolError(MSG_MISSING_PARAMS)
    if key != options.key:
        raise ProtocolError(MSG_INVALID_KEY)
    problem = check_id(peer_id, options.id_max_length)
    if problem:
        raise ProtocolError(problem)
    if len(token) > options.id_max_length:
        raise ProtocolError(f"Invalid token: longer than {options.id_max_length} characters")
    return ConnectRequest(peer_id, token, key)


def parse_frame(text, max_bytes):
    """Decode one text frame into a message dict with a known ``type``.

    Raises ProtocolError naming what is wrong. JSON is parsed once, here.
    """
    # A str has at most 4 bytes of UTF-8 per character: encode only when the
    # cheap bound does not already settle the question.
    if len(text) > max_bytes or (len(text) * 4 > max_bytes and len(text.encode()) > max_bytes):
        raise FrameTooBig(f"Message too big: the limit is {max_bytes} bytes")
    try:
        message = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise ProtocolError("Invalid message: not JSON") from None
    if not isinstance(message, dict):
        raise ProtocolError("Invalid message: not a JSON object")
    kind = message.get("type")
    if not isinstance(kind, str):
        raise ProtocolError("Invalid message: no type")
    if kind not in CLIENT_TYPES:
        raise ProtocolError(f"Invalid message: unknown type {kind[:40]!r}")
    return message


# What a parsed message asks the server to do.


@dataclasses.dataclass(frozen=True)
class Relay:
    kind: str
    dst: str
    frame: str


class Heartbeat:
    pass


class Unregister:
    pass


HEARTBEAT_ACTION = Heartbeat()
UNREGISTER_ACTION = Unregister()


def interpret(message, src, id_max_length):
    """Decide what a parsed message from peer ``src`` does.

    The relayed frame is built here, with ``src`` set by the server so that a
    client can never speak for another peer, and other top-level fields
    dropped; ``payload`` passes through untouched.
    """
    kind = message["type"]
    if kind == HEARTBEAT:
        return HEARTBEAT_ACTION
    dst = message.get("dst")
    if dst is None or dst == "":
        if kind == LEAVE:
            return UNREGISTER_ACTION
        raise ProtocolError(f"Invalid message: {kind} needs a dst")
    if not isinstance(dst, str):
        raise ProtocolError("Invalid message: dst must be a string")
    if len(dst) > id_max_length:
        raise ProtocolError(f"Invalid message: dst longer than {id_max_length} characters")
    frame = {"type": kind, "src": src, "dst": dst}
    if "payload" in message:
        frame["payload"] = message["payload"]
    return Relay(kind, dst, dumps(frame))
