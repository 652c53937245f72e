"""Apps: keys with settings of their own, resolved per worker, edited in the admin.

In-process, on the test database: how a key resolves (the default app from
the environment, rows, unknown keys), how long a worker keeps an answer,
what the model accepts, and what operators see and do in the admin. Real
workers seeing an edit, and a database outage, are in test_apps_http.py.
"""
import re

import pytest
from asgiref.sync import async_to_sync
from django.core.exceptions import ValidationError
from django.test import override_settings

from signaling import applications, conf
from signaling.models import App

pytestmark = [pytest.mark.fast, pytest.mark.db, pytest.mark.django_db(transaction=True), pytest.mark.postgres]


@pytest.fixture(autouse=True)
def fresh_cache():
    applications.forget()
    yield
    applications.forget()


# A webhook's host must be public or allowed (signaling.webhooks.resolve): the
# webhooks of these tests, never sent, go to a documentation network allowed
# as an operator allows a backend on the LAN.
WEBHOOK_URL = "https://192.0.2.10/peers"


@pytest.fixture(autouse=True)
def webhook_network_allowed(settings):
    settings.PEERJS = {**conf.from_environ({}), "WEBHOOK_ALLOW_NETWORKS": ["192.0.2.0/24"]}


def peerjs(**overrides):
    return override_settings(PEERJS={**conf.from_environ({}), **overrides})


def make_app(**fields):
    values = {"key": "stage", "name": "Stage", **fields}
    app = App(**values)
    app.full_clean()
    app.save()
    return app


