"""The PeerServer's options: defaults, environment overrides and validation.

Defaults equal the reference PeerServer's (npm ``peer``), timeouts in
milliseconds as there. A site sets ``settings.PEERJS`` to a dict of the
options it changes, or builds it from the environment with
:func:`from_environ` (p2psite.settings does); the app reads the validated,
typed view returned by :func:`options`, never ``settings.PEERJS`` itself.
"""
import dataclasses
import functools
import ipaddress
import re
import types
from urllib.parse import urlsplit

from channels import DEFAULT_CHANNEL_LAYER
from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string

from signaling import env, sentinel

# name in settings.PEERJS -> (environment variable, default, parser, description)
# The parsers take (variable, default, environ) and raise ImproperlyConfigured
# naming the variable on a bad value. The descriptions (Markdown) are the
# options table of docs/operations.md: scripts/options_table.py writes it.
_positive = functools.partial(env.integer, minimum=1)
_non_negative = functools.partial(env.integer, minimum=0)
_at_least_100 = functools.partial(env.integer, minimum=100)

SCHEMA = {
    "KEY": ("PEERJS_KEY", "peerjs", env.string,
            "The key clients present (`?key=` on the socket, `/{key}/` on HTTP): the default app's."),
    "PATH": ("PEERJS_PATH", "/peerjs/myapp", env.string,
             "Where the server is mounted (the seed mounts `/peerjs` with path `/myapp`)."),
    "EXPIRE_TIMEOUT": ("PEERJS_EXPIRE_TIMEOUT", 5000, _positive,
                       "A queued message nobody claims in this time (ms) is dropped; its sender gets `EXPIRE`."),
    "ALIVE_TIMEOUT": ("PEERJS_ALIVE_TIMEOUT", 90000, _positive,
                      "A socket that sends no frame at all in this time (ms) is closed and unregistered. "
                      "`peer@1.0.2`'s value: Chrome throttles the timers (and so the heartbeats) of "
                      "background tabs, and a shorter timeout closes their peers."),
    "CLEANUP_OUT_MSGS": ("PEERJS_CLEANUP_OUT_MSGS", 1000, _positive,
                         "How often (ms) queued messages are checked for expiry."),
    "CONCURRENT_LIMIT": ("PEERJS_CONCURRENT_LIMIT", 5000, _positive,
                         "Connected peers of one app allowed at once, cluster-wide: the default app's limit, "
                         "and that of apps that set none."),
    "ALLOW_DISCOVERY": ("PEERJS_ALLOW_DISCOVERY", False, env.boolean,
                        "Whether the default app's `GET {base}/{key}/peers` lists its connected ids."),
    "PROXIED": ("PEERJS_PROXIED", False, env.boolean,
                "Behind a proxy: take the client address from the last `X-Forwarded-For` entry of the "
                "last such header line (the one our proxy added), from a trusted proxy only. Off, the "
                "header is ignored (uvicorn too gets `--no-proxy-headers`)."),
    "TRUSTED_PROXIES": ("PEERJS_TRUSTED_PROXIES", ["127.0.0.1", "::1"], env.string_list,
                        "With `PROXIED`: the addresses or networks whose `X-Forwarded-For` (and "
                        "`X-PeerJS-Retry-Elsewhere`, see [cluster.md](cluster.md)) is believed; a "
                        "connection from anywhere else is known by its own address. `*`: any sender, for a "
                        "network only the proxy reaches (docker-compose sets it). The ASGI servers never "
                        "rewrite the address themselves."),
    "CORS_ORIGINS": ("PEERJS_CORS_ORIGINS", ["*"], env.string_list,
                     "Comma-separated origins allowed to call the HTTP API and open sockets with the default "
                     "app's key (and unknown keys); `*` allows any. Apps have their own."),
    "MAX_FRAME_BYTES": ("PEERJS_MAX_FRAME_BYTES", 256 * 1024, _positive,
                        "Largest frame relayed (bytes of UTF-8). A bigger one for a peer (an `OFFER` whose "
                        "metadata is large) is answered with `EXPIRE` for that message alone (PeerJS: "
                        "`peer-unavailable`, the Peer lives on); any other with `ERROR`."),
    "MAX_MESSAGE_BYTES": ("PEERJS_MAX_MESSAGE_BYTES", 1024 * 1024, _positive,
                          "Largest message a client may send at all, at least `MAX_FRAME_BYTES`: the ASGI "
                          "server closes the socket with `1009` as soon as a frame's header announces more, "
                          "before it buffers a byte of it (`signaling/servers/`). Under daphne at least what a relayed "
                          "frame may need, three times the frame cap."),
    "ID_MAX_LENGTH": ("PEERJS_ID_MAX_LENGTH", 255, _positive,
                      "Longest peer id accepted: at most 255, what the registry holds (the client has no "
                      "limit). Tokens may be up to 2 048 characters."),
    "GENERATE_CLIENT_ID": ("PEERJS_GENERATE_CLIENT_ID", "signaling.ids.uuid4_id", env.string,
                           "Dotted path of a callable that returns a fresh id string."),
    "QUEUE_MAX_MESSAGES": ("PEERJS_QUEUE_MAX_MESSAGES", 1000, _positive,
                           "Messages queued for one offline peer; more are refused with `EXPIRE`. A connection "
                           "attempt queues about ten frames, and a receiver that reloads may meet a dozen "
                           "senders at once."),
    "QUEUE_MAX_BYTES": ("PEERJS_QUEUE_MAX_BYTES", 4 * 1024 * 1024, _positive,
                        "Bytes queued for one offline peer; more are refused with `EXPIRE`."),
    "QUEUE_SENDER_MAX_MESSAGES": ("PEERJS_QUEUE_SENDER_MAX_MESSAGES", 1000, _positive,
                                  "Messages one sender may have queued (for any peers) on one worker; more are "
                                  "refused with `EXPIRE` without a trip to the database."),
    "QUEUE_SENDER_MAX_BYTES": ("PEERJS_QUEUE_SENDER_MAX_BYTES", 4 * 1024 * 1024, _positive,
                               "Bytes one sender may have queued on one worker, as above."),
    "QUEUE_TOTAL_MAX_MESSAGES": ("PEERJS_QUEUE_TOTAL_MAX_MESSAGES", 100_000, _positive,
                                 "Messages the whole queue may hold; more are refused with `EXPIRE`."),
    "QUEUE_TOTAL_MAX_BYTES": ("PEERJS_QUEUE_TOTAL_MAX_BYTES", 64 * 1024 * 1024, _positive,
                              "Bytes the whole queue may hold; more are refused with `EXPIRE`."),
    "OUTBOX_MAX_BYTES": ("PEERJS_OUTBOX_MAX_BYTES", 1024 * 1024, _positive,
                         "Bytes of frames a worker holds for a client that has not read them yet; a client "
                         "that lets more pile up is closed as too slow (`4104`)."),
    "WRITE_TIMEOUT": ("PEERJS_WRITE_TIMEOUT", 10000, _positive,
                      "A client that takes longer than this (ms) to take one frame is closed as too slow "
                      "(`4104`)."),
    "MAX_SOCKETS_PER_ADDRESS": ("PEERJS_MAX_SOCKETS_PER_ADDRESS", 1000, _non_negative,
                                "Sockets one client address may hold open on one worker (a school's or a "
                                "theatre's NAT puts everyone behind one address); `0` turns it off."),
    "MAX_HTTP_CONNECTIONS_PER_ADDRESS": (
        "PEERJS_MAX_HTTP_CONNECTIONS_PER_ADDRESS", 256, _non_negative,
        "Plain HTTP connections (a WebSocket's until its handshake is complete) one client address may "
        "hold open on one worker; past it a new one is answered `429` and closed. Trusted proxies "
        "(`PROXIED`, `TRUSTED_PROXIES`) are exempt: behind nginx every connection is nginx's. `0` turns "
        "it off. (uvicorn)"),
    "REQUEST_TIMEOUT": ("PEERJS_REQUEST_TIMEOUT", 10000, _positive,
                        "A request must arrive whole (line, headers and body; a handshake's line and headers) "
                        "within this time (ms) of the connection or of the previous response, else it is "
                        "answered `408` and closed; a connection that sends nothing is just closed. Behind "
                        "nginx its `client_header_timeout` and `client_body_timeout` do this too. (uvicorn)"),
    "HANDSHAKE_CONCURRENCY": ("PEERJS_HANDSHAKE_CONCURRENCY", 32, _positive,
                              "WebSocket handshakes a worker works on at once; the others wait their turn, "
                              "their request read, so that a reconnect storm does not stall the frames of the "
                              "peers already connected. Plain HTTP never waits. (uvicorn)"),
    "RATE_LIMIT_OPENS": ("PEERJS_RATE_LIMIT_OPENS", 1200, _non_negative,
                         "Socket opens one client address may make per window, cluster-wide with Redis (else "
                         "per worker); past it `ERROR` and close `1008`. Generous: a school or a theatre behind "
                         "one NAT reloads and reconnects without meeting it. `0` turns it off."),
    "RATE_LIMIT_IDS": ("PEERJS_RATE_LIMIT_IDS", 1200, _non_negative,
                       "`GET {base}/{key}/id` requests one client address may make per window; past it `429` "
                       "with `Retry-After`. `0` turns it off."),
    "RATE_LIMIT_ICE": ("PEERJS_RATE_LIMIT_ICE", 1200, _non_negative,
                       "`GET {base}/{key}/ice-servers` requests one client address may make per window, "
                       "counted apart from `/id` (each answer may carry a TURN credential); past it `429` "
                       "with `Retry-After`. `0` turns it off."),
    "RATE_LIMIT_WINDOW": ("PEERJS_RATE_LIMIT_WINDOW", 60000, _non_negative,
                          "The rate limits' window (ms); `0` turns every rate limit off."),
    "IPV6_PREFIX": ("PEERJS_IPV6_PREFIX", 64, _positive,
                    "An IPv6 client is counted as its network of this many bits (IPv4: its address) by the "
                    "rate limits, `MAX_SOCKETS_PER_ADDRESS`, bans and the admin's login throttling: a home "
                    "or a server gets a whole /64 and may use any address of it. See "
                    "[security.md](security.md)."),
    "BAN_REFRESH": ("PEERJS_BAN_REFRESH", 5000, _positive,
                    "How often (ms) each worker re-reads the bans. A ban made or lifted in the admin reaches "
                    "every worker at once; this covers a lost message."),
    "BAD_FRAME_LIMIT": ("PEERJS_BAD_FRAME_LIMIT", 10, _positive,
                        "Bad frames (garbage, unknown types, oversize) a socket may send, each answered with "
                        "`ERROR`, before it is closed."),
    "FLOOD_LIMIT": ("PEERJS_FLOOD_LIMIT", 500, _non_negative,
                    "Frames per second one socket may send, sustained; past it the socket is read no faster "
                    "(TCP slows the client down). `0` turns it off."),
    "FLOOD_BURST": ("PEERJS_FLOOD_BURST", 2000, _positive,
                    "Frames a socket may send at once before it is slowed down (a page opening a hundred "
                    "connections sends about a thousand)."),
    "FLOOD_CUTOFF": ("PEERJS_FLOOD_CUTOFF", 10000, _positive,
                     "A socket held at the flood limit this long (ms) is sent `ERROR` and closed with `1008`."),
    "WORKER_BEAT": ("PEERJS_WORKER_BEAT", 2000, _positive,
                    "How often (ms) a worker tells the database it is alive."),
    "WORKER_TIMEOUT": ("PEERJS_WORKER_TIMEOUT", 10000, _positive,
                       "After this much silence (ms) a worker is presumed dead and its peers' rows are "
                       "reaped; at least four times `WORKER_BEAT` (see [cluster.md](cluster.md))."),
    "LAST_SEEN_INTERVAL": ("PEERJS_LAST_SEEN_INTERVAL", 60000, _positive,
                           "How often (ms) a peer's last-seen time (the admin's peer list) is written to the "
                           "registry: once per interval for a peer heard from in it, whatever its heartbeats. "
                           "A connected peer was heard from within `ALIVE_TIMEOUT` anyway; a short interval "
                           "costs a database write per peer per interval (100 000 peers at a 2 s interval: "
                           "50 000 row updates a second)."),
    "DATABASE_TIMEOUT": ("PEERJS_DATABASE_TIMEOUT", 5000, _positive,
                         "How long (ms) a worker waits for the database to answer one call; then it answers "
                         "as for a database that is away (`1013`, `503`, `EXPIRE`): a hung database is "
                         "answered, not waited on. On PostgreSQL also the connect timeout (2 s at least), the "
                         "server's `statement_timeout` (`manage.py migrate` too: raise it for a migration that "
                         "needs longer) and the TCP keepalive and `tcp_user_timeout` scale; a `DATABASE_URL` "
                         "that sets these itself wins."),
    "METRICS_ALLOW": ("PEERJS_METRICS_ALLOW", ["127.0.0.1", "::1"], env.string_list,
                      "Client addresses or networks (`10.0.0.0/8`) that may read `GET /metrics`, by the "
                      "`PROXIED` rule (behind our proxy, the address the proxy saw). Empty: nobody by "
                      "address (the token only)."),
    "METRICS_TOKEN": ("PEERJS_METRICS_TOKEN", "", env.string,
                      "A token (32 characters or more) that opens `/metrics` from any address as "
                      "`Authorization: Bearer …` (Prometheus' `authorization` setting). Empty: off."),
    "APP_CACHE": ("PEERJS_APP_CACHE", 2000, _non_negative,
                  "How long (ms) a worker keeps an app's settings before reading them again: an admin edit "
                  "reaches every worker within it, without a restart. `0` reads every time."),
    "AUTH": ("PEERJS_AUTH", "none", env.string,
             "Who may connect with the default app's key: `none` (anyone, as the reference), `token` "
             "(tokens signed with `TOKEN_SECRET` by the app's backend) or `session` (users logged in to "
             "this site). See [apps.md](apps.md)."),
    "TAKEOVER_SAME_ADDRESS": ("PEERJS_TAKEOVER_SAME_ADDRESS", False, env.boolean,
                              "The default app's *takeovers from the same address only*: a replayed token "
                              "from another address gets `ID-TAKEN` instead of the id. Off, a phone that "
                              "changes networks gets its id back at once, as with the reference."),
    "TOKEN_SECRET": ("PEERJS_TOKEN_SECRET", "", env.string,
                     "The default app's token secret (HS256 key), at least 32 characters; required with "
                     "`AUTH` `token`."),
    "TURN_URLS": ("PEERJS_TURN_URLS", [], env.string_list,
                  "The default app's ICE servers for `/ice-servers`: comma-separated `stun:`, `stuns:`, "
                  "`turn:`, `turns:` URLs."),
    "TURN_SECRET": ("PEERJS_TURN_SECRET", "", env.string,
                    "coturn's `--static-auth-secret`, from which TURN credentials are made; required with "
                    "`turn:` URLs."),
    "TURN_TTL": ("PEERJS_TURN_TTL", 86400, _positive,
                 "Seconds a handed-out TURN credential works (the TURN REST API's `ttl`): a day, so that no "
                 "show outlasts its relay."),
    "TURN_TTL_WITHOUT_AUTH": ("PEERJS_TURN_TTL_WITHOUT_AUTH", 600, _positive,
                              "The longest (seconds) a credential of an app without authentication works, "
                              "whatever its own lifetime: anyone who finds its page gets one. Pages fetch new "
                              "ones at half the `ttl`."),
    "WEBHOOK_TIMEOUT": ("PEERJS_WEBHOOK_TIMEOUT", 5000, _positive,
                        "How long (ms) a webhook POST waits for an answer."),
    "WEBHOOK_RETRIES": ("PEERJS_WEBHOOK_RETRIES", 3, _non_negative,
                        "Further tries of a webhook after a connection error, a timeout, a 5xx or a 429."),
    "WEBHOOK_BACKOFF": ("PEERJS_WEBHOOK_BACKOFF", 1000, _positive,
                        "Wait (ms) before a webhook's first retry; doubled before each next one."),
    "WEBHOOK_QUEUE": ("PEERJS_WEBHOOK_QUEUE", 1000, _positive,
                      "Webhook events waiting per worker; when the queue is full, new ones are dropped "
                      "(counted, logged), never a socket delayed."),
    "WEBHOOK_ALLOW_HTTP": ("PEERJS_WEBHOOK_ALLOW_HTTP", False, env.boolean,
                           "Also allow `http://` webhook URLs (else `https://` only)."),
    "WEBHOOK_ALLOW_NETWORKS": ("PEERJS_WEBHOOK_ALLOW_NETWORKS", [], env.string_list,
                               "Non-public networks (CIDR, e.g. `10.0.5.0/24` for a backend on the LAN) "
                               "webhooks may go to all the same. See [security.md](security.md)."),
    "REDIS_URL": ("REDIS_URL", "", env.string,
                  "Redis between the workers: `redis://[:PASSWORD@]HOST:6379/0` (`rediss://` for TLS). "
                  "Empty: one worker, no Redis. Set: the workers share their peers through it "
                  "(`channel_layers()` makes the channel layers), the rate limits count across them, "
                  "and `/readyz` asks Redis too. With `REDIS_SENTINELS` its host is not used. No `PEERJS_` "
                  "prefix: deployments set it so."),
    "REDIS_CLUSTER": ("REDIS_CLUSTER", False, env.boolean,
                      "`REDIS_URL` names one node of a Redis Cluster; the workers' inboxes spread over its shards, "
                      "and the `default` channel layer is channels-redis' pub/sub layer."),
    "REDIS_SENTINELS": ("PEERJS_REDIS_SENTINELS", [], env.string_list,
                        "Redis Sentinel: the sentinels, comma-separated `host:port` (`[::1]:26379` for IPv6; "
                        "port 26379 by default). Every Redis connection a worker opens (the bus, the rate "
                        "limits, `/readyz`) then asks them where the master is, and follows a failover; "
                        "`REDIS_URL` still gives the master's password, database and `rediss://`, not its "
                        "host. See [cluster.md](cluster.md)."),
    "REDIS_SENTINEL_MASTER": ("PEERJS_REDIS_SENTINEL_MASTER", "mymaster", env.string,
                              "With `REDIS_SENTINELS`: the master set's name, as in the sentinels' "
                              "`sentinel monitor NAME …`."),
    "REDIS_SENTINEL_AUTH": ("PEERJS_REDIS_SENTINEL_AUTH", False, env.boolean,
                            "With `REDIS_SENTINELS`: the sentinels ask for `REDIS_URL`'s password too (their "
                            "`requirepass`; Bitnami's Redis chart with `auth.sentinel`). Off: they are asked "
                            "without one."),
    "REDIS_SENTINEL_TLS": ("PEERJS_REDIS_SENTINEL_TLS", False, env.boolean,
                           "With `REDIS_SENTINELS`: the sentinels are asked over TLS (their `tls-port`; Bitnami's "
                           "Redis chart with `tls.enabled`), trusting the system's certificate authorities "
                           "(`SSL_CERT_FILE` names another bundle), as `rediss://` does for the master. Off: "
                           "plain TCP."),
    "CHANNEL_LAYER": ("PEERJS_CHANNEL_LAYER", "peerjs", env.string,
                      "The alias of the app's bus between workers in `CHANNEL_LAYERS` (`default` stays the "
                      "site's: channels-redis with Redis)."),
    "REDIS_INBOX_CAPACITY": ("REDIS_INBOX_CAPACITY", 10000, _at_least_100,
                             "Messages to one worker in flight (sent, not acknowledged yet) past which further "
                             "sends to it are refused, once the oldest has waited a second (at once past four "
                             "times this); their senders hear `EXPIRE`."),
    "REDIS_ACK_TIMEOUT": ("REDIS_ACK_TIMEOUT", 5000, _at_least_100,
                          "How long (ms) a worker waits for another to acknowledge what it sent; then the "
                          "senders of what is unacknowledged hear `EXPIRE`."),
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
REDIS_SCHEMES = ("redis", "rediss", "unix")
TURN_URL_SCHEMES = ("turn:", "turns:")


def from_environ(environ=None):
    """The PEERJS settings dict: every option, from the environment or default."""
    return {
        name: parse(variable, default, environ)
        for name, (variable, default, parse, _) in SCHEMA.items()
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
    max_message_bytes: int
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
    max_http_connections_per_address: int
    request_timeout: int
    handshake_concurrency: int
    rate_limit_opens: int
    rate_limit_ids: int
    rate_limit_ice: int
    rate_limit_window: int
    ipv6_prefix: int
    ban_refresh: int
    bad_frame_limit: int
    flood_limit: int
    flood_burst: int
    flood_cutoff: int
    worker_beat: int
    worker_timeout: int
    last_seen_interval: int
    database_timeout: int
    metrics_allow: tuple  # of ipaddress networks
    trusted_proxies: tuple  # of ipaddress networks; empty with "*" (any)
    metrics_token: str
    app_cache: int
    auth: str
    takeover_same_address: bool
    token_secret: str = dataclasses.field(repr=False)
    turn_urls: tuple
    turn_secret: str = dataclasses.field(repr=False)
    turn_ttl: int
    turn_ttl_without_auth: int
    webhook_timeout: int
    webhook_retries: int
    webhook_backoff: int
    webhook_queue: int
    webhook_allow_http: bool
    webhook_allow_networks: tuple  # of ipaddress networks
    redis_url: str = dataclasses.field(repr=False)  # may hold a password
    redis_cluster: bool
    redis_sentinels: tuple  # of (host, port)
    redis_sentinel_master: str
    redis_sentinel_auth: bool
    redis_sentinel_tls: bool
    channel_layer: str
    redis_inbox_capacity: int
    redis_ack_timeout: int

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


def _refuse(name, why):
    raise ImproperlyConfigured(f"PEERJS['{name}'] ({SCHEMA[name][0]}) {why}")


REDIS_OPTIONS = (
    "REDIS_URL", "REDIS_CLUSTER", "REDIS_SENTINELS", "REDIS_SENTINEL_MASTER", "REDIS_SENTINEL_AUTH",
    "REDIS_SENTINEL_TLS", "CHANNEL_LAYER", "REDIS_INBOX_CAPACITY", "REDIS_ACK_TIMEOUT",
)


def _check_redis(values):
    redis_url = values["REDIS_URL"]
    given = urlsplit(redis_url).scheme
    if redis_url and given not in REDIS_SCHEMES:
        # Not echoed: the URL may hold a password.
        hint = " (Sentinel: PEERJS_REDIS_SENTINELS and PEERJS_REDIS_SENTINEL_MASTER beside it)" if "sentinel" in given else ""
        _refuse("REDIS_URL", f"must be a {', '.join(f'{scheme}://' for scheme in REDIS_SCHEMES)} URL{hint}.")
    if values["REDIS_CLUSTER"] and not redis_url:
        _refuse("REDIS_CLUSTER", "needs REDIS_URL, the address of one node of the cluster.")
    values["REDIS_SENTINELS"] = _sentinels(values)
    if not values["CHANNEL_LAYER"] or values["CHANNEL_LAYER"] == DEFAULT_CHANNEL_LAYER:
        _refuse("CHANNEL_LAYER", f"must name an alias of its own, not {values['CHANNEL_LAYER']!r}: "
                "the default layer carries the site's groups.")


def _sentinels(values):
    """REDIS_SENTINELS as (host, port) pairs, checked against the other Redis options."""
    sentinels = values["REDIS_SENTINELS"]
    if not sentinels:
        if values["REDIS_SENTINEL_TLS"]:
            _refuse("REDIS_SENTINEL_TLS", "is set, but REDIS_SENTINELS is not: it says how the sentinels are asked "
                    "(for TLS to Redis itself, REDIS_URL is rediss://).")
        return ()
    if isinstance(sentinels, str):
        _refuse("REDIS_SENTINELS", "must be a list of host:port strings.")
    addresses = []
    for item in sentinels:
        try:
            addresses.append(sentinel.parse_address(item))
        except (ValueError, AttributeError):
            _refuse("REDIS_SENTINELS", f"has {item!r}, which is no host:port (e.g. redis-sentinel-0:26379).")
    if not values["REDIS_URL"]:
        _refuse("REDIS_SENTINELS", "needs REDIS_URL too: it gives the master's password and database "
                "(redis://:PASSWORD@mymaster/0; its host is not used).")
    if urlsplit(values["REDIS_URL"]).scheme == "unix":
        _refuse("REDIS_SENTINELS", "needs a redis:// or rediss:// REDIS_URL: the sentinels name a TCP address.")
    try:
        sentinel.master_settings(values["REDIS_URL"])
    except ValueError:
        _refuse("REDIS_URL", "must end in a database number (redis://:PASSWORD@mymaster/0) with REDIS_SENTINELS.")
    if values["REDIS_CLUSTER"]:
        _refuse("REDIS_SENTINELS", "cannot go with REDIS_CLUSTER: a Redis Cluster has no sentinels; choose one.")
    if not values["REDIS_SENTINEL_MASTER"]:
        _refuse("REDIS_SENTINEL_MASTER", "must name the master set, as in the sentinels' 'sentinel monitor NAME ...'.")
    if values["REDIS_SENTINEL_AUTH"] and not urlsplit(values["REDIS_URL"]).password:
        _refuse("REDIS_SENTINEL_AUTH", "needs a password in REDIS_URL (redis://:PASSWORD@mymaster/0): the sentinels "
                "are asked with it.")
    return tuple(addresses)


def _redis_options(peerjs):
    """The Redis options of a PEERJS dict, checked, without the rest: settings use them before the apps load."""
    values = {name: (peerjs or {}).get(name, SCHEMA[name][1]) for name in REDIS_OPTIONS}
    _check_redis(values)
    return types.SimpleNamespace(**{name.lower(): value for name, value in values.items()})


def _validated(raw):
    unknown = set(raw) - set(SCHEMA)
    if unknown:
        raise ImproperlyConfigured(f"Unknown PEERJS settings: {', '.join(sorted(unknown))}")
    values = {name: raw.get(name, default) for name, (_, default, _, _) in SCHEMA.items()}
    fail = _refuse

    if not values["KEY"]:
        fail("KEY", "must not be empty.")
    path = values["PATH"]
    if not path.startswith("/"):
        fail("PATH", f"must start with '/', got {path!r}.")
    if values["MAX_MESSAGE_BYTES"] < values["MAX_FRAME_BYTES"]:
        fail("MAX_MESSAGE_BYTES", "must be at least PEERJS_MAX_FRAME_BYTES.")
    if values["ID_MAX_LENGTH"] > ID_COLUMN_LENGTH:
        fail("ID_MAX_LENGTH", f"must be at most {ID_COLUMN_LENGTH}, what the registry holds.")
    if values["WORKER_TIMEOUT"] < 4 * values["WORKER_BEAT"]:
        # A live worker's silence after an outage every worker saw can last
        # about four beats (signaling.services): shorter, and it could be reaped.
        fail("WORKER_TIMEOUT", "must be at least four times PEERJS_WORKER_BEAT.")
    if values["IPV6_PREFIX"] > 128:
        fail("IPV6_PREFIX", f"must be a prefix length from 1 to 128, got {values['IPV6_PREFIX']}.")
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
    values["WEBHOOK_ALLOW_NETWORKS"] = _networks(values, "WEBHOOK_ALLOW_NETWORKS", fail)
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
    _check_redis(values)
    values["PATH"] = path.rstrip("/")
    values["CORS_ORIGINS"] = tuple(values["CORS_ORIGINS"])
    values["TURN_URLS"] = tuple(values["TURN_URLS"])
    return Options(**{name.lower(): value for name, value in values.items()})


@functools.cache
def options():
    """The validated options of ``settings.PEERJS``; computed once per process."""
    from django.conf import settings

    return _validated(getattr(settings, "PEERJS", {}))


IN_MEMORY_LAYER = {"BACKEND": "channels.layers.InMemoryChannelLayer"}


def channel_layers(peerjs=None):
    """``CHANNEL_LAYERS`` for a site, from its ``PEERJS`` settings (a dict, as in settings.PEERJS).

    Without REDIS_URL: Channels' in-memory layer as ``default``, for one
    worker. With it: channels-redis as ``default`` (its pub/sub layer on a
    Redis Cluster), so that the site's consumers and the operators' actions
    (signaling.broadcasts) have groups across the workers, and the app's bus
    between workers under its own alias (:func:`bus_layer`). A site with layers of
    its own keeps them and adds the bus: ``{**MINE, **bus_layer(PEERJS)}``.
    """
    o = _redis_options(peerjs)
    if not o.redis_url:
        return {DEFAULT_CHANNEL_LAYER: IN_MEMORY_LAYER}
    return {DEFAULT_CHANNEL_LAYER: _groups_layer(o), **bus_layer(peerjs)}


def bus_layer(peerjs=None):
    """The app's layer between workers, ``{alias: layer}``, for CHANNEL_LAYERS; ``{}`` without REDIS_URL."""
    o = _redis_options(peerjs)
    if not o.redis_url:
        return {}
    return {
        o.channel_layer: {
            "BACKEND": "signaling.bus.layer.RedisBatchLayer",
            "CONFIG": {
                "url": o.redis_url,
                "cluster": o.redis_cluster,
                "sentinels": o.redis_sentinels,
                "master": o.redis_sentinel_master,
                "sentinel_auth": o.redis_sentinel_auth,
                "sentinel_tls": o.redis_sentinel_tls,
                "capacity": o.redis_inbox_capacity,
                "ack_timeout": o.redis_ack_timeout / 1000,
            },
        }
    }


def _groups_layer(o):
    if o.redis_cluster:
        # channels-redis' RedisChannelLayer keeps groups and channels in keys,
        # which a Cluster's other nodes answer with MOVED. Its pub/sub layer
        # uses PUBLISH and SUBSCRIBE alone, which a Cluster carries to every
        # node: groups work through the one node REDIS_URL names.
        return {"BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer", "CONFIG": {"hosts": [o.redis_url]}}
    # redis-py's default socket timeout (5 s) equals channels-redis'
    # blocking read, so a quiet consumer's read timed out and ended it;
    # its pool refused a hundred-and-first connection, and a channel
    # of its default capacity (100) drops what comes past it.
    # No retry of a failed command (redis-py's pools have none unless given
    # one): a hub's blocking read must fail when Redis restarts, for the hub
    # to join its groups again (signaling.broadcasts.Membership).
    host = {"socket_timeout": None, "max_connections": 1000}
    if o.redis_sentinels:
        # channels-redis' own Sentinel support: redis-py's SentinelConnectionPool.
        # Timeouts for the sentinels: redis-py sets none, and one that is
        # black-holed would hold every connection the layer opens.
        settings = sentinel.master_settings(o.redis_url)
        host.update(sentinels=list(o.redis_sentinels), master_name=o.redis_sentinel_master,
                    sentinel_kwargs={"socket_connect_timeout": 5, "socket_timeout": 5,
                                     **sentinel.asking(o, settings)},
                    **settings)
    else:
        host["address"] = o.redis_url
    return {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {"hosts": [host], "capacity": 1000},
    }
