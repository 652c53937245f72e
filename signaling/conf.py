"""The PeerServer's options: defaults, environment overrides and validation.

Defaults equal the reference PeerServer's (npm ``peer``), timeouts in
milliseconds as there. ``p2psite.settings`` builds ``settings.PEERJS`` with
:func:`from_environ`; the rest of the app reads the validated, typed view
returned by :func:`options`.
"""
import dataclasses
import functools
import ipaddress
import re

from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string

from p2psite import env

# name in settings.PEERJS -> (environment variable, default, parser)
# The parsers take (variable, default, environ) and raise ImproperlyConfigured
# naming the variable on a bad value.
_positive = functools.partial(env.integer, minimum=1)
_non_negative = functools.partial(env.integer, minimum=0)

SCHEMA = {
    # The key clients must present (``?key=`` on the socket, ``/{key}/`` on HTTP).
    "KEY": ("PEERJS_KEY", "peerjs", env.string),
    # Where the server is mounted: the seed mounts ``/peerjs`` with path ``/myapp``.
    "PATH": ("PEERJS_PATH", "/peerjs/myapp", env.string),
    # A queued message nobody claims in this time is dropped, its sender told EXPIRE.
    "EXPIRE_TIMEOUT": ("PEERJS_EXPIRE_TIMEOUT", 5000, _positive),
    # A socket that sends no frame at all in this time is closed and unregistered.
    # peer@1.0.2's value: Chrome throttles the timers (and so the heartbeats)
    # of background tabs, and a shorter timeout closes their peers.
    "ALIVE_TIMEOUT": ("PEERJS_ALIVE_TIMEOUT", 90000, _positive),
    # How often queued messages are checked for expiry.
    "CLEANUP_OUT_MSGS": ("PEERJS_CLEANUP_OUT_MSGS", 1000, _positive),
    # Connected peers allowed at once, across the whole cluster.
    "CONCURRENT_LIMIT": ("PEERJS_CONCURRENT_LIMIT", 5000, _positive),
    # Whether ``GET {base}/{key}/peers`` lists the connected ids.
    "ALLOW_DISCOVERY": ("PEERJS_ALLOW_DISCOVERY", False, env.boolean),
    # Behind a reverse proxy: take the client address from X-Forwarded-For.
    "PROXIED": ("PEERJS_PROXIED", False, env.boolean),
    # With PROXIED: the proxies whose X-Forwarded-For (and X-PeerJS-Retry-Elsewhere,
    # signaling.readiness) is believed (addresses or networks; "*" any sender,
    # for a network only the proxy can reach). A client that reaches a worker
    # past the proxy is known by its own address.
    "TRUSTED_PROXIES": ("PEERJS_TRUSTED_PROXIES", ["127.0.0.1", "::1"], env.string_list),
    # Origins allowed to call the HTTP API and open sockets; "*" allows any.
    "CORS_ORIGINS": ("PEERJS_CORS_ORIGINS", ["*"], env.string_list),
    # Largest frame accepted from a client, in bytes of UTF-8.
    "MAX_FRAME_BYTES": ("PEERJS_MAX_FRAME_BYTES", 256 * 1024, _positive),
    # Longest peer id accepted: what the registry holds (the client has no limit).
    "ID_MAX_LENGTH": ("PEERJS_ID_MAX_LENGTH", 255, _positive),
    # Dotted path of a callable returning a fresh id string.
    "GENERATE_CLIENT_ID": (
        "PEERJS_GENERATE_CLIENT_ID",
        "signaling.ids.uuid4_id",
        env.string,
    ),
    # Messages and bytes queued for one offline peer; more are refused with
    # EXPIRE. A connection attempt queues about ten frames, and a receiver
    # that reloads may meet a dozen senders at once.
    "QUEUE_MAX_MESSAGES": ("PEERJS_QUEUE_MAX_MESSAGES", 1000, _positive),
    "QUEUE_MAX_BYTES": ("PEERJS_QUEUE_MAX_BYTES", 4 * 1024 * 1024, _positive),
    # What one sender may have queued (for any peers) on one worker, and what
    # the whole queue holds; past either, frames are refused with EXPIRE.
    "QUEUE_SENDER_MAX_MESSAGES": ("PEERJS_QUEUE_SENDER_MAX_MESSAGES", 1000, _positive),
    "QUEUE_SENDER_MAX_BYTES": ("PEERJS_QUEUE_SENDER_MAX_BYTES", 4 * 1024 * 1024, _positive),
    "QUEUE_TOTAL_MAX_MESSAGES": ("PEERJS_QUEUE_TOTAL_MAX_MESSAGES", 100_000, _positive),
    "QUEUE_TOTAL_MAX_BYTES": ("PEERJS_QUEUE_TOTAL_MAX_BYTES", 64 * 1024 * 1024, _positive),
    # Frames a socket's client has not read yet that the worker holds for it,
    # in bytes; a client that lets more pile up, or takes longer than
    # WRITE_TIMEOUT to read one frame, is closed (4104) as too slow.
    "OUTBOX_MAX_BYTES": ("PEERJS_OUTBOX_MAX_BYTES", 1024 * 1024, _positive),
    "WRITE_TIMEOUT": ("PEERJS_WRITE_TIMEOUT", 10000, _positive),
    # Sockets one client address may hold open on one worker (a school's or
    # a theatre's NAT puts everyone behind one address); 0 turns it off.
    "MAX_SOCKETS_PER_ADDRESS": ("PEERJS_MAX_SOCKETS_PER_ADDRESS", 1000, _non_negative),
    # Socket opens and /id requests one client address may make per window
    # (ms), counted across the cluster through Redis when REDIS_URL is set,
    # else per worker. Generous: a school or a theatre behind one NAT reloads
    # and reconnects without meeting them. 0 turns a limit off.
    "RATE_LIMIT_OPENS": ("PEERJS_RATE_LIMIT_OPENS", 1200, _non_negative),
    "RATE_LIMIT_IDS": ("PEERJS_RATE_LIMIT_IDS", 1200, _non_negative),
    "RATE_LIMIT_WINDOW": ("PEERJS_RATE_LIMIT_WINDOW", 60000, _non_negative),
    # How often (ms) each worker re-reads the bans (signaling.models.Ban). A
    # ban created or lifted in the admin reaches every worker at once through
    # the channel layer; this re-read covers a message that was lost.
    "BAN_REFRESH": ("PEERJS_BAN_REFRESH", 5000, _positive),
    # Bad frames (garbage, unknown types, oversize) a socket may send before it
    # is closed. Each one is answered with an ERROR frame.
    "BAD_FRAME_LIMIT": ("PEERJS_BAD_FRAME_LIMIT", 10, _positive),
    # Frames per second one socket may send, sustained; 0 turns the limit off.
    # Bursts up to FLOOD_BURST frames pass at once (a page opening a hundred
    # connections sends about a thousand). Past that the socket is read no
    # faster than the limit (TCP slows the client down); a socket held at the
    # limit for FLOOD_CUTOFF milliseconds is closed with 1008.
    "FLOOD_LIMIT": ("PEERJS_FLOOD_LIMIT", 500, _non_negative),
    "FLOOD_BURST": ("PEERJS_FLOOD_BURST", 2000, _positive),
    "FLOOD_CUTOFF": ("PEERJS_FLOOD_CUTOFF", 10000, _positive),
    # How often a worker tells the database it is alive, and after how long a
    # silent worker's peers are reaped (at least four beats: signaling.services).
    "WORKER_BEAT": ("PEERJS_WORKER_BEAT", 2000, _positive),
    "WORKER_TIMEOUT": ("PEERJS_WORKER_TIMEOUT", 10000, _positive),
    # How long (ms) a worker waits for the database to answer one call before
    # it answers the client as for a database that is away (try again, 503,
    # EXPIRE): a hung database is answered, not waited on. PostgreSQL
    # connections also give up connecting, and notice a dead link, within
    # about this time (p2psite.settings).
    "DATABASE_TIMEOUT": ("PEERJS_DATABASE_TIMEOUT", 5000, _positive),
    # Who may read GET /metrics: client addresses or networks (CIDR), by the
    # rule PROXIED sets (behind our proxy, the address the proxy saw). The
    # counters tell how busy the server is and how it fails, which is not for
    # everyone: by default only this machine, where a local Prometheus or
    # curl asks. Empty: nobody by address (the token alone).
    "METRICS_ALLOW": ("PEERJS_METRICS_ALLOW", ["127.0.0.1", "::1"], env.string_list),
    # A bearer token that also opens /metrics (``Authorization: Bearer ...``,
    # Prometheus' ``authorization`` setting), from any address. Empty: off.
    "METRICS_TOKEN": ("PEERJS_METRICS_TOKEN", "", env.string),
    # Apps (signaling.models.App) are read from the database and kept this
    # long (ms) in each worker, so an edit in the admin reaches every worker
    # within this time, without a restart. 0 reads the database every time.
    "APP_CACHE": ("PEERJS_APP_CACHE", 2000, _non_negative),
    # How the default app (PEERJS_KEY, when no App row names it) admits a
    # socket: "none" (anyone, as the reference), "token" (a token signed with
    # TOKEN_SECRET by the app's backend, see signaling/tokens.py) or
    # "session" (a logged-in user of this site, see signaling/auth.py).
    "AUTH": ("PEERJS_AUTH", "none", env.string),
    # The default app's token secret (HS256 key): at least 32 characters.
    "TOKEN_SECRET": ("PEERJS_TOKEN_SECRET", "", env.string),
    # The default app's ICE servers, handed out by GET {base}/{key}/ice-servers:
    # stun:/stuns:/turn:/turns: URLs, comma-separated. turn: URLs get
    # credentials in coturn's use-auth-secret scheme made with TURN_SECRET
    # (coturn's --static-auth-secret), valid for TURN_TTL seconds (the TURN
    # REST API's ttl, in seconds as there: a day, so a show outlasts none).
    "TURN_URLS": ("PEERJS_TURN_URLS", [], env.string_list),
    "TURN_SECRET": ("PEERJS_TURN_SECRET", "", env.string),
    "TURN_TTL": ("PEERJS_TURN_TTL", 86400, _positive),
    # Webhooks (an App's webhook URL): each POST waits at most WEBHOOK_TIMEOUT
    # ms for an answer; a failed one is tried again WEBHOOK_RETRIES times,
    # WEBHOOK_BACKOFF ms after the first failure, doubling each time. Events
    # wait in a queue of WEBHOOK_QUEUE per worker; when it is full, new events
    # are dropped (counted and logged), never the socket delayed.
    "WEBHOOK_TIMEOUT": ("PEERJS_WEBHOOK_TIMEOUT", 5000, _positive),
    "WEBHOOK_RETRIES": ("PEERJS_WEBHOOK_RETRIES", 3, _non_negative),
    "WEBHOOK_BACKOFF": ("PEERJS_WEBHOOK_BACKOFF", 1000, _positive),
    "WEBHOOK_QUEUE": ("PEERJS_WEBHOOK_QUEUE", 1000, _positive),
}

