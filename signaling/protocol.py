"""The PeerJS wire protocol: frames in, frames out, and what each one means.

Plain functions with no I/O, so that tests (and the benchmark) call them
without a server. The consumer is a thin adapter around them.
"""
import dataclasses
import json
import math

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

# Tokens are stored hashed, so any length fits; this only bounds the work.
TOKEN_MAX_LENGTH = 2048


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


def expire_frame(src, dst):
    """The EXPIRE the server sends ``dst`` about peer ``src``: what ``dst`` sent it will not arrive.

    The server's only notice of its own. It never sends LEAVE for a peer:
    the PeerJS client closes every connection with a peer it hears LEAVE
    about, so only a peer's own LEAVE is relayed.
    """
    return expire_frame_about(dumps(src), dst)


def check_id(peer_id, max_length):
    """Why ``peer_id`` is not acceptable, or None. The rule is the PeerJS client's own.

    The whole string must match: ``$`` alone would let a final newline through.
    """
    if len(peer_id) > max_length:
        return f"Invalid id: longer than {max_length} characters"
    if not ID_RULE.fullmatch(peer_id):
        return (
            "Invalid id: use letters and digits, optionally separated by single "
            "spaces, dashes or underscores"
        )
    return None


def is_valid_id(value, max_length):
    return isinstance(value, str) and check_id(value, max_length) is None


@dataclasses.dataclass(frozen=True)
class ConnectRequest:
    peer_id: str
    token: str
    key: str


def check_connect(query, id_max_length, key_known):
    """Validate the socket's query parameters, in the order the reference checks them.

    ``query`` maps names to their first value; ``key_known`` says whether
    its key names an app. Returns a ConnectRequest or raises ProtocolError
    with the message to send in the ERROR frame.
    """
    peer_id = query.get("id") or ""
    token = query.get("token") or ""
    key = query.get("key") or ""
    if not (peer_id and token and key):
        raise ProtocolError(MSG_MISSING_PARAMS)
    if not key_known:
        raise ProtocolError(MSG_INVALID_KEY)
    problem = check_id(peer_id, id_max_length)
    if problem:
        raise ProtocolError(problem)
    if len(token) > TOKEN_MAX_LENGTH:
        raise ProtocolError(f"Invalid token: longer than {TOKEN_MAX_LENGTH} characters")
    return ConnectRequest(peer_id, token, key)


def _no_constants(name):
    raise ValueError(f"{name} is not JSON")


def _loads_leniently(text):
    """Parse JSON that orjson refuses but a browser's ``JSON.stringify`` writes.

    ``JSON.stringify`` escapes a lone surrogate (``"\\ud83d"``), which orjson
    rejects; Python's own parser takes it. Nesting deeper than Python's
    recursion limit stays an error.
    """
    try:
        return json.loads(text, parse_constant=_no_constants)
    except RecursionError:
        raise ProtocolError("Invalid message: nested too deeply") from None
    except ValueError:
        raise ProtocolError("Invalid message: not JSON") from None


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
        message = _loads_leniently(text)
    if not isinstance(message, dict):
        raise ProtocolError("Invalid message: not a JSON object")
    kind = message.get("type")
    if not isinstance(kind, str):
        raise ProtocolError("Invalid message: no type")
    if kind not in CLIENT_TYPES:
        raise ProtocolError(f"Invalid message: unknown type {kind[:40]!r}")
    return message


def oversize_destination(text, id_max_length):
    """The peer a frame over the size limit is for, if it is one a client sends to a peer; else None.

    OFFER, ANSWER and CANDIDATE to a valid id: what the server would have
    relayed (or queued) had it been smaller, and so can answer with EXPIRE.
    """
    try:
        message = parse_frame(text, math.inf)
    except ProtocolError:
        return None
    dst = message.get("dst")
    return dst if message["type"] in QUEUED and is_valid_id(dst, id_max_length) else None


# What a parsed message asks the server to do.


@dataclasses.dataclass(frozen=True)
class Relay:
    """Hand ``frame`` to the peer ``dst``."""

    kind: str
    dst: str
    frame: str


@dataclasses.dataclass(frozen=True)
class NoSuchPeer:
    """A frame for a ``dst`` no peer can ever hold (a number, an invalid id).

    The reference queues it like any other and answers EXPIRE when it
    expires, and the PeerJS client counts on that (``peer-unavailable``, the
    Peer stays connected): ``expire`` is that EXPIRE, or None for a LEAVE or
    EXPIRE, which mean nothing to an unknown peer. ``about`` names the
    destination, so that a sender hears of it once.
    """

    kind: str
    about: str
    expire: object


class Heartbeat:
    pass


class Unregister:
    pass


HEARTBEAT_ACTION = Heartbeat()
UNREGISTER_ACTION = Unregister()

# Top-level fields a relayed frame keeps; the PeerJS client sends just these.
RELAYED_FIELDS = frozenset({"type", "dst", "payload"})
# How much of an impossible dst an EXPIRE echoes back (the client only shows it).
MAX_ABOUT = 512
_JSON_SPACE = " \t\n\r"


def relay_prefix(src):
    """The start of every frame relayed from ``src`` (ids need no JSON escaping)."""
    return '{"src":"' + src + '",'


def interpret(message, text, src, id_max_length):
    """Decide what a parsed message from peer ``src`` does.

    The relayed frame carries ``src`` set by the server, so that a client can
    never speak for another peer, and drops other top-level fields. It is
    the client's own text with ``src`` put in front: the payload (SDP,
    candidates, whatever metadata an application chose) passes through byte
    for byte, never re-serialised, which is both the cheapest relay and the
    only one faithful to what the browser wrote.
    """
    kind = message["type"]
    if kind == HEARTBEAT:
        return HEARTBEAT_ACTION
    dst = message.get("dst")
    if kind == LEAVE and (dst is None or dst == ""):
        return UNREGISTER_ACTION
    if not is_valid_id(dst, id_max_length):
        about = _json(dst[:MAX_ABOUT] if isinstance(dst, str) else dst)
        if len(about) > 2 * MAX_ABOUT:
            about = "null"  # a huge object for a dst: not worth echoing
        expire = expire_frame_about(about, src) if kind in QUEUED else None
        return NoSuchPeer(kind, about, expire)
    if message.keys() <= RELAYED_FIELDS:
        frame = relay_prefix(src) + text.lstrip(_JSON_SPACE)[1:]
    else:
        relayed = {"type": kind, "src": src, "dst": dst}
        if "payload" in message:
            relayed["payload"] = message["payload"]
        frame = _json(relayed)
    return Relay(kind, dst, frame)


def _json(value):
    """JSON text of a value parsed from a client frame, lone surrogates and all."""
    try:
        return dumps(value)
    except TypeError:  # orjson: a lone surrogate, or nesting orjson will not write
        try:
            return json.dumps(value, separators=(",", ":"))
        except RecursionError:
            raise ProtocolError("Invalid message: nested too deeply") from None


def expire_frame_about(about, dst):
    """An EXPIRE for ``dst`` about a destination given as JSON text (any value a client sent)."""
    return '{"type":"EXPIRE","src":' + about + ',"dst":"' + dst + '"}'
