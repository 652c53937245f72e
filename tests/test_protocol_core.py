"""The pure protocol core: frames in, decisions out, no server."""
import json

import pytest

from signaling import protocol
from signaling.conf import options


def parse(text):
    return protocol.parse_frame(text, 1024)


@pytest.mark.parametrize(
    "text, why",
    [
        ("garbage", "not JSON"),
        ("null", "not a JSON object"),
        ("123", "not a JSON object"),
        ("[]", "not a JSON object"),
        ("{}", "no type"),
        ('{"type": 5}', "no type"),
        ('{"type": "HELLO"}', "unknown type 'HELLO'"),
    ],
)
def test_bad_frames_are_named(text, why):
    with pytest.raises(protocol.ProtocolError, match=why):
        parse(text)


def test_oversize_frame_counts_utf8_bytes():
    # 300 characters of 4 bytes each: under the limit in characters, over it in bytes.
    text = json.dumps({"type": "CANDIDATE", "dst": "b", "payload": "\U0001f600" * 300}, ensure_ascii=False)
    assert len(text) < 1024
    with pytest.raises(protocol.FrameTooBig, match="limit is 1024 bytes"):
        parse(text)


def test_relay_sets_src_and_drops_extra_fields():
    message = parse('{"type":"OFFER","dst":"bob","src":"mallory","extra":1,"payload":{"sdp":"v=0"}}')
    action = protocol.interpret(message, "alice", 64)
    assert isinstance(action, protocol.Relay)
    assert action.dst == "bob" and action.kind == "OFFER"
    assert json.loads(action.frame) == {"type": "OFFER", "src": "alice", "dst": "bob", "payload": {"sdp": "v=0"}}


def test_heartbeat_and_leave_without_dst():
    assert protocol.interpret({"type": "HEARTBEAT"}, "a", 64) is protocol.HEARTBEAT_ACTION
    assert protocol.interpret({"type": "LEAVE"}, "a", 64) is protocol.UNREGISTER_ACTION


@pytest.mark.parametrize("message", [{"type": "OFFER"}, {"type": "CANDIDATE", "dst": ""}])
def test_relayed_types_other_than_leave_need_dst(message):
    with pytest.raises(protocol.ProtocolError, match="needs a dst"):
        protocol.interpret(message, "a", 64)


def test_dst_must_be_a_plausible_id():
    with pytest.raises(protocol.ProtocolError, match="dst must be a string"):
        protocol.interpret({"type": "OFFER", "dst": 7}, "a", 64)
    with pytest.raises(protocol.ProtocolError, match="longer than 64"):
        protocol.interpret({"type": "OFFER", "dst": "x" * 65}, "a", 64)


@pytest.mark.parametrize("peer_id", ["abc", "a-b_c d", "A1", "0123456789abcdef-0000-1111-2222-333333333333"[:36]])
def test_ids_the_client_accepts(peer_id):
    assert protocol.check_id(peer_id, 64) is None


@pytest.mark.parametrize("peer_id", ["-abc", "abc-", "a--b", "a b!", "a/b", "é", "a\u00a0b", "x" * 65])
def test_ids_the_client_rejects(peer_id):
    assert protocol.check_id(peer_id, 64)


def test_connect_checks_in_the_reference_order():
    o = options()
    with pytest.raises(protocol.ProtocolError, match="No id, token, or key"):
        protocol.check_connect({"id": "a", "key": "wrong"}, o)
    with pytest.raises(protocol.ProtocolError, match="Invalid key provided"):
        protocol.check_connect({"id": "a b c!", "token": "t", "key": "wrong"}, o)
    with pytest.raises(protocol.ProtocolError, match="Invalid id"):
        protocol.check_connect({"id": "a b c!", "token": "t", "key": "peerjs"}, o)
    request = protocol.check_connect({"id": "abc", "token": "t", "key": "peerjs"}, o)
    assert request == protocol.ConnectRequest("abc", "t", "peerjs")
