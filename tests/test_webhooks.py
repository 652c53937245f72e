"""Webhooks: an app's backend hears of its peers coming and going, and no socket ever waits for it.

The signals are sent in-process here, as the worker's hub sends them; the
app's backend is a real HTTP server run by the test, which records every
POST and answers as each test scripts it (a status, or holding the request
until the test releases it).
"""
import asyncio
import datetime
import hashlib
import hmac
import http.server
import json
import logging
import queue
import socket
import ssl
import threading
import time

import pytest
from django.core.exceptions import ValidationError
from django.test import override_settings

from signaling import applications, conf, metrics, webhooks
from signaling.models import App
from signaling.signals import peer_connected, peer_disconnected
from signaling.webhooks import webhook_stats
from tests.servers import wait_until

pytestmark = [pytest.mark.fast, pytest.mark.db, pytest.mark.django_db(transaction=True)]

SECRET = "the-apps-webhook-secret"
AT = datetime.datetime(2026, 11, 29, 3, 41, 7, 123456, tzinfo=datetime.UTC)


class Backend:
    """An app's backend: records each POST, answers with the next scripted status (then 200).

    ``location`` goes out with a 3xx; ``tls`` (tests.servers.Certificates)
    makes it serve HTTPS as localhost.
    """

    def __init__(self, statuses=(), location=None, tls=None):
        self.statuses = list(statuses)
        self.location = location
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
                if 300 <= status < 400:
                    self.send_header("Location", backend.location)
                self.send_header("Content-Length", "0")
                self.end_headers()
                backend.answered.set()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/peers"
        if tls is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(tls.cert, tls.key)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
            self.url = f"https://localhost:{self.server.server_port}/peers"
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


# The backends of these tests listen on this machine, over plain HTTP: what
# an operator must allow on purpose.
LOOPBACK_ALLOWED = {"WEBHOOK_ALLOW_HTTP": True, "WEBHOOK_ALLOW_NETWORKS": ["127.0.0.0/8"]}


def options(**overrides):
    fast = {"WEBHOOK_BACKOFF": 50, "WEBHOOK_TIMEOUT": 5000, "WEBHOOK_RETRIES": 3}
    return override_settings(PEERJS={**conf.from_environ({}), **fast, **LOOPBACK_ALLOWED, **overrides})


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
        # What docs/apps.md tells a backend to do: HMAC-SHA256 of the raw body with the secret.
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


# --- where a webhook may go -----------------------------------------------------------


def refusal(url, **overrides):
    """The form error an operator gets for ``url``, or None."""
    with options(**overrides):
        app = App(key="stage", name="Stage", webhook_url=url, webhook_secret=SECRET)
        try:
            app.full_clean()
        except ValidationError as error:
            return " ".join(error.message_dict.get("webhook_url", [])) or None
    return None


def test_a_listener_on_this_machine_is_refused_unless_the_allow_list_names_it(backend, caplog):
    assert refusal(backend.url) is None  # 127.0.0.0/8 allowed by the tests' settings
    assert "127.0.0.1 is at 127.0.0.1, a loopback address" in refusal(backend.url, WEBHOOK_ALLOW_NETWORKS=[])
    # A row saved before (or written around the admin) is checked again when it is sent.
    app_with_webhook(backend.url)
    with options(WEBHOOK_ALLOW_NETWORKS=[]), caplog.at_level(logging.WARNING, logger="signaling.webhooks"):
        connected()
        wait_until(lambda: webhook_stats["webhooks_failed"] == 1, 5, "the refusal to be counted")
    assert backend.received.empty()  # refused before any connection, and not tried again
    assert "failed after 1 attempt(s): refused: 127.0.0.1 is at 127.0.0.1, a loopback address" in caplog.text


def test_a_name_is_refused_for_any_address_it_has_that_is_not_public():
    assert "localhost is at 127.0.0.1, a loopback address" in refusal("https://localhost/peers", WEBHOOK_ALLOW_NETWORKS=[])
    assert "hooks.invalid cannot be looked up" in refusal("https://hooks.invalid/peers")
    for address, why in [("10.1.2.3", "a private address"), ("169.254.169.254", "a link-local address"),
                         ("[::1]", "a loopback address"), ("[fd00::5]", "a private address"),
                         ("[::ffff:192.168.1.1]", "a private address"), ("100.64.0.1", "not a public address")]:
        assert why in refusal(f"https://{address}/peers"), address
    assert refusal("https://10.1.2.3/peers", WEBHOOK_ALLOW_NETWORKS=["10.1.2.0/24"]) is None


