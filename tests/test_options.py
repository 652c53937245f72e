"""Options: the reference's defaults, environment overrides, and clear refusals."""
import os
import re
import subprocess
import sys

import pytest
from django.core.exceptions import ImproperlyConfigured

from signaling import conf
from tests.servers import ROOT

pytestmark = pytest.mark.fast  # the first tier: no server (tests/test_consumer.py)


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
        ("REDIS_INBOX_CAPACITY", "10"),
        ("REDIS_CLUSTER", "1"),  # without REDIS_URL
        ("PEERJS_CHANNEL_LAYER", "default"),  # the site's groups are there
    ],
)
def test_a_bad_value_names_its_variable(variable, value):
    with pytest.raises(ImproperlyConfigured, match=variable):
        conf._validated(conf.from_environ({variable: value}))


def test_redis_is_configured_by_the_variables_deployments_set():
    """REDIS_URL and the rest keep their names (docker-compose.yml, make cluster, the Helm chart), in PEERJS now."""
    o = conf._validated(conf.from_environ({
        "REDIS_URL": "redis://:hunter2@redis:6379/0",
        "REDIS_CLUSTER": "1",
        "REDIS_INBOX_CAPACITY": "500",
        "REDIS_ACK_TIMEOUT": "3000",
    }))
    assert (o.redis_url, o.redis_cluster, o.redis_inbox_capacity, o.redis_ack_timeout) == (
        "redis://:hunter2@redis:6379/0", True, 500, 3000,
    )
    assert "hunter2" not in repr(o)
    defaults = conf._validated({})
    assert (defaults.redis_url, defaults.redis_cluster, defaults.channel_layer) == ("", False, "peerjs")


def test_a_redis_url_that_is_not_one_is_refused_without_echoing_it():
    with pytest.raises(ImproperlyConfigured, match="REDIS_URL") as refused:
        conf._validated(conf.from_environ({"REDIS_URL": "http://:hunter2@redis:6379"}))
    assert "hunter2" not in str(refused.value)


