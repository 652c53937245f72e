"""The pure protocol core: frames in, decisions out, no server."""
import json

import pytest

from signaling import protocol
from signaling.conf import options

pytestmark = pytest.mark.fast  # the first tier: no server (tests/test_consumer.py)


def parse(text, max_bytes=1024):
    return protocol.parse_frame(text, max_bytes)


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


def interpret(text, src="alice", id_max_length=64):
    return protocol.interpret(parse(text, 65536), text, src, id_max_length)


@pytest.mark.parametrize(
    "frame, dst",
    [
        ({"type": "OFFER", "dst": "bob", "payload": {"metadata": "x" * 1000}}, "bob"),
        ({"type": "CANDIDATE", "dst": "bob", "payload": "x" * 1000}, "bob"),
        ({"type": "HEARTBEAT", "padding": "x" * 1000}, None),  # for no peer
        ({"type": "LEAVE", "dst": "bob", "payload": "x" * 1000}, None),  # nothing to expire
        ({"type": "OFFER", "dst": "not an id!", "payload": "x" * 1000}, None),
    ],
)
def test_an_oversize_frame_names_the_peer_it_was_for(frame, dst):
    """What the consumer answers with EXPIRE (about ``dst``) instead of ERROR."""
    text = json.dumps(frame)
    with pytest.raises(protocol.FrameTooBig):
        protocol.parse_frame(text, 1000)
    assert protocol.oversize_destination(text, 255) == dst
    assert protocol.oversize_destination("not json" + "x" * 1000, 255) is None


def test_relay_sets_src_and_drops_extra_fields():
    action = interpret('{"type":"OFFER","dst":"bob","src":"mallory","extra":1,"payload":{"sdp":"v=0"}}')
    assert isinstance(action, protocol.Relay)
    assert action.dst == "bob" and action.kind == "OFFER"
    assert json.loads(action.frame) == {"type": "OFFER", "src": "alice", "dst": "bob", "payload": {"sdp": "v=0"}}


def test_what_the_peerjs_client_sends_is_relayed_as_written_with_src_in_front():
    # JSON.stringify's own spacing, key order and escapes (a lone surrogate, as
    # it writes one) survive: the payload is never re-serialised.
    text = '{"type":"OFFER","payload":{"sdp":"v=0\\r\\n","metadata":"\\ud83dx", "n": 1.50},"dst":"bob"}'
    action = interpret(text)
    assert action.frame == '{"src":"alice",' + text[1:]
    assert json.loads(action.frame)["payload"]["metadata"] == "\ud83dx"


def test_a_payload_nested_deeper_than_any_serialiser_goes_is_still_relayed():
    payload = "[" * 900 + "]" * 900
    action = interpret('{"type":"CANDIDATE","dst":"bob","payload":' + payload + "}")
    assert action.frame.endswith(payload + "}")


def test_nesting_beyond_what_can_be_parsed_is_named():
    with pytest.raises(protocol.ProtocolError, match="nested too deeply"):
        parse('{"type":"CANDIDATE","dst":"b","payload":' + "[" * 5000 + "]" * 5000 + "}", 65536)


@pytest.mark.parametrize("text", ["NaN", '{"type":"OFFER","dst":"b","payload":Infinity}', '{"type":"OFFER","dst":"b\\ud800"'])
def test_what_no_browser_writes_is_not_json(text):
    with pytest.raises(protocol.ProtocolError, match="not JSON"):
        parse(text)


def test_heartbeat_and_leave_without_dst():
    assert interpret('{"type": "HEARTBEAT"}') is protocol.HEARTBEAT_ACTION
    assert interpret('{"type": "LEAVE"}') is protocol.UNREGISTER_ACTION


@pytest.mark.parametrize(
    "text, about",
    [
        ('{"type":"OFFER","dst":12345}', "12345"),
        ('{"type":"OFFER"}', "null"),
        ('{"type":"CANDIDATE","dst":""}', '""'),
        ('{"type":"ANSWER","dst":"no good!"}', '"no good!"'),
        ('{"type":"OFFER","dst":"' + "x" * 65 + '"}', '"' + "x" * 65 + '"'),
    ],
)
def test_a_dst_no_peer_can_hold_is_an_unknown_peer_that_expires(text, about):
    """The PeerJS client sends these (peer.connect(12345)); the reference answers EXPIRE, not ERROR."""
    action = interpret(text)
    assert isinstance(action, protocol.NoSuchPeer) and action.about == about
    assert json.loads(action.expire) == {"type": "EXPIRE", "src": json.loads(about), "dst": "alice"}


@pytest.mark.parametrize("kind", ["LEAVE", "EXPIRE"])
def test_notices_about_an_unknown_peer_mean_nothing(kind):
    action = interpret('{"type":"%s","dst":7}' % kind)
    assert isinstance(action, protocol.NoSuchPeer) and action.expire is None


@pytest.mark.parametrize("peer_id", ["abc", "a-b_c d", "A1", "0123456789abcdef-0000-1111-2222-333333333333"[:36]])
def test_ids_the_client_accepts(peer_id):
    assert protocol.check_id(peer_id, 64) is None


@pytest.mark.parametrize("peer_id", ["-abc", "abc-", "a--b", "a b!", "a/b", "é", "a\u00a0b", "x" * 65, "abc\n", "\nabc"])
def test_ids_the_client_rejects(peer_id):
    assert protocol.check_id(peer_id, 64)


def test_connect_checks_in_the_reference_order():
    n = options().id_max_length
    with pytest.raises(protocol.ProtocolError, match="No id, token, or key"):
        protocol.check_connect({"id": "a", "key": "wrong"}, n, key_known=False)
    with pytest.raises(protocol.ProtocolError, match="Invalid key provided"):
        protocol.check_connect({"id": "a b c!", "token": "t", "key": "wrong"}, n, key_known=False)
    with pytest.raises(protocol.ProtocolError, match="Invalid id"):
        protocol.check_connect({"id": "a b c!", "token": "t", "key": "peerjs"}, n, key_known=True)
    request = protocol.check_connect({"id": "abc", "token": "t", "key": "peerjs"}, n, key_known=True)
    assert request == protocol.ConnectRequest("abc", "t", "peerjs")
