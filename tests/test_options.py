"""Options: the reference's defaults, environment overrides, and clear refusals."""
import os
import subprocess
import sys

import pytest
from django.core.exceptions import ImproperlyConfigured

from signaling import conf
from tests.servers import ROOT


def test_defaults_are_the_references():
    o = conf._validated(conf.from_environ({}))
    assert (o.key, o.path, o.expire_timeout, o.alive_timeout, o.cleanup_out_msgs) == (
        "peerjs", "/peerjs/myapp", 5000, 90000, 1000,
    )
    assert (o.concurrent_limit, o.allow_discovery, o.proxied, o.cors_origins) == (5000, False, False, ("*",))
    assert o.generate_client_id.__name__ == "uuid4_id"


def test_metrics_are_for_this_machine_by_default():
    o = conf._validated(conf.from_environ({}))
    assert o.metrics_token == ""
    assert [o.metrics_address_allowed(a) for a in ["127.0.0.1", "::1", "::ffff:127.0.0.1"]] == [True] * 3
    assert [o.metrics_address_allowed(a) for a in ["127.0.0.2", "10.0.0.1", "2001:db8::1"]] == [False] * 3


def test_every_option_reads_its_environment_variable():
    environ = {
        "PEERJS_KEY": "stage",
        "PEERJS_PATH": "/signal/",
        "PEERJS_EXPIRE_TIMEOUT": "7000",
        "PEERJS_ALIVE_TIMEOUT": "30000",
        "PEERJS_CLEANUP_OUT_MSGS": "500",
        "PEERJS_CONCURRENT_LIMIT": "10",
        "PEERJS_ALLOW_DISCOVERY": "yes",
        "PEERJS_PROXIED": "1",
        "PEERJS_CORS_ORIGINS": "http://a.example, http://b.example",
        "PEERJS_MAX_FRAME_BYTES": "4096",
        "PEERJS_ID_MAX_LENGTH": "40",
        "PEERJS_GENERATE_CLIENT_ID": "signaling.ids.uuid4_id",
        "PEERJS_METRICS_ALLOW": "10.0.0.0/8, 2001:db8::/32",
        "PEERJS_METRICS_TOKEN": "a" * 20 + "b" * 20,
    }
    o = conf._validated(conf.from_environ(environ))
    assert (o.key, o.path, o.expire_timeout, o.alive_timeout, o.cleanup_out_msgs) == ("stage", "/signal", 7000, 30000, 500)
    assert (o.concurrent_limit, o.allow_discovery, o.proxied) == (10, True, True)
    assert o.cors_origins == ("http://a.example", "http://b.example")
    assert (o.max_frame_bytes, o.id_max_length) == (4096, 40)
    assert o.metrics_token == "a" * 20 + "b" * 20
    assert o.metrics_address_allowed("10.200.3.4") and o.metrics_address_allowed("2001:db8::7")
    assert not o.metrics_address_allowed("127.0.0.1")  # the list replaces the default


@pytest.mark.parametrize(
    "variable, value",
    [
        ("PEERJS_EXPIRE_TIMEOUT", "soon"),
        ("PEERJS_CONCURRENT_LIMIT", "0"),
        ("PEERJS_ALLOW_DISCOVERY", "maybe"),
        ("PEERJS_GENERATE_CLIENT_ID", "no.such.generator"),
        ("PEERJS_PATH", "relative"),
        ("PEERJS_METRICS_ALLOW", "127.0.0.1,localhost"),  # addresses, not names
        ("PEERJS_METRICS_ALLOW", "10.0.0.0/33"),
        ("PEERJS_METRICS_TOKEN", "secret"),  # guessable
    ],
)
def test_a_bad_value_names_its_variable(variable, value):
    with pytest.raises(ImproperlyConfigured, match=variable):
        conf._validated(conf.from_environ({variable: value}))


def test_a_bad_value_stops_start_up():
    env = {**os.environ, "PEERJS_ALIVE_TIMEOUT": "-5"}
    result = subprocess.run([sys.executable, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode != 0
    assert "PEERJS_ALIVE_TIMEOUT='-5' must be at least 1" in result.stderr


def test_secret_key_is_required_when_debug_is_off():
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SECRET_KEY"}
    env["DJANGO_DEBUG"] = "0"
    result = subprocess.run([sys.executable, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode != 0 and "DJANGO_SECRET_KEY is required" in result.stderr


def test_the_apps_tokens_turn_and_webhook_options_read_their_variables():
    o = conf._validated(conf.from_environ({
        "PEERJS_APP_CACHE": "0",
        "PEERJS_AUTH": "token",
        "PEERJS_TOKEN_SECRET": "s" * 32,
        "PEERJS_TURN_URLS": "stun:t.example:3478, turn:t.example:3478?transport=udp",
        "PEERJS_TURN_SECRET": "turn-secret",
        "PEERJS_TURN_TTL": "600",
        "PEERJS_WEBHOOK_TIMEOUT": "2000",
        "PEERJS_WEBHOOK_RETRIES": "0",
        "PEERJS_WEBHOOK_BACKOFF": "250",
        "PEERJS_WEBHOOK_QUEUE": "10",
    }))
    assert (o.app_cache, o.auth, o.token_secret) == (0, "token", "s" * 32)
    assert (o.turn_urls, o.turn_secret, o.turn_ttl) == (
        ("stun:t.example:3478", "turn:t.example:3478?transport=udp"), "turn-secret", 600,
    )
    assert (o.webhook_timeout, o.webhook_retries, o.webhook_backoff, o.webhook_queue) == (2000, 0, 250, 10)
    # Secrets stay out of the options' repr (and so out of tracebacks and logs).
    assert "s" * 32 not in repr(o) and "turn-secret" not in repr(o)
    defaults = conf._validated(conf.from_environ({}))
    assert (defaults.app_cache, defaults.auth, defaults.turn_urls, defaults.turn_ttl) == (2000, "none", (), 86400)


def test_the_worker_timeout_spans_at_least_four_beats():
    """Shorter, a live worker's silence after an outage every worker saw could get it reaped."""
    assert conf._validated(conf.from_environ({"PEERJS_WORKER_BEAT": "500", "PEERJS_WORKER_TIMEOUT": "2000"}))
    with pytest.raises(ImproperlyConfigured, match="PEERJS_WORKER_TIMEOUT.*four times PEERJS_WORKER_BEAT"):
        conf._validated(conf.from_environ({"PEERJS_WORKER_BEAT": "500", "PEERJS_WORKER_TIMEOUT": "1999"}))
