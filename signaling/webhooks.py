"""Webhooks: a signed POST to an app's backend when one of its peers connects or disconnects.

An app with a webhook URL (App.webhook_url) gets, for every
``peer_connected`` and ``peer_disconnected`` signal of its key, a POST with
the JSON body

    {"event": "peer_connected", "key": "...", "id": "...", "address": "203.0.113.5",
     "worker": "...", "at": "2026-11-29T03:41:07.123456+00:00"}

and the header ``X-PeerJS-Signature: sha256=HEX``, HEX being the
HMAC-SHA256 of the body's exact bytes with the app's webhook secret. The
receiver recomputes it, compares in constant time, and may refuse an old
``at`` to stop replays.

Sockets never wait for a webhook. The signal receiver only puts the event in
a bounded queue (no database, no network); one background thread per worker
process sends them in order. A POST waits at most PEERJS_WEBHOOK_TIMEOUT ms;
a connection error, a timeout, a 5xx or a 429 is tried again up to
PEERJS_WEBHOOK_RETRIES times, PEERJS_WEBHOOK_BACKOFF ms after the first
failure and twice as long after each next one; any other answer is final
(2xx sent, else failed). When the queue (PEERJS_WEBHOOK_QUEUE events) is
full, because a receiver is down or slow, new events are dropped. Every
outcome is counted in ``webhook_stats``: webhooks_sent, webhooks_failed,
webhooks_dropped. A slow receiver holds up the events of other apps behind
it in the queue: delivery is best-effort and at most once, a notice, not a
ledger (the admin's peer list is that).
"""
import collections
import hashlib
import hmac
import json
import logging
import queue
import threading
import urllib.error
import urllib.request

from django.db import close_old_connections, connections

from signaling import applications
from signaling.conf import options
from signaling.signals import peer_connected, peer_disconnected

logger = logging.getLogger(__name__)

webhook_stats = collections.Counter()

SIGNATURE_HEADER = "X-PeerJS-Signature"
_STOP = object()


def signature(secret, body):
    """The X-PeerJS-Signature value for ``body`` (bytes): ``sha256=`` and the hex HMAC."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None  # a redirect would turn the POST into a GET without its body: an answer, not followed


_opener = urllib.request.build_opener(_NoRedirects)


class Sender:
    """A bounded queue of events and the thread that POSTs them."""

    def __init__(self, queue_size, timeout_ms, retries, backoff_ms):
        self.queue = queue.Queue(queue_size)
        self.timeout = timeout_ms / 1000
        self.retries = retries
        self.backoff = backoff_ms / 1000
        self.stopping = threading.Event()
        self.dropping = False
        self.thread = threading.Thread(target=self._run, name="peerjs-webhooks", daemon=True)
        self.thread.start()

    def submit(self, event):
        """Queue ``event`` for sending, at once; False (counted, logged) if the queue is full."""
        try:
            self.queue.put_nowait(event)
        except queue.Full:
            webhook_stats["webhooks_dropped"] += 1
            if not self.dropping:
                self.dropping = True
                logger.warning(
                    "webhooks: queue full (%d events), dropping events until it has room",
                    self.queue.maxsize,
                )
            return False
        if self.dropping:
            self.dropping = False
            logger.warning("webhooks: queue has room again; %d events dropped so far", webhook_stats["webhooks_dropped"])
        return True

    def stop(self, timeout=5):
        """Send what is queued (once each, no more retries), then end the thread, within ``timeout`` s."""
        self.stopping.set()
        try:
            self.queue.put(_STOP, timeout=timeout)
        except queue.Full:
            pass
        self.thread.join(timeout)

    def _run(self):
        try:
            while True:
                event = self.queue.get()
                if event is _STOP:
                    return
                try:
                    close_old_connections()  # as Django does around a request
                    self._deliver(event)
                except Exception:
                    webhook_stats["webhooks_failed"] += 1
                    logger.exception("webhooks: could not send %s for %s", event["event"], event["key"])
        finally:
            connections.close_all()  # this thread's database connection, if it opened one

    def _deliver(self, event):
        # Read the app here, off the event loop: the row may have changed, or
        # never been read by this worker.
        app = applications.get_app(event["key"])
        if app is None or not app.webhook_url:
            return
        body = json.dumps(event, separators=(",", ":")).encode()
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: signature(app.webhook_secret, body),
            "User-Agent": "django-peerserver-webhook",
        }
        for attempt in range(self.retries + 1):
            if attempt and self.stopping.wait(self.backoff * 2 ** (attempt - 1)):
                break  # shutting down: no more waiting
            problem = self._post(app.webhook_url, body, headers)
            if problem is None:
                webhook_stats["webhooks_sent"] += 1
                return
            if problem.endswith("(final)"):
                break
        logger.warning(
            "webhooks: %s for %s to %s failed after %d attempt(s): %s",
            event["event"], event["key"], app.webhook_url, attempt + 1, problem,
        )
        # Counted once said: whoever sees the count can read why.
        webhook_stats["webhooks_failed"] += 1

    def _post(self, url, body, headers):
        """None when the receiver took the event; else what went wrong, ending "(final)" if retrying is pointless."""
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")
        try:
            with _opener.open(request, timeout=self.timeout) as response:
                response.read()
                return None
        except urllib.error.HTTPError as error:
            error.close()
            retry = error.code >= 500 or error.code == 429
            return f"HTTP {error.code}" + ("" if retry else " (final)")
        except (OSError, ValueError) as exc:  # refused, unreachable, timed out, bad URL
            return f"{type(exc).__name__}: {exc}"


_sender = None
_sender_lock = threading.Lock()


def get_sender():
    """This process's Sender, started on first use with the PEERJS_WEBHOOK_* options."""
    global _sender
    if _sender is None:
        with _sender_lock:
            if _sender is None:
                o = options()
                _sender = Sender(o.webhook_queue, o.webhook_timeout, o.webhook_retries, o.webhook_backoff)
    return _sender


def shutdown(timeout=5):
    """Send what is queued and stop the thread (a worker's drain); the next event starts a new one."""
    global _sender
    with _sender_lock:
        current, _sender = _sender, None
    if current is not None:
        current.stop(timeout)


def on_peer_event(signal, sender, key, peer_id, address, worker, at, **kwargs):
    """Receiver of peer_connected and peer_disconnected: queue a webhook, never wait.

    Runs on the worker's event loop: it reads only the apps cache. An app
    known to have no webhook costs nothing more; one not known yet is
    looked up by the sending thread.
    """
    known, app = applications.peek(key)
    if known and (app is None or not app.webhook_url):
        return
    get_sender().submit(
        {
            "event": "peer_connected" if signal is peer_connected else "peer_disconnected",
            "key": key,
            "id": peer_id,
            "address": address,
            "worker": worker,
            # The socket: a peer that reconnects may be connected on its new
            # socket before its old one's disconnect is sent.
            "connection": kwargs.get("connection"),
            "at": at.isoformat(),
        }
    )


def connect_receivers():
    """Called from SignalingConfig.ready()."""
    peer_connected.connect(on_peer_event, dispatch_uid="signaling.webhooks")
    peer_disconnected.connect(on_peer_event, dispatch_uid="signaling.webhooks")
