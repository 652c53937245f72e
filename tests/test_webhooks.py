"""Webhooks: an app's backend hears of its peers coming and going, and no socket ever waits for it.

The signals are sent in-process here, as the worker's hub sends them; the
app's backend is a real HTTP server run by the test, which records every
POST and answers as each test scripts it (a status, or holding the request
until the test releases it).
"""
import datetime
import hashlib
import hmac
import http.server
import json
import logging
import queue
import threading
import time

import pytest
from django.test import override_settings

from signaling import applications, conf, metrics, webhooks
from signaling.models import App
from signaling.signals import peer_connected, peer_disconnected
from signaling.webhooks import webhook_stats
from tests.servers import wait_until

pytestmark = [pytest.mark.db, pytest.mark.django_db(transaction=True)]

SECRET = "the-apps-webhook-secret"
AT = datetime.datetime(2026, 11, 29, 3, 41, 7, 123456, tzinfo=datetime.UTC)


class Backend:
    """An app's backend: records each POST, answers with the next scripted status (then 200)."""

    def __init__(self, statuses=()):
        self.statuses = list(statuses)
        self.received = queue.Queue()
        self.arrived = threading.Event()
        self.release = threading.Event()
        self.release.set()  # answer at once unless a test holds requests
        self.answered = threading.Event()
        backend = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                backend.received.put((self.path, self.headers, body))  # names case-insensitive, as HTTP
                backend.arrived.set()
                backend.release.wait(30)
                status = backend.statuses.pop(0) if backend.statuses else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()
                backend.answered.set()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/peers"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def next_post(self, timeout=10):
        return self.received.get(timeout=timeout)

    def stop(self):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def backend():
    b = Backend()
    yield b
    b.stop()


def options(**overrides):
    fast = {"WEBHOOK_BACKOFF": 50, "WEBHOOK_TIMEOUT": 5000, "WEBHOOK_RETRIES": 3}
    return override_settings(PEERJS={**conf.from_environ({}), **fast, **overrides})


@pytest.fixture(autouse=True)
def fresh_sender():
    webhooks.shutdown()
    applications.forget()
    webhook_stats.clear()
    yield
    webhooks.shutdown(timeout=1)
    applications.forget()


def app_with_webhook(url, key="stage"):
    return App.objects.create(key=key, name="Stage", webhook_url=url, webhook_secret=SECRET)


def connected(key="stage", peer_id="stage-left"):
    peer_connected.send(
        sender="worker-1", key=key, peer_id=peer_id, address="203.0.113.5", worker="worker-1", connection="c7", at=AT
    )


def disconnected(key="stage", peer_id="stage-left"):
    peer_disconnected.send(
        sender="worker-1", key=key, peer_id=peer_id, address=None, worker="worker-1", connection="c7", at=AT
    )


def test_each_connect_and_disconnect_is_posted_with_a_signature_the_backend_can_check(backend):
    app_with_webhook(backend.url)
    with options():
        connected()
        disconnected()
        posts = [backend.next_post(), backend.next_post()]
    for (path, headers, body), event, address in zip(
        posts, ["peer_connected", "peer_disconnected"], ["203.0.113.5", None]
    ):
        assert path == "/peers" and headers["Content-Type"] == "application/json"
        assert json.loads(body) == {
            "event": event, "key": "stage", "id": "stage-left", "address": address,
            "worker": "worker-1", "connection": "c7", "at": "2026-11-29T03:41:07.123456+00:00",
        }
        # What the README tells a backend to do: HMAC-SHA256 of the raw body with the secret.
        expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(headers["X-PeerJS-Signature"], expected)
    wait_until(lambda: webhook_stats["webhooks_sent"] == 2, 5, "both to be counted")


def test_a_signature_made_with_another_secret_does_not_match(backend):
    app_with_webhook(backend.url)
    with options():
        connected()
        _, headers, body = backend.next_post()
    forged = "sha256=" + hmac.new(b"another-secret", body, hashlib.sha256).hexdigest()
    assert headers["X-PeerJS-Signature"] != forged


