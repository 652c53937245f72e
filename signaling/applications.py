"""Which app a PeerJS key names, and its settings, for every worker.

An app is a key with settings of its own (signaling.models.App, edited in
the admin). The key in PEERJS_KEY needs no row: it resolves to the
environment's settings (PEERJS_*), so a server configured by environment
alone behaves as before; a row with that key replaces them.

Every socket and HTTP request asks for its key's app, so each worker keeps
the answers (unknown keys included) for PEERJS_APP_CACHE ms and then reads
the row again: an edit in the admin reaches every worker within that time,
without a restart and without any message between workers. If the database
is away when an answer is due for a re-read, the last known answer is kept
(and the outage logged once) rather than refusing peers the database has
nothing to do with; a key never read before has no last answer, and its
lookup raises the database's error.

    get_app(key)          -> AppSettings or None   (synchronous code)
    await aget_app(key)   -> AppSettings or None   (async code; no thread hop while cached)
"""
import dataclasses
import logging
import threading
import time

from django.db import DatabaseError

from signaling import conf
from signaling.db import Database, DatabaseUnavailable, outage

logger = logging.getLogger(__name__)

# The clock of the cache; tests replace it to age entries without waiting.
clock = time.monotonic


@dataclasses.dataclass(frozen=True)
class AppSettings:
    """Everything the server needs to know about one app, resolved and typed."""

    key: str
    name: str
    origins: tuple  # allowed origins; empty: any
    concurrent_limit: int
    allow_discovery: bool
    auth: str  # conf.AUTH_NONE, AUTH_TOKEN or AUTH_SESSION
    token_secret: str = dataclasses.field(repr=False)
    turn_urls: tuple  # stun:/stuns:/turn:/turns: URLs
    turn_secret: str = dataclasses.field(repr=False)
    turn_ttl: int  # seconds; for an app without authentication at most PEERJS_TURN_TTL_WITHOUT_AUTH
    webhook_url: str
    webhook_secret: str = dataclasses.field(repr=False)
    takeover_same_address: bool = False  # a takeover of a connected id only from its client's address
    from_environment: bool = False  # the PEERJS_KEY app, with no row

    @property
    def any_origin(self):
        return not self.origins

    def origin_allowed(self, origin):
        """Whether a page from ``origin`` may use this app (as conf.Options.origin_allowed).

        Requests without an Origin header (curl, native clients, a backend)
        are allowed: the check protects browsers' users, it is not
        authentication (that is ``auth``).
        """
        return self.any_origin or not origin or origin in self.origins

    @property
    def requires_token(self):
        return self.auth == conf.AUTH_TOKEN

    @property
    def requires_session(self):
        return self.auth == conf.AUTH_SESSION

    @property
    def has_ice_servers(self):
        return bool(self.turn_urls)


def _turn_ttl(auth, ttl, o):
    # An app anyone may use gives its relay to anyone who finds its page:
    # such credentials must die soon (PEERJS_TURN_TTL_WITHOUT_AUTH).
    return min(ttl, o.turn_ttl_without_auth) if auth == conf.AUTH_NONE else ttl


def from_environment(options=None):
    """The default app: PEERJS_KEY with the environment's settings."""
    o = options or conf.options()
    return AppSettings(
        key=o.key,
        name="Default app (environment)",
        origins=() if o.any_origin else tuple(o.cors_origins),
        concurrent_limit=o.concurrent_limit,
        allow_discovery=o.allow_discovery,
        auth=o.auth,
        takeover_same_address=o.takeover_same_address,
        token_secret=o.token_secret,
        turn_urls=tuple(o.turn_urls),
        turn_secret=o.turn_secret,
        turn_ttl=_turn_ttl(o.auth, o.turn_ttl, o),
        webhook_url="",
        webhook_secret="",
        from_environment=True,
    )


