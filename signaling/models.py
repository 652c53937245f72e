"""The registry: who is connected, on which worker, and what waits for whom.

The database is the registry of record for the whole cluster. The primary
key on ``Peer.peer_id`` is the lock that makes an id unique across workers;
relaying never reads these tables (workers keep their own peers in memory).
"""
import re
import secrets
from urllib.parse import urlsplit

from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator
from django.db import models
from django.utils import timezone

from signaling.conf import AUTH_NONE, AUTH_SESSION, AUTH_TOKEN, ICE_URL_SCHEMES, TURN_URL_SCHEMES


class Worker(models.Model):
    """A server process that holds sockets; it beats while alive."""

    name = models.CharField(max_length=100, primary_key=True)
    host = models.CharField(max_length=255)
    pid = models.PositiveIntegerField()
    started_at = models.DateTimeField()
    last_beat = models.DateTimeField(db_index=True)
    # What the worker counted, as of its last beat (signaling.metrics.Recent):
    # written in the beat's own UPDATE, read by the admin's overview.
    stats = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name


class Overview(Worker):
    """The cluster overview's entry in the admin (signaling.admin.OverviewAdmin), beside the workers it shows.

    A proxy, so that the admin lists the page under the app through its own
    machinery: no table, no permissions of its own (it shows the workers to
    those who may view them).
    """

    class Meta:
        proxy = True
        verbose_name = verbose_name_plural = "cluster overview"
        default_permissions = ()


class Peer(models.Model):
    """One connected peer: a row per open, registered socket.

    Ids are unique per key, as in the reference's realm: two apps (keys) may
    each have a peer "stage".
    """

    key = models.CharField(max_length=255)
    peer_id = models.CharField("id", max_length=255)
    # SHA-256 of the client's token: enough to recognise a reconnecting
    # client, useless to anyone who reads the table.
    token_hash = models.CharField(max_length=64, editable=False)
    worker = models.CharField(max_length=100, db_index=True)
    # Identifies the socket within the cluster, so a stale socket can only
    # ever remove its own registration.
    connection = models.CharField(max_length=32, db_index=True)
    address = models.GenericIPAddressField("client address", null=True, blank=True, db_index=True)
    connected_at = models.DateTimeField(db_index=True)
    last_seen = models.DateTimeField()

    class Meta:
        ordering = ["-connected_at"]
        constraints = [models.UniqueConstraint(fields=["key", "peer_id"], name="signaling_peer_unique_per_key")]

    def __str__(self):
        return self.peer_id


class PeerCount(models.Model):
    """How many peers of an app (key) are registered, kept by the database itself.

    Triggers on the registry (migration 0008) add and subtract as its rows
    come and go, whoever writes them, so a claim reads its app's count in one
    row instead of counting the app's rows: with 100 000 peers registered,
    that COUNT took 160 ms on PostgreSQL, and every claim of the app waited
    for it in turn (bench/scale.py).
    """

    key = models.CharField(max_length=255, primary_key=True)
    peers = models.IntegerField(default=0)

    def __str__(self):
        return f"{self.key}: {self.peers}"


class QueuedMessage(models.Model):
    """A relayed frame waiting for its destination to connect."""

    key = models.CharField(max_length=255)
    dst = models.CharField(max_length=255)
    src = models.CharField(max_length=255)
    frame = models.TextField()
    size = models.PositiveIntegerField()
    queued_at = models.DateTimeField()
    expires_at = models.DateTimeField(db_index=True)

    class Meta:
        ordering = ["id"]
        indexes = [
            models.Index(fields=["key", "dst"], name="signaling_queue_dst"),
            models.Index(fields=["key", "src"], name="signaling_queue_src"),
        ]

    def __str__(self):
        return f"{self.src} -> {self.dst}"


class Ban(models.Model):
    """A peer id or a client address that may not open a socket until the ban ends.

    One row bans one thing: a peer id, or an address (a whole NAT, use with
    care). Workers keep the active bans in memory (signaling.bans), so a
    socket's open costs no query for them.
    """

    key = models.CharField(
        max_length=255,
        blank=True,
        help_text="The app's key (PeerJS's <code>key</code> option). Blank: every app.",
    )
    peer_id = models.CharField("peer id", max_length=255, blank=True, db_index=True)
    address = models.GenericIPAddressField("client address", null=True, blank=True, db_index=True)
    reason = models.CharField(max_length=200, blank=True, help_text="Shown to the banned client.")
    created_at = models.DateTimeField(default=timezone.now)
    created_by = models.CharField(max_length=150, blank=True, editable=False)
    expires_at = models.DateTimeField("until", null=True, blank=True, db_index=True, help_text="Empty: until lifted.")

    class Meta:
        ordering = ["-created_at"]

    def __str__(self):
        what = f"peer {self.peer_id}" if self.peer_id else f"address {self.address}"
        return f"{what} ({self.key})" if self.key else what

    def clean(self):
        if bool(self.peer_id) == bool(self.address):
            raise ValidationError("Ban either a peer id or a client address (one ban each).")

    @property
    def active(self):
        return self.expires_at is None or self.expires_at > timezone.now()


KEY_RULE = r"[A-Za-z0-9][A-Za-z0-9._~-]*"


def validate_key(value):
    """A PeerJS key travels raw in URL paths and query strings: unreserved characters only."""
    if not re.fullmatch(KEY_RULE, value):
        raise ValidationError(
            "Use letters, digits, '-', '_', '.' or '~' (starting with a letter or digit): "
            "the key travels unencoded in URLs."
        )