def test_a_500_is_tried_again_with_the_same_body(backend):
    backend.statuses = [500, 503]
    app_with_webhook(backend.url)
    with options():
        connected()
        bodies = [backend.next_post()[2] for _ in range(3)]
        wait_until(lambda: webhook_stats["webhooks_sent"] == 1, 5, "the third try to be counted as sent")
    assert bodies[0] == bodies[1] == bodies[2]
    assert webhook_stats["webhooks_failed"] == 0


def test_a_backend_that_keeps_failing_is_tried_a_bounded_number_of_times_then_counted(backend, caplog):
    backend.statuses = [500] * 10
    app_with_webhook(backend.url)
    with options(WEBHOOK_RETRIES=2), caplog.at_level(logging.WARNING, logger="signaling.webhooks"):
        connected()
        for _ in range(3):
            backend.next_post()
        wait_until(lambda: webhook_stats["webhooks_failed"] == 1, 5, "the failure to be counted")
    assert backend.received.empty()  # counted only after the last try: there was no fourth
    assert webhook_stats["webhooks_sent"] == 0
    assert "failed after 3 attempt(s): HTTP 500" in caplog.text
    # Operators see it where they look: the worker's /metrics.
    assert 'peerjs_webhooks_total{outcome="failed"} 1.0' in metrics.exposition(None).decode()


def test_a_refusal_is_final(backend):
    backend.statuses = [403]
    app_with_webhook(backend.url)
    with options():
        connected()
        backend.next_post()
        wait_until(lambda: webhook_stats["webhooks_failed"] == 1, 5, "the refusal to be counted")
    assert backend.received.empty()


def test_an_unreachable_backend_is_counted_failed():
    dead = Backend()
    dead.stop()  # nothing listens there any more
    app_with_webhook(dead.url)
    with options(WEBHOOK_RETRIES=1):
        connected()
        wait_until(lambda: webhook_stats["webhooks_failed"] == 1, 5, "the failure to be counted")


def test_a_backend_that_does_not_answer_never_delays_the_signal(backend):
    backend.release.clear()  # hold every request until released
    # A safety net, not a synchronisation: if sending blocked, it would
    # return only once this let the backend answer, and the test fails.
    threading.Timer(3, backend.release.set).start()
    app_with_webhook(backend.url)
    with options():
        applications.get_app("stage")  # the hub has it cached from the connect
        for _ in range(3):
            started = time.monotonic()
            connected()
            assert time.monotonic() - started < 0.5  # far below the 3 s safety net
        assert not backend.answered.is_set()  # every send returned while the backend sat on the first POST
        assert backend.arrived.wait(5)  # and that POST did go out
        backend.release.set()
        wait_until(lambda: webhook_stats["webhooks_sent"] == 3, 10, "all three to be sent once released")


def test_a_full_queue_drops_events_counts_and_logs_them(backend, caplog):
    backend.release.clear()
    threading.Timer(10, backend.release.set).start()  # safety net
    app_with_webhook(backend.url)
    with options(WEBHOOK_QUEUE=2), caplog.at_level(logging.WARNING, logger="signaling.webhooks"):
        connected(peer_id="first")
        assert backend.arrived.wait(5)  # the sender is busy with it, held by the backend
        started = time.monotonic()
        for n in range(4):
            connected(peer_id=f"next{n}")
        assert time.monotonic() - started < 0.5
        assert webhook_stats["webhooks_dropped"] == 2  # two waited in the queue, two did not fit
        assert "queue full" in caplog.text
        backend.release.set()
        ids = [json.loads(backend.next_post()[2])["id"] for _ in range(3)]
        wait_until(lambda: webhook_stats["webhooks_sent"] == 3, 10, "the queued ones to be sent")
    assert ids == ["first", "next0", "next1"]


def test_events_of_apps_without_a_webhook_or_of_unknown_keys_post_nothing(backend):
    app_with_webhook(backend.url)
    App.objects.create(key="quiet", name="Quiet")
    with options():
        connected(key="quiet")
        connected(key="nosuchapp")
        connected(key="stage", peer_id="last")
        _, _, body = backend.next_post()
        wait_until(lambda: webhook_stats["webhooks_sent"] == 1, 5, "the one post to be counted")
    assert json.loads(body)["id"] == "last" and backend.received.empty()