# The PeerJS client's rule for ids; match it against the whole string (fullmatch).
ID_RULE = re.compile(r"[A-Za-z0-9]+(?:[ _-][A-Za-z0-9]+)*")
ID_COLUMN_LENGTH = 255  # Peer.peer_id's max_length
# A guessable token would make /metrics public: as long as DJANGO_SECRET_KEY must be.
METRICS_TOKEN_MIN_LENGTH = 32

# How an app admits sockets (App.auth, PEERJS_AUTH).
AUTH_NONE, AUTH_TOKEN, AUTH_SESSION = "none", "token", "session"
AUTH_MODES = (AUTH_NONE, AUTH_TOKEN, AUTH_SESSION)
# HS256 keys shorter than the hash (32 bytes) are guessable offline from any
# token (RFC 7518 3.2 asks for at least that much).
MIN_TOKEN_SECRET_LENGTH = 32
ICE_URL_SCHEMES = ("stun:", "stuns:", "turn:", "turns:")
TURN_URL_SCHEMES = ("turn:", "turns:")


def from_environ(environ=None):
    """The PEERJS settings dict: every option, from the environment or default."""
    return {
        name: parse(variable, default, environ)
        for name, (variable, default, parse) in SCHEMA.items()
    }


@dataclasses.dataclass(frozen=True)
class Options:
    key: str
    path: str
    expire_timeout: int
    alive_timeout: int
    cleanup_out_msgs: int
    concurrent_limit: int
    allow_discovery: bool
    proxied: bool
    cors_origins: tuple
    max_frame_bytes: int
    id_max_length: int
    generate_client_id: object
    queue_max_messages: int
    queue_max_bytes: int
    queue_sender_max_messages: int
    queue_sender_max_bytes: int
    queue_total_max_messages: int
    queue_total_max_bytes: int
    outbox_max_bytes: int
    write_timeout: int
    max_sockets_per_address: int
    rate_limit_opens: int
    rate_limit_ids: int
    rate_limit_window: int
    ban_refresh: int
    bad_frame_limit: int
    flood_limit: int
    flood_burst: int
    flood_cutoff: int
    worker_beat: int
    worker_timeout: int
    database_timeout: int
    metrics_allow: tuple  # of ipaddress networks
    trusted_proxies: tuple  # of ipaddress networks; empty with "*" (any)
    metrics_token: str
    app_cache: int
    auth: str
    token_secret: str = dataclasses.field(repr=False)
    turn_urls: tuple
    turn_secret: str = dataclasses.field(repr=False)
    turn_ttl: int
    webhook_timeout: int
    webhook_retries: int
    webhook_backoff: int
    webhook_queue: int

    @property
    def any_origin(self):
        return "*" in self.cors_origins

    def origin_allowed(self, origin):
        """Whether a request or socket from ``origin`` may use the server.

        Requests without an Origin header (curl, native clients) are allowed:
        the Origin check protects browsers' users, it is not authentication.
        """
        return self.any_origin or not origin or origin in self.cors_origins

    def metrics_address_allowed(self, address):
        """Whether a client at ``address`` (an IP address string) may read /metrics."""
        return _within(address, self.metrics_allow)

    def proxy_trusted(self, address):
        """Whether X-Forwarded-For from a connection at ``address`` is believed."""
        if not self.proxied or not address:
            return False
        return not self.trusted_proxies or _within(address, self.trusted_proxies)