def from_row(app, options=None):
    o = options or conf.options()
    return AppSettings(
        key=app.key,
        name=app.name,
        origins=app.origins,
        concurrent_limit=app.concurrent_limit or o.concurrent_limit,
        allow_discovery=app.allow_discovery,
        auth=app.auth,
        takeover_same_address=app.takeover_same_address,
        token_secret=app.token_secret,
        turn_urls=app.ice_urls,
        turn_secret=app.turn_secret,
        turn_ttl=_turn_ttl(app.auth, app.turn_ttl, o),
        webhook_url=app.webhook_url,
        webhook_secret=app.webhook_secret,
    )


def _read(key):
    """The app ``key`` names, from the database; None for an unknown key."""
    from signaling.models import App

    outage.reconnect_if_stale()
    row = App.objects.filter(key=key).first()
    if row is not None:
        return from_row(row)
    if key == conf.options().key:
        return from_environment()
    return None


# key -> (AppSettings or None, when it was read by ``clock``)
_cache = {}
_lock = threading.Lock()
_outage_logged = False
# Past this many entries, expired ones are dropped (unknown keys are cached
# too, and a client may invent any number of them).
_PRUNE_AT = 1000


def _cached(key):
    """(True, answer) when a fresh answer for ``key`` is cached, else (False, None)."""
    entry = _cache.get(key)
    if entry is not None and clock() - entry[1] < conf.options().app_cache / 1000:
        return True, entry[0]
    return False, None


def _refresh(key):
    global _outage_logged
    try:
        answer = _read(key)
    except DatabaseError as exc:
        with _lock:
            entry = _cache.get(key)
            if entry is None:
                raise  # nothing known to fall back on: the caller refuses
            if not _outage_logged:
                _outage_logged = True
                logger.warning("apps: cannot read apps from the database (%s); serving the last known settings", exc)
            # Keep the last answer for another period before trying again, so
            # an outage costs one failed query per key and period, not one per peer.
            _cache[key] = (entry[0], clock())
            return entry[0]
    with _lock:
        if _outage_logged:
            _outage_logged = False
            logger.warning("apps: the database answers again")
        if len(_cache) >= _PRUNE_AT:
            horizon = clock() - conf.options().app_cache / 1000
            for stale in [k for k, (_, at) in _cache.items() if at <= horizon]:
                del _cache[stale]
        _cache[key] = (answer, clock())
    return answer


def get_app(key):
    """The settings of the app ``key`` names, or None for an unknown key (synchronous code)."""
    fresh, answer = _cached(key)
    if fresh:
        return answer
    known, answer = _known_in_outage(key)
    return answer if known else _refresh(key)


def _known_in_outage(key):
    """(True, the last answer for ``key``) while the database is away (or hung), else (False, None).

    Every request and socket would wait for the database in turn (a hung
    one for its whole timeout), only to be served that answer after all.
    """
    known, answer = peek(key)
    if known and outage.since is not None:
        return True, answer
    return False, None


# On threads of their own, not the one Django's synchronous views share,
# nor the registry's; within PEERJS_DATABASE_TIMEOUT (signaling.db).
_database = Database(None, threads=2, name="apps")


async def aget_app(key):
    """The settings of the app ``key`` names, or None (async code: no thread hop while cached).

    A database that does not answer in time is one that is away: the last
    known answer serves, and without one DatabaseUnavailable is raised.
    """
    fresh, answer = _cached(key)
    if fresh:
        return answer
    known, answer = _known_in_outage(key)
    if known:
        return answer
    try:
        return await _database(_refresh, key)
    except DatabaseUnavailable:
        known, answer = peek(key)
        if known:
            return answer
        raise


def forget():
    """Drop every cached answer (tests, and settings changes)."""
    global _outage_logged
    with _lock:
        _cache.clear()
        _outage_logged = False


def peek(key):
    """(True, the last answer for ``key``, fresh or not) or (False, None): never touches the database.

    For code on the event loop that can act on a likely answer and must not
    wait for a certain one (the webhook receiver skips events of apps known
    to have no webhook).
    """
    entry = _cache.get(key)
    return (True, entry[0]) if entry is not None else (False, None)
