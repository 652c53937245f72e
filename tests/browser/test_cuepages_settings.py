"""The cue pages' settings and their QR endpoint, without a browser.

Kept beside the browser tests because they guard the same pages: a typo in
CUEPAGES_ICE_SERVERS must stop start-up naming the variable, not leave every
browser without STUN/TURN on show night.
"""
import json
import re
import urllib.error
import urllib.request

import pytest
from django.core.exceptions import ImproperlyConfigured

from cuepages import conf


def test_ice_servers_default_to_none_for_a_lan():
    assert conf.ice_servers("CUEPAGES_ICE_SERVERS", environ={}) == []


def test_ice_servers_are_read_as_json():
    raw = '[{"urls": "stun:stun.example.org:3478"}, {"urls": ["turn:t.example.org"], "username": "u", "credential": "c"}]'
    assert conf.ice_servers("CUEPAGES_ICE_SERVERS", environ={"CUEPAGES_ICE_SERVERS": raw})[1]["username"] == "u"


@pytest.mark.parametrize(
    "raw",
    ["nope", '{"urls": "stun:x"}', '[{"url": "stun:x"}]', '[{"urls": "http://x"}]', '[{"urls": "stun:x", "credential": 1}]'],
)
def test_a_bad_ice_servers_value_names_the_variable(raw):
    with pytest.raises(ImproperlyConfigured, match="CUEPAGES_ICE_SERVERS"):
        conf.ice_servers("CUEPAGES_ICE_SERVERS", environ={"CUEPAGES_ICE_SERVERS": raw})


def test_public_url_must_be_an_http_base_url():
    assert conf.public_url("CUEPAGES_PUBLIC_URL", environ={"CUEPAGES_PUBLIC_URL": "http://10.0.0.5:8080/"}) == "http://10.0.0.5:8080"
    with pytest.raises(ImproperlyConfigured, match="CUEPAGES_PUBLIC_URL"):
        conf.public_url("CUEPAGES_PUBLIC_URL", environ={"CUEPAGES_PUBLIC_URL": "10.0.0.5:8080"})


def test_the_qr_code_of_the_share_link_uses_the_public_url_and_refuses_bad_ids(make_server):
    worker = make_server({"CUEPAGES_PUBLIC_URL": "http://10.0.0.5:8080"})
    with urllib.request.urlopen(f"{worker.http}/send-link.svg?id=abc-123") as response:
        assert response.headers["Content-Type"] == "image/svg+xml"
    with urllib.request.urlopen(f"{worker.http}/receive") as response:
        assert b"http://10.0.0.5:8080" in response.read()
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(f"{worker.http}/send-link.svg?id=%3Cscript%3E")
    assert error.value.code == 400


def page_config(worker, path="/receive"):
    with urllib.request.urlopen(f"{worker.http}{path}") as response:
        html = response.read().decode()
    return json.loads(re.search(r'<script id="cue-config" type="application/json">(.*?)</script>', html, re.S).group(1))


def test_the_pages_fetch_turn_credentials_only_where_the_server_hands_them_out(server, make_server):
    assert page_config(server)["iceServersUrl"] is None  # the pages use CUEPAGES_ICE_SERVERS
    turn = make_server({"PEERJS_TURN_URLS": "turn:127.0.0.1:3478", "PEERJS_TURN_SECRET": "s3cret"})
    for path in ("/receive", "/send"):
        assert page_config(turn, path)["iceServersUrl"] == "/peerjs/myapp/peerjs/ice-servers"