def test_only_https_unless_http_is_allowed_and_never_ftp():
    listener = socket.create_server(("127.0.0.1", 0))  # a plain TCP listener: an FTP server would say hello
    listener.settimeout(0)
    port = listener.getsockname()[1]
    try:
        assert "ftp:// is not a scheme webhooks use" in refusal(f"ftp://127.0.0.1:{port}/")
        assert "http:// is not allowed for webhooks" in refusal(f"http://127.0.0.1:{port}/", WEBHOOK_ALLOW_HTTP=False)
        assert refusal(f"https://127.0.0.1:{port}/", WEBHOOK_ALLOW_HTTP=False) is None
        for url, overrides in [(f"ftp://127.0.0.1:{port}/", {}), (f"http://127.0.0.1:{port}/", {"WEBHOOK_ALLOW_HTTP": False})]:
            webhook_stats.clear()
            App.objects.filter(key="stage").delete()
            app_with_webhook(url)
            with options(**overrides):
                connected()
                wait_until(lambda: webhook_stats["webhooks_failed"] == 1, 5, "the refusal to be counted")
            applications.forget()
        with pytest.raises(BlockingIOError):
            listener.accept()  # nobody ever connected
    finally:
        listener.close()


def test_a_redirect_is_an_answer_and_never_followed(backend):
    elsewhere = Backend()
    try:
        backend.statuses, backend.location = [307], elsewhere.url
        app_with_webhook(backend.url)
        with options():
            connected()
            wait_until(lambda: webhook_stats["webhooks_failed"] == 1, 5, "the redirect to count as failed")
        assert backend.received.qsize() == 1 and elsewhere.received.empty()
    finally:
        elsewhere.stop()


def test_the_post_goes_to_the_address_that_was_checked_not_to_a_new_lookup(backend):
    # hooks.invalid resolves nowhere: the POST reaches the backend only through the checked address.
    target = webhooks.Target("http", "hooks.invalid", backend.server.server_port, "/peers?app=stage", ("127.0.0.1",))
    assert webhooks.post(target, b"{}", {"Content-Type": "application/json"}, timeout=5) is None
    path, headers, _ = backend.next_post()
    assert path == "/peers?app=stage" and headers["Host"] == f"hooks.invalid:{backend.server.server_port}"


@pytest.fixture(scope="module")
def certificates(tmp_path_factory):
    from tests.servers import Certificates

    return Certificates(tmp_path_factory.mktemp("webhook-tls"))


def test_an_https_backend_gets_its_posts_with_its_certificate_checked(certificates, monkeypatch):
    monkeypatch.setenv("SSL_CERT_FILE", str(certificates.ca))  # the machine trusts the tests' CA
    secure = Backend(tls=certificates)
    try:
        app_with_webhook(secure.url)
        with options(WEBHOOK_ALLOW_HTTP=False):
            connected()
            _, headers, body = secure.next_post()
            wait_until(lambda: webhook_stats["webhooks_sent"] == 1, 5, "the post to be counted")
        assert headers["Host"] == f"localhost:{secure.server.server_port}" and json.loads(body)["event"] == "peer_connected"
    finally:
        secure.stop()


# --- on a real worker, whose names resolve as the test says ---------------------------


async def test_a_name_is_checked_when_the_app_is_saved_and_again_at_each_send(make_server, backend, tmp_path):
    from tests.admin_http import AdminSession, Apps, create_superuser
    from tests.client import connect

    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n10.20.30.40 hooks.test\n")
    worker = make_server({
        "PEERJS_WEBHOOK_ALLOW_HTTP": "1", "PEERJS_WEBHOOK_ALLOW_NETWORKS": "127.0.0.1/32", "PEERJS_APP_CACHE": "0",
    }, server="uvicorn", hosts=hosts)
    operator = AdminSession(worker)
    operator.login(create_superuser(worker, "the-operators-password"), "the-operators-password")
    apps = Apps(operator, worker.database)
    key, url = f"hooked-{time.monotonic_ns()}", f"http://hooks.test:{backend.server.server_port}/peers"

    page = await asyncio.to_thread(
        operator.post, Apps.PATH + "add/", Apps._posted(Apps.form(key, webhook_url=url, webhook_secret=SECRET)),
    )
    assert "hooks.test is at 10.20.30.40, a private address" in page.body
    assert not worker.database.query("SELECT id FROM signaling_app WHERE key = ?", (key,))

    hosts.write_text("127.0.0.1 localhost\n127.0.0.1 hooks.test\n")  # now it leads to the allowed backend
    await asyncio.to_thread(apps.add, key, webhook_url=url, webhook_secret=SECRET)
    peer = await connect(worker, key=key)
    _, headers, body = await asyncio.to_thread(backend.next_post)
    assert json.loads(body)["id"] == peer.peer_id and headers["Host"] == f"hooks.test:{backend.server.server_port}"

    hosts.write_text("127.0.0.1 localhost\n10.20.30.40 hooks.test\n")  # and then somewhere inside
    await peer.close()
    await asyncio.to_thread(
        wait_until, lambda: "refused: hooks.test is at 10.20.30.40" in worker.read_log(), 10, "the send to be refused",
    )
    assert backend.received.empty()
