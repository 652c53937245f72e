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
(2xx sent, else failed; a redirect is an answer, never followed). When the
queue (PEERJS_WEBHOOK_QUEUE events) is
full, because a receiver is down or slow, new events are dropped. Every
outcome is counted in ``webhook_stats``: webhooks_sent, webhooks_failed,
webhooks_dropped. A slow receiver holds up the events of other apps behind
it in the queue: delivery is best-effort and at most once, a notice, not a
ledger (the admin's peer list is that).

Where a webhook may go (:func:`resolve`): an app's URL would otherwise let
whoever edits apps make the server POST into its own network (Redis, a
metadata service, an admin port). So only ``https://`` (and ``http://`` with
PEERJS_WEBHOOK_ALLOW_HTTP), to a host whose every address is public, or in
PEERJS_WEBHOOK_ALLOW_NETWORKS. It is checked when an App is saved, and again
before each POST, because a name may resolve elsewhere by then; the POST
then connects to the address just checked, never to a second lookup's.
"""
import collections
import dataclasses
import hashlib
import hmac
import http.client
import ipaddress
import json
import logging
import queue
import socket
import ssl
import threading
import urllib.parse

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


class RefusedURL(ValueError):
    """A webhook URL the server does not post to; the message says why, for the operator."""


@dataclasses.dataclass(frozen=True)
class Target:
    """Where a POST goes: the URL's parts, and the addresses its host was found at and checked."""

    scheme: str
    host: str
    port: int
    path: str  # with the query
    addresses: tuple


# IPv6 ranges that carry an IPv4 address to a gateway that reaches it (NAT64's
# well-known prefix; 6to4 and IPv4-mapped are read by ipaddress itself).
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def _not_public(ip):
    """Why ``ip`` is no public address ("a loopback address", ...), or None if it is one."""
    if ip.version == 6:
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            return _not_public(embedded)
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_multicast:
        return "a multicast address"
    if ip.is_private:
        return "a private address"
    if not ip.is_global:
        return "not a public address"
    return None


def resolve(url, options):
    """Where a POST to ``url`` may go, its host looked up now: a Target.

    RefusedURL says why the URL may not be posted to (its scheme, or an
    address of its host that is not public and not allowed); OSError that
    the host could not be looked up (which may pass).
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "http" and not options.webhook_allow_http:
        raise RefusedURL("http:// is not allowed for webhooks on this server (PEERJS_WEBHOOK_ALLOW_HTTP): use https://")
    if parts.scheme not in ("http", "https"):
        raise RefusedURL(f"{parts.scheme or 'no'}:// is not a scheme webhooks use: use https://")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise RefusedURL("the URL's port is not a number from 0 to 65535") from None
    if not parts.hostname:
        raise RefusedURL("the URL has no host")
    if parts.username is not None:
        raise RefusedURL("a user or password in the URL is never sent: the signature authenticates the POST")
    found = socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
    addresses = tuple(dict.fromkeys(info[4][0] for info in found))
    for address in addresses:
        ip = ipaddress.ip_address(address)
        if any(ip in network for network in options.webhook_allow_networks):
            continue
        why = _not_public(ip)
        if why:
            raise RefusedURL(
                f"{parts.hostname} is at {address}, {why}: webhooks go to public addresses, "
                "or to networks named in PEERJS_WEBHOOK_ALLOW_NETWORKS"
            )
    path = parts.path or "/"
    return Target(parts.scheme, parts.hostname, port, f"{path}?{parts.query}" if parts.query else path, addresses)


def url_problem(url, options):
    """Why ``url`` cannot take webhooks, for a form; None if it can (now)."""
    try:
        resolve(url, options)
    except RefusedURL as exc:
        return str(exc)
    except OSError as exc:
        host = urllib.parse.urlsplit(url).hostname
        return f"{host} cannot be looked up ({exc.strerror or exc}), so where it leads cannot be checked"
    return None


class _Pinned(http.client.HTTPConnection):
    """HTTP to the address checked beforehand: a second lookup of the name could lead elsewhere."""

    def __init__(self, target, timeout):
        super().__init__(target.host, target.port, timeout=timeout)
        self.target = target

    def connect(self):
        self.sock = socket.create_connection((self.target.addresses[0], self.port), self.timeout)


class _PinnedTLS(_Pinned):
    """HTTPS to the address checked beforehand, the certificate checked for the URL's host."""

    default_port = 443  # the Host header leaves it out

    def connect(self):
        super().connect()
        # Made per connection, so that a change of the system's certificate
        # store (or SSL_CERT_FILE) needs no restart.
        self.sock = ssl.create_default_context().wrap_socket(self.sock, server_hostname=self.target.host)


def post(target, body, headers, timeout):
    """POST ``body`` to ``target``; None when the receiver took it, else what went wrong, ending "(final)" if retrying is pointless."""
    connection = (_PinnedTLS if target.scheme == "https" else _Pinned)(target, timeout)
    try:
        connection.request("POST", target.path, body=body, headers=headers)
        with connection.getresponse() as response:
            response.read()
            status = response.status
    except (OSError, http.client.HTTPException) as exc:  # refused, unreachable, timed out, TLS, garbled
        return f"{type(exc).__name__}: {exc}"
    finally:
        connection.close()
    if 200 <= status < 300:
        return None
    # A redirect is an answer like any other: followed, it would take the
    # POST where the checks above never looked.
    retry = status >= 500 or status == 429
    return f"HTTP {status}" + ("" if retry else " (final)")


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
        try:
            # Looked up and checked again for each try: DNS may have changed
            # since the app was saved, or since the last try.
            target = resolve(url, options())
        except RefusedURL as exc:
            return f"refused: {exc} (final)"
        except OSError as exc:  # the lookup failed: it may pass
            return f"lookup failed: {exc}"
        return post(target, body, headers, self.timeout)


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
