"""Settings of the PeerServer project, all read from the environment.

The embedded defaults (no variable set) give a single worker on a SQLite file
with the in-memory channel layer, which is what ``make run`` serves. The
cluster sets DATABASE_URL (PostgreSQL) and REDIS_URL; see README.md for every
variable.
"""
import datetime
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from cuepages import conf as cuepages_conf
from signaling import env
from signaling import conf as peerjs_conf

BASE_DIR = Path(__file__).resolve().parent.parent

DEBUG = env.boolean("DJANGO_DEBUG", False)

# The key signs sessions and password-reset links: with debug off a worker
# refuses to start with none, with a key published somewhere (this repository's
# old defaults, Django's startproject keys) or with one short enough to guess.
DEVELOPMENT_SECRET_KEY = "insecure-development-key-only-used-with-DJANGO_DEBUG"
PUBLIC_SECRET_KEYS = {
    DEVELOPMENT_SECRET_KEY,
    "change-me-this-default-is-public",  # docker-compose.yml's former default
    "collectstatic-only-not-a-secret",  # the Dockerfile's former build-time key
}
MIN_SECRET_KEY_LENGTH = 32
_MAKE_A_KEY = "make one with: python3 -c 'import secrets; print(secrets.token_urlsafe(50))'"

SECRET_KEY = env.string("DJANGO_SECRET_KEY", "")
if not DEBUG:
    if not SECRET_KEY:
        raise ImproperlyConfigured(
            "DJANGO_SECRET_KEY is required when DJANGO_DEBUG is off "
            f"(set DJANGO_DEBUG=1 for local development, or {_MAKE_A_KEY})."
        )
    if (
        SECRET_KEY in PUBLIC_SECRET_KEYS
        or SECRET_KEY.startswith("django-insecure-")
        or "change-me" in SECRET_KEY.lower()
        or "changeme" in SECRET_KEY.lower()
    ):
        raise ImproperlyConfigured(
            f"DJANGO_SECRET_KEY is a published placeholder, not a secret; {_MAKE_A_KEY}."
        )
    if len(SECRET_KEY) < MIN_SECRET_KEY_LENGTH or len(set(SECRET_KEY)) < 5:
        raise ImproperlyConfigured(
            f"DJANGO_SECRET_KEY is too weak ({len(SECRET_KEY)} characters, "
            f"{len(set(SECRET_KEY))} distinct; at least {MIN_SECRET_KEY_LENGTH} and 5); {_MAKE_A_KEY}."
        )
elif not SECRET_KEY:
    SECRET_KEY = DEVELOPMENT_SECRET_KEY

# The seed opens http://0.0.0.0:8080/, so 0.0.0.0 is a host name browsers send.
ALLOWED_HOSTS = env.string_list(
    "DJANGO_ALLOWED_HOSTS", ["localhost", "127.0.0.1", "0.0.0.0", "[::1]"]
)
CSRF_TRUSTED_ORIGINS = env.string_list("DJANGO_CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    # First: its runserver (daphne's, adapted: signaling/servers/daphne.py)
    # takes the place of daphne's.
    "signaling",
    "daphne",  # before staticfiles, so that runserver serves ASGI (HTTP and WebSockets)
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "axes",
    "channels",
    "cuepages",
]

MIDDLEWARE = [
    # First: health probes are answered before host validation and the HTTPS
    # redirect (see signaling/health.py).
    "signaling.health.ProbeMiddleware",
    "django.middleware.security.SecurityMiddleware",
    # Static files (WhiteNoise's) read in its thread, not streamed: see p2psite/streaming.py.
    "p2psite.streaming.ReadSyncStreams",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as django-axes asks: it turns a lockout into its answer.
    "axes.middleware.AxesMiddleware",
]

# AxesStandaloneBackend first: it refuses a locked-out client before the
# password is even checked, then ModelBackend checks it.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]

# Admin login throttling (django-axes). After DJANGO_LOGIN_FAILURE_LIMIT wrong
# passwords for one username from one client address, that username is refused
# from that address (HTTP 429), even with the right password, for
# DJANGO_LOGIN_COOLOFF_MINUTES; a successful login clears its count. The
# address is the one the signaling server sees (signaling.http, so it follows
# PEERJS_PROXIED): behind our proxy a forged X-Forwarded-For entry does not
# give a client fresh tries. Operators lift a lockout early with
# `manage.py axes_reset_username NAME` (or `axes_reset`), or by deleting the
# access attempt in the admin.
AXES_FAILURE_LIMIT = env.integer("DJANGO_LOGIN_FAILURE_LIMIT", 5, minimum=1)
AXES_COOLOFF_TIME = datetime.timedelta(minutes=env.integer("DJANGO_LOGIN_COOLOFF_MINUTES", 15, minimum=1))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_CLIENT_IP_CALLABLE = "signaling.admin.login_client_address"

ROOT_URLCONF = "p2psite.urls"
WSGI_APPLICATION = "p2psite.wsgi.application"
ASGI_APPLICATION = "p2psite.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# The PeerServer; every option is documented in signaling/conf.py and README.md.
PEERJS = peerjs_conf.from_environ()

