"""Signed connect tokens: what an app's backend mints and what the server says about it.

Pure tests of signaling.tokens (no database, no server), then the
`mint_token` management command and a Node backend's token (docs/apps.md's
snippet, with the real `jsonwebtoken` package) checked the same way.
"""
import base64
import json
import os
import subprocess
import sys
import time
import urllib.parse

import jwt
import pytest

from signaling import conf, tokens
from signaling.applications import AppSettings
from tests.servers import ROOT, TEST_SECRET_KEY

pytestmark = pytest.mark.fast  # the first tier: no server (tests/test_consumer.py)

SECRET = "app-secret-0123456789-abcdefghijklmnopqrstuvwxyz"


def app(key="stage", secret=SECRET, auth=conf.AUTH_TOKEN):
    return AppSettings(
        key=key, name="Stage", origins=(), concurrent_limit=10, allow_discovery=False, auth=auth,
        token_secret=secret, turn_urls=(), turn_secret="", turn_ttl=60, webhook_url="", webhook_secret="",
    )


def test_a_minted_token_lets_its_peer_in():
    token = tokens.mint(app(), "stage-left", 60)
    assert tokens.verify(app(), "stage-left", token) is None


def test_a_token_travels_raw_in_the_socket_url_unchanged():
    """PeerJS puts the token in the query string without encoding it: it must come out as it went in."""
    token = tokens.mint(app(), "a b_c-d", 60)
    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.")
    query = f"key=stage&id=a b_c-d&token={token}&version=1.5.5"
    assert urllib.parse.parse_qs(query)["token"] == [token]


@pytest.mark.parametrize("token", ["", "k3j5h2l1m9", "abc.def"])
def test_no_token_or_the_clients_random_one_is_told_a_token_is_required(token):
    # The PeerJS client makes up a random token when the page gives none.
    assert tokens.verify(app(), "stage-left", token) == "Token required"


def test_a_token_signed_with_another_secret_is_forged():
    forged = tokens.mint(app(secret="someone-elses-secret-" + "x" * 20), "stage-left", 60)
    assert tokens.verify(app(), "stage-left", forged) == "Invalid token: bad signature"


def test_a_token_whose_claims_were_edited_is_forged():
    header, payload, signature = tokens.mint(app(), "stage-left", 60).split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["sub"] = "stage-right"
    edited = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    assert tokens.verify(app(), "stage-right", f"{header}.{edited}.{signature}") == "Invalid token: bad signature"


def test_an_expired_token_is_refused_as_expired():
    an_hour_ago = time.time() - 3600
    token = tokens.mint(app(), "stage-left", 60, now=an_hour_ago)
    assert tokens.verify(app(), "stage-left", token) == "Invalid token: expired"


def test_a_token_for_another_id_cannot_take_this_one():
    token = tokens.mint(app(), "stage-left", 60)
    assert tokens.verify(app(), "stage-right", token) == "Invalid token: issued for another id"


def test_a_token_for_another_app_is_refused_even_with_the_same_secret():
    token = tokens.mint(app(key="other"), "stage-left", 60)
    assert tokens.verify(app(), "stage-left", token) == "Invalid token: issued for another key"


def test_a_token_without_expiry_is_refused():
    forever = jwt.encode({"sub": "stage-left", "aud": "stage"}, SECRET, algorithm="HS256")
    assert tokens.verify(app(), "stage-left", forever) == "Invalid token: no exp claim"


def test_only_hs256_is_accepted():
    unsigned = jwt.encode({"sub": "stage-left", "aud": "stage", "exp": time.time() + 60}, None, algorithm="none")
    assert tokens.verify(app(), "stage-left", unsigned) == "Invalid token: not signed with HS256"
    hs512 = jwt.encode({"sub": "stage-left", "aud": "stage", "exp": time.time() + 60}, SECRET * 2, algorithm="HS512")
    assert tokens.verify(app(), "stage-left", hs512) == "Invalid token: not signed with HS256"


def test_mint_refuses_what_could_never_connect():
    with pytest.raises(ValueError, match="not a PeerJS id"):
        tokens.mint(app(), "bad id!", 60)
    with pytest.raises(ValueError, match="no token secret"):
        tokens.mint(app(secret=""), "stage-left", 60)
    with pytest.raises(ValueError, match="positive"):
        tokens.mint(app(), "stage-left", 0)


def run_mint_token(*args, env=None):
    return subprocess.run(
        [sys.executable, "manage.py", "mint_token", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )


@pytest.mark.db
def test_mint_token_prints_a_token_for_an_apps_peer(database):
    """The command resolves the key as the server does: here the default app, configured by environment."""
    env = {
        **os.environ,
        "DATABASE_URL": database.url,
        "DJANGO_SECRET_KEY": TEST_SECRET_KEY,
        "PEERJS_KEY": "stage",
        "PEERJS_AUTH": "token",
        "PEERJS_TOKEN_SECRET": SECRET,
    }
    result = run_mint_token("--key", "stage", "--id", "stage-left", "--ttl", "120", env=env)
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    assert tokens.verify(app(), "stage-left", token) is None
    claims = jwt.decode(token, SECRET, algorithms=["HS256"], audience="stage")
    assert claims["exp"] - claims["iat"] == 120

    unknown = run_mint_token("--key", "nosuchapp", "--id", "stage-left", env=env)
    assert unknown.returncode != 0 and "No app with key 'nosuchapp'" in unknown.stderr
    bad_id = run_mint_token("--key", "stage", "--id", "x!", env=env)
    assert bad_id.returncode != 0 and "not a PeerJS id" in bad_id.stderr


NODE_BACKEND = """
// docs/apps.md's Node backend, as it is written there.
const jwt = require("jsonwebtoken");
function connectToken(peerId, key, secret) {
  return jwt.sign({}, secret, { algorithm: "HS256", subject: peerId, audience: key, expiresIn: 3600 });
}
process.stdout.write(connectToken(process.argv[1], process.argv[2], process.argv[3]));
"""


def test_a_node_backends_token_from_jsonwebtoken_is_accepted():
    result = subprocess.run(
        ["node", "-e", NODE_BACKEND, "stage-left", "stage", SECRET],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert tokens.verify(app(), "stage-left", result.stdout) is None
    assert tokens.verify(app(), "stage-right", result.stdout) == "Invalid token: issued for another id"