def test_channel_layers_in_memory_without_redis_and_channels_redis_beside_the_bus_with_it():
    assert conf.channel_layers({}) == {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    assert conf.bus_layer({}) == {}
    layers = conf.channel_layers({"REDIS_URL": "redis://redis:6379/0", "CHANNEL_LAYER": "signal"})
    assert layers["default"]["BACKEND"] == "channels_redis.core.RedisChannelLayer"
    assert layers["default"]["CONFIG"]["hosts"][0]["address"] == "redis://redis:6379/0"
    assert layers["signal"] == conf.bus_layer({"REDIS_URL": "redis://redis:6379/0", "CHANNEL_LAYER": "signal"})["signal"]
    assert layers["signal"]["CONFIG"]["url"] == "redis://redis:6379/0"
    on_a_cluster = conf.channel_layers({"REDIS_URL": "redis://redis:6379/0", "REDIS_CLUSTER": True})
    assert on_a_cluster["default"]["BACKEND"] == "channels_redis.pubsub.RedisPubSubChannelLayer"
    assert on_a_cluster["peerjs"]["CONFIG"]["cluster"] is True


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


def test_the_servers_options_read_their_variables():
    """What signaling/servers/ takes from the app's options, with their defaults."""
    defaults = conf._validated(conf.from_environ({}))
    assert (defaults.max_frame_bytes, defaults.max_message_bytes) == (256 * 1024, 1024 * 1024)
    assert (defaults.request_timeout, defaults.handshake_concurrency, defaults.max_http_connections_per_address) == (
        10000, 32, 256,
    )
    o = conf._validated(conf.from_environ({
        "PEERJS_MAX_MESSAGE_BYTES": "300000",
        "PEERJS_REQUEST_TIMEOUT": "2500",
        "PEERJS_HANDSHAKE_CONCURRENCY": "4",
        "PEERJS_MAX_HTTP_CONNECTIONS_PER_ADDRESS": "0",
    }))
    assert (o.max_message_bytes, o.request_timeout, o.handshake_concurrency, o.max_http_connections_per_address) == (
        300000, 2500, 4, 0,
    )
    with pytest.raises(ImproperlyConfigured, match="PEERJS_MAX_MESSAGE_BYTES.*at least PEERJS_MAX_FRAME_BYTES"):
        conf._validated(conf.from_environ({"PEERJS_MAX_FRAME_BYTES": "2048", "PEERJS_MAX_MESSAGE_BYTES": "2047"}))


def test_channel_layers_reads_the_redis_options_alone():
    """It runs in settings.py, before the apps load: a site's own id generator cannot be imported yet."""
    peerjs = {"REDIS_URL": "redis://redis:6379/0", "GENERATE_CLIENT_ID": "mysite.ids.not_importable_before_the_apps"}
    assert conf.channel_layers(peerjs)["peerjs"]["CONFIG"]["url"] == "redis://redis:6379/0"
    with pytest.raises(ImproperlyConfigured, match="REDIS_CLUSTER"):
        conf.channel_layers({"REDIS_CLUSTER": True})


def test_redis_sentinel_reads_the_variables_the_helm_chart_sets():
    """PEERJS_REDIS_SENTINELS and PEERJS_REDIS_SENTINEL_MASTER, as deploy/helm/peerserver passes them."""
    o = conf._validated(conf.from_environ({
        "REDIS_URL": "rediss://:p%40ss@ignored:6379/2",
        "PEERJS_REDIS_SENTINELS": "redis-sentinel-0.redis-sentinel:26379, [::1]:26380,sentinel-2",
        "PEERJS_REDIS_SENTINEL_MASTER": "peerserver",
    }))
    assert o.redis_sentinels == (("redis-sentinel-0.redis-sentinel", 26379), ("::1", 26380), ("sentinel-2", 26379))
    assert o.redis_sentinel_master == "peerserver"
    defaults = conf._validated({})
    assert (defaults.redis_sentinels, defaults.redis_sentinel_master) == ((), "mymaster")
    # The bus asks the sentinels itself; channels-redis gets them in its own Sentinel form, with the
    # master's password, database and TLS from REDIS_URL (whose host is not used).
    peerjs = conf.from_environ({"REDIS_URL": "rediss://:p%40ss@ignored:6379/2", "PEERJS_REDIS_SENTINELS": "s:1"})
    layers = conf.channel_layers(peerjs)
    assert layers["peerjs"]["CONFIG"]["sentinels"] == (("s", 1),)
    assert layers["peerjs"]["CONFIG"]["master"] == "mymaster"
    (host,) = layers["default"]["CONFIG"]["hosts"]
    assert "address" not in host
    assert (host["sentinels"], host["master_name"]) == ([("s", 1)], "mymaster")
    assert (host["password"], host["db"], host["ssl"], host["username"]) == ("p@ss", 2, True, None)
    assert host["sentinel_kwargs"]["socket_timeout"]  # a black-holed sentinel does not hold the layer
    assert "password" not in host["sentinel_kwargs"] and not layers["peerjs"]["CONFIG"]["sentinel_auth"]
    # PEERJS_REDIS_SENTINEL_AUTH: the sentinels are asked with REDIS_URL's password too.
    peerjs = conf.from_environ({"REDIS_URL": "rediss://:p%40ss@ignored:6379/2", "PEERJS_REDIS_SENTINELS": "s:1",
                                "PEERJS_REDIS_SENTINEL_AUTH": "yes"})
    assert conf._validated(peerjs).redis_sentinel_auth is True
    layers = conf.channel_layers(peerjs)
    assert layers["peerjs"]["CONFIG"]["sentinel_auth"] is True
    assert layers["default"]["CONFIG"]["hosts"][0]["sentinel_kwargs"]["password"] == "p@ss"
    assert "ssl" not in layers["default"]["CONFIG"]["hosts"][0]["sentinel_kwargs"]
    assert conf.bus_layer({"REDIS_URL": "redis://r:6379/0"})["peerjs"]["CONFIG"]["sentinels"] == ()
    # PEERJS_REDIS_SENTINEL_TLS: the sentinels are asked over TLS.
    peerjs = conf.from_environ({"REDIS_URL": "rediss://r/0", "PEERJS_REDIS_SENTINELS": "s:1",
                                "PEERJS_REDIS_SENTINEL_TLS": "1"})
    assert conf._validated(peerjs).redis_sentinel_tls is True and conf._validated({}).redis_sentinel_tls is False
    layers = conf.channel_layers(peerjs)
    assert layers["peerjs"]["CONFIG"]["sentinel_tls"] is True
    assert layers["default"]["CONFIG"]["hosts"][0]["sentinel_kwargs"]["ssl"] is True


@pytest.mark.parametrize(
    "environ, message",
    [
        ({"PEERJS_REDIS_SENTINELS": "s:26379"}, "PEERJS_REDIS_SENTINELS) needs REDIS_URL too"),
        ({"REDIS_URL": "redis://r/0", "PEERJS_REDIS_SENTINELS": "s:26379,s:port"},
         "PEERJS_REDIS_SENTINELS) has 's:port', which is no host:port"),
        ({"REDIS_URL": "redis://r/0", "PEERJS_REDIS_SENTINELS": "s:99999"}, "has 's:99999', which is no host:port"),
        ({"REDIS_URL": "redis://r/0", "PEERJS_REDIS_SENTINELS": "user@s:26379"}, "which is no host:port"),
        ({"REDIS_URL": "redis://r/0", "PEERJS_REDIS_SENTINELS": "s:26379", "REDIS_CLUSTER": "1"},
         "cannot go with REDIS_CLUSTER"),
        ({"REDIS_URL": "unix:///run/redis.sock", "PEERJS_REDIS_SENTINELS": "s:26379"}, "needs a redis:// or rediss://"),
        ({"REDIS_URL": "redis://r/0", "PEERJS_REDIS_SENTINELS": "s:26379", "PEERJS_REDIS_SENTINEL_MASTER": ""},
         "PEERJS_REDIS_SENTINEL_MASTER) must name the master set"),
        ({"REDIS_URL": "redis://r/0", "PEERJS_REDIS_SENTINELS": "s:26379", "PEERJS_REDIS_SENTINEL_AUTH": "1"},
         "PEERJS_REDIS_SENTINEL_AUTH) needs a password in REDIS_URL"),
        ({"REDIS_URL": "rediss://r/0", "PEERJS_REDIS_SENTINEL_TLS": "1"},
         "PEERJS_REDIS_SENTINEL_TLS) is set, but REDIS_SENTINELS is not"),
        ({"REDIS_URL": "redis://:pw@r/zero", "PEERJS_REDIS_SENTINELS": "s:26379"},
         "(REDIS_URL) must end in a database number"),
        ({"REDIS_URL": "redis+sentinel://s:26379/mymaster"},
         "(REDIS_URL) must be a redis://, rediss://, unix:// URL (Sentinel: PEERJS_REDIS_SENTINELS and"),
    ],
)
def test_a_bad_sentinel_setting_is_refused_in_one_line(environ, message):
    with pytest.raises(ImproperlyConfigured, match=re.escape(message)) as refused:
        conf._validated(conf.from_environ(environ))
    assert "\n" not in str(refused.value)
    with pytest.raises(ImproperlyConfigured, match=re.escape(message)):
        conf.channel_layers(conf.from_environ(environ))  # settings.py's call, before the apps load


def test_a_bad_sentinel_stops_start_up_with_that_line():
    env = {**os.environ, "REDIS_URL": "redis://r:6379/0", "PEERJS_REDIS_SENTINELS": "sentinel-0:26379,sentinel-1:26379:1"}
    result = subprocess.run([sys.executable, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode != 0
    assert ("PEERJS['REDIS_SENTINELS'] (PEERJS_REDIS_SENTINELS) has 'sentinel-1:26379:1', which is no host:port "
            "(e.g. redis-sentinel-0:26379).") in result.stderr


# The system checks of the channel layers (signaling.checks), as `manage.py check` reports them.

REDIS = {"REDIS_URL": "redis://redis:6379/0"}


def layer_findings(peerjs, layers):
    from django.test import override_settings

    from signaling import checks

    with override_settings(PEERJS=peerjs, CHANNEL_LAYERS=layers):
        return sorted(finding.id for finding in checks.channel_layers())


def test_the_layers_channel_layers_makes_pass_the_checks():
    assert layer_findings({}, conf.channel_layers({})) == []
    assert layer_findings(REDIS, conf.channel_layers(REDIS)) == []
    on_a_cluster = {**REDIS, "REDIS_CLUSTER": True}
    assert layer_findings(on_a_cluster, conf.channel_layers(on_a_cluster)) == []


def test_redis_without_the_bus_alias_is_an_error():
    assert layer_findings(REDIS, {"default": conf.channel_layers(REDIS)["default"]}) == ["signaling.E001"]


def test_redis_with_an_in_memory_default_or_another_bus_backend_warns():
    layers = {"default": conf.IN_MEMORY_LAYER, **conf.bus_layer(REDIS)}
    assert layer_findings(REDIS, layers) == ["signaling.W003"]
    layers = {**conf.channel_layers(REDIS), "peerjs": conf.channel_layers(REDIS)["default"]}
    assert layer_findings(REDIS, layers) == ["signaling.W002"]


def test_no_default_layer_warns_with_redis_only():
    assert layer_findings(REDIS, conf.bus_layer(REDIS)) == ["signaling.W001"]
    assert layer_findings({}, {}) == []  # one worker, as a site with only the app installed