# DATABASE_URL: any dj-database-url URL, e.g. postgres://user@db:5432/peers.
# Default: a SQLite file beside manage.py.
DATABASES = {
    "default": dj_database_url.parse(
        env.string("DATABASE_URL", f"sqlite:///{BASE_DIR / 'db.sqlite3'}"),
        conn_max_age=env.integer("DJANGO_CONN_MAX_AGE", 60, minimum=0),
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Several workers may share one SQLite file: WAL lets readers run beside
    # the writer, IMMEDIATE transactions take the write lock up front instead
    # of failing half-way, and the timeout waits for it rather than erroring.
    # Keep the connection: opening one (and its PRAGMAs) per registry call
    # cost a worker milliseconds per socket opened.
    DATABASES["default"]["CONN_MAX_AGE"] = None
    DATABASES["default"]["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
    }
    # Tests use a file too (not SQLite's in-memory database), so that
    # concurrent claims from several threads behave as in production.
    DATABASES["default"]["TEST"] = {"NAME": str(BASE_DIR / "test-db.sqlite3")}
elif DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # A database that hangs (a frozen server, a dead link) must free the
    # threads waiting on it, not hold them for ever. The workers answer their
    # clients after PEERJS_DATABASE_TIMEOUT whatever happens (signaling.db);
    # these bound how long a thread stays in the call after that:
    # connecting gives up after the timeout (libpq counts whole seconds, 2 at
    # least); an idle-looking connection whose peer is gone is found dead by
    # TCP keepalives within about twice the timeout, and one whose writes
    # go unacknowledged by tcp_user_timeout; a statement the server runs for
    # longer than the timeout is cancelled by the server (nobody waits for
    # its answer any more; it applies to manage.py migrate too: raise the
    # timeout for that command if a migration needs longer). Values a
    # DATABASE_URL sets itself (?connect_timeout=...) win.
    _timeout_ms = PEERJS["DATABASE_TIMEOUT"]
    _timeout_s = max(2, -(-_timeout_ms // 1000))
    for _name, _value in {
        "connect_timeout": _timeout_s,
        "keepalives": 1,
        "keepalives_idle": _timeout_s,
        "keepalives_interval": max(1, _timeout_s // 3),
        "keepalives_count": 3,
        "tcp_user_timeout": 2 * _timeout_ms,
        "options": f"-c statement_timeout={_timeout_ms}",
    }.items():
        DATABASES["default"].setdefault("OPTIONS", {}).setdefault(_name, _value)

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# REDIS_URL unset: the in-memory channel layer (one worker). Set: the workers
# share signaling through Redis on the app's bus, and the default layer is
# channels-redis (signaling.conf.channel_layers; REDIS_URL, REDIS_CLUSTER and
# the bus's options are part of PEERJS).
CHANNEL_LAYERS = peerjs_conf.channel_layers(PEERJS)

# DJANGO_HTTPS: the site is served over HTTPS, by nginx (PEERJS_PROXIED on) or
# by the worker itself (ASGI_TLS_CERT/ASGI_TLS_KEY, deploy/worker-entrypoint.sh).
# Plain HTTP is then redirected, browsers are told to stay on HTTPS (HSTS), and
# session and CSRF cookies travel over HTTPS only. `manage.py check --deploy`
# reports nothing with it on (and a real DJANGO_SECRET_KEY).
HTTPS = env.boolean("DJANGO_HTTPS", False)
if HTTPS:
    SECURE_SSL_REDIRECT = True
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    # An hour by default: long enough to protect a session, short enough that
    # a LAN setup can go back to plain HTTP. Raise it once HTTPS is there to stay.
    SECURE_HSTS_SECONDS = env.integer("DJANGO_HSTS_SECONDS", 3600, minimum=0)
    # Both commit every subdomain (preload: for good, through the browsers'
    # built-in list) to HTTPS: the operator's call, off unless asked for. Off is
    # a decision, so check --deploy is not to warn about it on every run.
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env.boolean("DJANGO_HSTS_INCLUDE_SUBDOMAINS", False)
    SECURE_HSTS_PRELOAD = env.boolean("DJANGO_HSTS_PRELOAD", False)
    SILENCED_SYSTEM_CHECKS = [
        *([] if SECURE_HSTS_INCLUDE_SUBDOMAINS else ["security.W005"]),
        *([] if SECURE_HSTS_PRELOAD else ["security.W021"]),
    ]
    if PEERJS["PROXIED"]:
        # nginx terminates TLS and says so in X-Forwarded-Proto, which it sets
        # on every request (replacing any a client sent). Trusting it is safe
        # only because the workers are reachable through nginx alone.
        SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
# Times to the second, with their zone (p2psite/formats/en/formats.py).
FORMAT_MODULE_PATH = ["p2psite.formats"]
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
# Serve straight from the app and npm folders, so a worker needs no
# collectstatic step to serve the pages (the Docker image still runs it).
WHITENOISE_USE_FINDERS = True
# Files served at the site's root, as browsers ask for them: /favicon.ico.
WHITENOISE_ROOT = BASE_DIR / "p2psite" / "root"
STATICFILES_DIRS = [BASE_DIR / "static"]
# The PeerJS client comes from the pinned npm package, served as-is: no CDN.
if (BASE_DIR / "node_modules" / "peerjs" / "dist").is_dir():
    STATICFILES_DIRS.append(("vendor/peerjs", BASE_DIR / "node_modules" / "peerjs" / "dist"))

LOG_LEVEL = env.string("DJANGO_LOG_LEVEL", "INFO")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "loggers": {
        "signaling": {"handlers": ["console"], "level": LOG_LEVEL, "propagate": False},
    },
}

# Cue pages (the cuepages app)
# CUEPAGES_ICE_SERVERS: JSON list of RTCIceServer objects for the pages' PeerJS
#   clients, e.g. [{"urls": "stun:stun.example.org:3478"}] or a TURN server
#   with "username" and "credential". Default []: a theatre LAN needs none.
# CUEPAGES_PUBLIC_URL: base URL for the receiver's share link and QR code,
#   e.g. http://192.168.1.20:8080; default: the address the page was opened at.
CUEPAGES_ICE_SERVERS = cuepages_conf.ice_servers("CUEPAGES_ICE_SERVERS")
CUEPAGES_PUBLIC_URL = cuepages_conf.public_url("CUEPAGES_PUBLIC_URL")