def _lines(text):
    return [line.strip() for line in (text or "").splitlines() if line.strip()]


def validate_origins(value):
    for origin in _lines(value):
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path or parts.query or parts.fragment:
            raise ValidationError(
                f"{origin!r} is not an origin: write scheme://host[:port] "
                "(e.g. https://app.example.com), one per line, nothing after the port."
            )


def validate_ice_urls(value):
    for url in _lines(value):
        if not url.startswith(ICE_URL_SCHEMES) or " " in url:
            raise ValidationError(f"{url!r} is not a stun:, stuns:, turn: or turns: URL.")


def new_token_secret():
    """A fresh HS256 key: 256 random bits, URL-safe so it pastes into any config file."""
    return secrets.token_urlsafe(32)


class App(models.Model):
    """A PeerJS key with settings of its own: who may connect, and what they get.

    Clients name their app with PeerJS's ``key`` option. The key in
    PEERJS_KEY works without a row (with the environment's settings); a row
    with that key replaces them. Workers read rows through
    ``signaling.applications`` and see edits within PEERJS_APP_CACHE ms.
    """

    AUTH_CHOICES = [
        (AUTH_NONE, "None: anyone who knows the key (as the reference PeerServer)"),
        (AUTH_TOKEN, "Signed token: the app's backend signs each peer's id"),
        (AUTH_SESSION, "Site session: users logged in to this site"),
    ]

    key = models.CharField(
        max_length=255,
        unique=True,
        validators=[validate_key],
        help_text="What clients pass as PeerJS's <code>key</code> option. Letters, digits, '-', '_', '.', '~'.",
    )
    name = models.CharField(max_length=100, help_text="For operators: what this app is.")
    allowed_origins = models.TextField(
        blank=True,
        validators=[validate_origins],
        help_text="Origins whose pages may use this app (e.g. <code>https://app.example.com</code>), "
        "one per line. Empty: any origin.",
    )
    concurrent_limit = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1)],
        help_text="Peers of this app connected at once, cluster-wide. Empty: PEERJS_CONCURRENT_LIMIT.",
    )
    allow_discovery = models.BooleanField(
        default=False,
        help_text="Whether <code>GET …/KEY/peers</code> lists this app's connected ids.",
    )
    auth = models.CharField(
        "authentication",
        max_length=10,
        choices=AUTH_CHOICES,
        default=AUTH_NONE,
        help_text="Who may open a socket with this key.",
    )
    takeover_same_address = models.BooleanField(
        "takeovers from the same address only",
        default=False,
        db_default=False,  # rows written by code that predates the column (a rolling upgrade) get it too
        help_text="A socket with a connected peer's id and token takes the id over (the older socket is "
        "closed with 4100): how a page reconnects. On: only from the address (IPv6: the network) the "
        "peer is connected from, so a token read elsewhere gets ID-TAKEN; a phone that changes networks "
        "then gets its id back only once its old socket is gone.",
    )
    token_secret = models.CharField(
        max_length=100,
        default=new_token_secret,
        help_text="Give this to the app's backend: it signs tokens with it (HS256). "
        "Generated; rotate it below (tokens signed with the old one stop working).",
    )
    turn_urls = models.TextField(
        "ICE server URLs",
        blank=True,
        validators=[validate_ice_urls],
        help_text="stun:/stuns:/turn:/turns: URLs handed out by <code>GET …/KEY/ice-servers</code>, "
        "one per line, e.g. <code>turn:turn.example.com:3478?transport=udp</code>.",
    )
    turn_secret = models.CharField(
        "TURN shared secret",
        max_length=255,
        blank=True,
        help_text="coturn's <code>--static-auth-secret</code>; required for turn:/turns: URLs.",
    )
    turn_ttl = models.PositiveIntegerField(
        "TURN credential lifetime (s)",
        default=86400,
        validators=[MinValueValidator(1)],
        help_text="Seconds a handed-out TURN credential works. A connection set up with it "
        "cannot refresh its relay after that.",
    )
    webhook_url = models.URLField(
        max_length=500,
        blank=True,
        help_text="Gets a signed JSON POST when a peer of this app connects or disconnects.",
    )
    webhook_secret = models.CharField(
        max_length=255,
        blank=True,
        help_text="Signs each POST (header <code>X-PeerJS-Signature: sha256=HMAC</code>); the receiver "
        "checks it with the same secret.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["key"]
        verbose_name = "app"

    def __str__(self):
        return f"{self.name} ({self.key})"

    def clean(self):
        errors = {}
        if any(url.startswith(TURN_URL_SCHEMES) for url in _lines(self.turn_urls)) and not self.turn_secret:
            errors["turn_secret"] = "turn:/turns: URLs need the TURN server's shared secret."
        if self.webhook_url and not self.webhook_secret:
            errors["webhook_secret"] = "A webhook needs a secret to sign its POSTs with."
        if self.webhook_url:
            from signaling import webhooks
            from signaling.conf import options

            problem = webhooks.url_problem(self.webhook_url, options())
            if problem:
                errors["webhook_url"] = problem
        if errors:
            raise ValidationError(errors)

    @property
    def origins(self):
        return tuple(_lines(self.allowed_origins))

    @property
    def ice_urls(self):
        return tuple(_lines(self.turn_urls))