def _within(address, networks):
    ip = ipaddress.ip_address(address)
    # A dual-stack socket reports an IPv4 client as ::ffff:a.b.c.d.
    if ip.version == 6 and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return any(ip in network for network in networks)


def _networks(values, name, fail):
    networks = []
    for item in values[name]:
        try:
            # strict=False: 10.1.2.3/8 means the network 10.0.0.0/8.
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            fail(name, f"has {item!r}, which is no IP address or network (e.g. 10.0.0.0/8).")
    return tuple(networks)


def _validated(raw):
    unknown = set(raw) - set(SCHEMA)
    if unknown:
        raise ImproperlyConfigured(f"Unknown PEERJS settings: {', '.join(sorted(unknown))}")
    values = {name: raw.get(name, default) for name, (_, default, _) in SCHEMA.items()}

    def fail(name, why):
        raise ImproperlyConfigured(f"PEERJS['{name}'] ({SCHEMA[name][0]}) {why}")

    if not values["KEY"]:
        fail("KEY", "must not be empty.")
    path = values["PATH"]
    if not path.startswith("/"):
        fail("PATH", f"must start with '/', got {path!r}.")
    if values["ID_MAX_LENGTH"] > ID_COLUMN_LENGTH:
        fail("ID_MAX_LENGTH", f"must be at most {ID_COLUMN_LENGTH}, what the registry holds.")
    if values["WORKER_TIMEOUT"] < 4 * values["WORKER_BEAT"]:
        # A live worker's silence after an outage every worker saw can last
        # about four beats (signaling.services): shorter, and it could be reaped.
        fail("WORKER_TIMEOUT", "must be at least four times PEERJS_WORKER_BEAT.")
    if values["AUTH"] not in AUTH_MODES:
        fail("AUTH", f"must be one of {', '.join(AUTH_MODES)}, got {values['AUTH']!r}.")
    if values["AUTH"] == AUTH_TOKEN and len(values["TOKEN_SECRET"]) < MIN_TOKEN_SECRET_LENGTH:
        fail("TOKEN_SECRET", f"must be at least {MIN_TOKEN_SECRET_LENGTH} characters with PEERJS_AUTH=token.")
    for url in values["TURN_URLS"]:
        if not url.startswith(ICE_URL_SCHEMES):
            fail("TURN_URLS", f"must hold stun:/stuns:/turn:/turns: URLs, got {url!r}.")
    if any(url.startswith(TURN_URL_SCHEMES) for url in values["TURN_URLS"]) and not values["TURN_SECRET"]:
        fail("TURN_SECRET", "must be set (coturn's --static-auth-secret) for turn: URLs in PEERJS_TURN_URLS.")
    try:
        generator = import_string(values["GENERATE_CLIENT_ID"])
    except ImportError as exc:
        fail("GENERATE_CLIENT_ID", f"cannot be imported: {exc}")
    values["GENERATE_CLIENT_ID"] = generator
    values["METRICS_ALLOW"] = _networks(values, "METRICS_ALLOW", fail)
    if "*" in values["TRUSTED_PROXIES"]:
        values["TRUSTED_PROXIES"] = ()  # any sender
    elif not values["TRUSTED_PROXIES"]:
        fail("TRUSTED_PROXIES", "is empty: name the proxy's address, or '*' for any sender.")
    else:
        values["TRUSTED_PROXIES"] = _networks(values, "TRUSTED_PROXIES", fail)
    token = values["METRICS_TOKEN"]
    if token and (len(token) < METRICS_TOKEN_MIN_LENGTH or token != token.strip()):
        fail(
            "METRICS_TOKEN",
            f"must be at least {METRICS_TOKEN_MIN_LENGTH} characters without surrounding blanks; "
            "make one with: python3 -c 'import secrets; print(secrets.token_urlsafe(32))'.",
        )
    values["PATH"] = path.rstrip("/")
    values["CORS_ORIGINS"] = tuple(values["CORS_ORIGINS"])
    values["TURN_URLS"] = tuple(values["TURN_URLS"])
    return Options(**{name.lower(): value for name, value in values.items()})


@functools.cache
def options():
    """The validated options of ``settings.PEERJS``; computed once per process."""
    from django.conf import settings

    return _validated(getattr(settings, "PEERJS", {}))