class Clock:
    """The apps cache's clock, moved by hand."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    c = Clock()
    monkeypatch.setattr(applications, "clock", c)
    return c


# --- how a key resolves ------------------------------------------------------------


def test_the_default_key_without_a_row_has_the_environments_settings():
    with peerjs(KEY="peerjs", CONCURRENT_LIMIT=7, ALLOW_DISCOVERY=True, CORS_ORIGINS=["https://a.example"],
                TURN_URLS=["turn:t.example:3478"], TURN_SECRET="s3cret", TURN_TTL=600):
        app = applications.get_app("peerjs")
    assert app.from_environment
    assert (app.key, app.concurrent_limit, app.allow_discovery, app.origins) == ("peerjs", 7, True, ("https://a.example",))
    assert (app.auth, app.turn_urls, app.turn_secret, app.turn_ttl) == ("none", ("turn:t.example:3478",), "s3cret", 600)


def test_the_environments_any_origin_is_an_empty_list():
    with peerjs():
        app = applications.get_app("peerjs")
    assert app.origins == () and app.origin_allowed("https://anywhere.example")


def test_an_unknown_key_resolves_to_nothing():
    with peerjs():
        assert applications.get_app("nosuchapp") is None


def test_a_row_with_the_default_key_replaces_the_environments_settings():
    make_app(key="peerjs", name="Seed", allow_discovery=True, auth="token", allowed_origins="https://b.example\n")
    with peerjs(ALLOW_DISCOVERY=False, CONCURRENT_LIMIT=9):
        app = applications.get_app("peerjs")
    assert not app.from_environment
    assert (app.name, app.allow_discovery, app.auth, app.origins) == ("Seed", True, "token", ("https://b.example",))
    assert app.concurrent_limit == 9  # left empty: the environment's limit
    assert not app.origin_allowed("https://a.example") and app.origin_allowed("https://b.example")


def test_a_row_has_its_own_limit_origins_and_generated_token_secret():
    row = make_app(concurrent_limit=3, allowed_origins="https://a.example\nhttps://b.example:8443")
    with peerjs():
        app = applications.get_app("stage")
    assert (app.concurrent_limit, app.origins) == (3, ("https://a.example", "https://b.example:8443"))
    assert app.token_secret == row.token_secret and len(row.token_secret) >= conf.MIN_TOKEN_SECRET_LENGTH
    assert make_app(key="other").token_secret != row.token_secret


def test_secrets_stay_out_of_the_settings_repr():
    make_app(token_secret="t" * 40, turn_urls="turn:x", turn_secret="turn-secret-value",
             webhook_url=WEBHOOK_URL, webhook_secret="hook-secret-value")
    with peerjs():
        text = repr(applications.get_app("stage"))
    assert "t" * 40 not in text and "turn-secret-value" not in text and "hook-secret-value" not in text


def test_aget_app_answers_as_get_app():
    # Through async_to_sync, the database hop runs on this thread, with the
    # test's own connection (a connection left open on a thread of its own
    # would keep PostgreSQL from dropping the test database).
    make_app(name="Async")
    with peerjs():
        assert async_to_sync(applications.aget_app)("stage").name == "Async"
        assert async_to_sync(applications.aget_app)("nosuchapp") is None


# --- the per-worker cache ----------------------------------------------------------


def test_an_edit_is_seen_once_the_cache_period_has_passed(clock):
    row = make_app(allow_discovery=False)
    with peerjs(APP_CACHE=2000):
        assert applications.get_app("stage").allow_discovery is False
        App.objects.filter(pk=row.pk).update(allow_discovery=True)
        clock.now += 1.9
        assert applications.get_app("stage").allow_discovery is False  # still the cached answer
        clock.now += 0.2
        assert applications.get_app("stage").allow_discovery is True


def test_a_new_app_and_a_deleted_one_are_seen_after_the_cache_period(clock):
    with peerjs(APP_CACHE=500):
        assert applications.get_app("stage") is None
        row = make_app()
        clock.now += 0.6
        assert applications.get_app("stage").name == "Stage"
        row.delete()
        clock.now += 0.6
        assert applications.get_app("stage") is None


def test_a_cache_of_zero_reads_every_time():
    with peerjs(APP_CACHE=0):
        row = make_app(name="Before")
        assert applications.get_app("stage").name == "Before"
        App.objects.filter(pk=row.pk).update(name="After")
        assert applications.get_app("stage").name == "After"


def test_invented_keys_do_not_grow_the_cache_for_ever(clock):
    with peerjs(APP_CACHE=1000):
        for n in range(applications._PRUNE_AT):
            applications.get_app(f"invented{n}")
        clock.now += 2
        applications.get_app("one-more")
        assert len(applications._cache) <= 2


# --- the model ---------------------------------------------------------------------


@pytest.mark.parametrize("key", ["", "has space", "a/b", "a?b", "a&b", ".hidden", "é"])
def test_a_key_must_travel_unencoded_in_urls(key):
    with pytest.raises(ValidationError) as error:
        make_app(key=key)
    assert "key" in error.value.message_dict


@pytest.mark.parametrize("origins", ["app.example", "https://app.example/path", "ftp://app.example", "https://"])
def test_allowed_origins_must_be_origins(origins):
    with pytest.raises(ValidationError) as error:
        make_app(allowed_origins=origins)
    assert "allowed_origins" in error.value.message_dict


def test_ice_urls_must_be_stun_or_turn_and_turn_needs_the_shared_secret():
    with pytest.raises(ValidationError) as error:
        make_app(turn_urls="https://turn.example")
    assert "turn_urls" in error.value.message_dict
    with pytest.raises(ValidationError) as error:
        make_app(turn_urls="turn:turn.example:3478")
    assert "turn_secret" in error.value.message_dict
    make_app(turn_urls="stun:stun.example:3478")  # STUN needs no secret


def test_a_webhook_needs_a_secret():
    with pytest.raises(ValidationError) as error:
        make_app(webhook_url=WEBHOOK_URL)
    assert "webhook_secret" in error.value.message_dict


def test_the_environment_refuses_turn_urls_without_a_secret_and_token_auth_without_a_long_secret():
    from django.core.exceptions import ImproperlyConfigured

    with pytest.raises(ImproperlyConfigured, match="PEERJS_TURN_SECRET"):
        conf._validated(conf.from_environ({"PEERJS_TURN_URLS": "turn:t.example:3478"}))
    with pytest.raises(ImproperlyConfigured, match="PEERJS_TURN_URLS"):
        conf._validated(conf.from_environ({"PEERJS_TURN_URLS": "http://t.example"}))
    with pytest.raises(ImproperlyConfigured, match="PEERJS_TOKEN_SECRET"):
        conf._validated(conf.from_environ({"PEERJS_AUTH": "token", "PEERJS_TOKEN_SECRET": "short"}))
    with pytest.raises(ImproperlyConfigured, match="PEERJS_AUTH"):
        conf._validated(conf.from_environ({"PEERJS_AUTH": "password"}))


# --- the admin ---------------------------------------------------------------------

ADD = "/admin/signaling/app/add/"


def form(**fields):
    return {
        "key": "stage", "name": "Stage", "allowed_origins": "", "concurrent_limit": "",
        "auth": "none", "turn_urls": "", "turn_secret": "", "turn_ttl": "86400",
        "webhook_url": "", "webhook_secret": "", **fields,
    }


def change_url(app):
    return f"/admin/signaling/app/{app.pk}/change/"


def test_an_operator_adds_an_app_and_finds_it_in_the_list(admin_client):
    response = admin_client.post(ADD, form(auth="token", allow_discovery="on", concurrent_limit="25"))
    assert response.status_code == 302, response.content.decode()
    app = App.objects.get(key="stage")
    assert (app.auth, app.allow_discovery, app.concurrent_limit) == ("token", True, 25)
    listing = admin_client.get("/admin/signaling/app/", {"q": "stag"}).content.decode()
    assert "stage" in listing and "Stage" in listing


def test_the_token_secret_is_readable_and_rotates_on_request(admin_client):
    app = make_app(auth="token")
    page = admin_client.get(change_url(app)).content.decode()
    assert app.token_secret in page  # the operator gives it to the app's backend
    old = app.token_secret
    admin_client.post(change_url(app), form(auth="token", name="Renamed"))
    app.refresh_from_db()
    assert (app.name, app.token_secret) == ("Renamed", old)  # a plain save keeps it
    response = admin_client.post(change_url(app), form(auth="token", rotate_token_secret="on"), follow=True)
    app.refresh_from_db()
    assert app.token_secret != old and len(app.token_secret) >= conf.MIN_TOKEN_SECRET_LENGTH
    assert "was rotated" in response.content.decode()


def test_turn_and_webhook_secrets_are_write_only(admin_client):
    admin_client.post(ADD, form(turn_urls="turn:turn.example:3478", turn_secret="turn-secret-value",
                                webhook_url=WEBHOOK_URL, webhook_secret="hook-secret-value"))
    app = App.objects.get(key="stage")
    assert (app.turn_secret, app.webhook_secret) == ("turn-secret-value", "hook-secret-value")
    page = admin_client.get(change_url(app)).content.decode()
    assert "turn-secret-value" not in page and "hook-secret-value" not in page
    assert len(re.findall(r"<b>Set.</b>", page)) == 2
    # Saved with the secret fields left blank: both kept.
    admin_client.post(change_url(app), form(name="Renamed", turn_urls="turn:turn.example:3478",
                                            webhook_url=WEBHOOK_URL))
    app.refresh_from_db()
    assert (app.name, app.turn_secret, app.webhook_secret) == ("Renamed", "turn-secret-value", "hook-secret-value")
    # A new value replaces the old one.
    admin_client.post(change_url(app), form(turn_urls="turn:turn.example:3478", turn_secret="rotated-turn-secret",
                                            webhook_url=WEBHOOK_URL))
    app.refresh_from_db()
    assert app.turn_secret == "rotated-turn-secret"


def test_the_admin_explains_what_is_missing(admin_client):
    response = admin_client.post(ADD, form(key="bad key", turn_urls="turn:turn.example:3478"))
    page = response.content.decode()
    assert response.status_code == 200 and not App.objects.exists()
    assert "the key travels unencoded in URLs" in page
    assert "turn:/turns: URLs need the TURN server&#x27;s shared secret" in page
