"""The site-session mode: a socket is a logged-in user of this site, or nobody.

An app whose ``auth`` is "session" admits a socket only when the browser
that opens it carries the session cookie of a user logged in to this Django
site (same site: the cookie goes with the WebSocket handshake as with any
request). This does what ``django.contrib.auth.get_user`` does for a
request, from the ASGI scope's headers, and only when asked (for the sockets
of such apps): Channels' AuthMiddleware would load a session for every
socket of every app.

    await session_user(scope) -> the User, or None
"""
from importlib import import_module

from django.conf import settings
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model, load_backend
from django.http.cookie import parse_cookie
from django.utils.crypto import constant_time_compare

from signaling.db import Database
from signaling.http import header

# What a socket (ERROR frame) or request (401) of a "session" app without a logged-in user is told.
LOGIN_REQUIRED = "Login required"
# What a socket of a "session" app opened by a page of another origin is told.
FOREIGN_ORIGIN = "This app's peers sign in with the site's login: sockets from pages of other origins are refused"


def origin_may_use_session(scope, app):
    """Whether a socket's page may ride the browser's session cookie to a "session" app.

    A browser sends the cookie with the handshake of any page of the same
    *site* (another port, a sibling subdomain): such a page could take over
    the user's peer id and read what is sent to it. So the page must be of
    this server's own origin (its host as the Host header says), one the app
    names, or one of CSRF_TRUSTED_ORIGINS. Without an Origin header the
    client is no browser and has the cookie only if it is the user.
    """
    origin = header(scope, b"origin")
    if origin is None:
        return True
    if origin in app.origins or origin in settings.CSRF_TRUSTED_ORIGINS:
        return True
    _scheme, _, host = origin.partition("://")
    return bool(host) and host.lower() == (header(scope, b"host") or "").lower()


def session_key(scope):
    """The session cookie's value from an ASGI scope's headers, or None."""
    for name, value in scope.get("headers", ()):
        if name == b"cookie":
            # Each Cookie header line may hold several cookies.
            cookie = parse_cookie(value.decode("latin-1")).get(settings.SESSION_COOKIE_NAME)
            if cookie:
                return cookie
    return None


def user_for_session(key):
    """The active user logged in to session ``key``, or None (synchronous; touches the database).

    As django.contrib.auth.get_user: the session names the user and the
    backend that logged it in (one still configured); the user must still
    exist and be allowed to log in (the backend's get_user checks
    is_active); and the session's password hash must match, so that
    changing a password (or "log out everywhere") ends the user's sessions
    here too. Unlike get_user, nothing is written: a socket cannot set a
    cookie, so a stale session is only refused, and Django flushes it at
    the next page the user opens.
    """
    session = import_module(settings.SESSION_ENGINE).SessionStore(key)
    user_id = session.get(SESSION_KEY)
    backend_path = session.get(BACKEND_SESSION_KEY)
    if user_id is None or backend_path not in settings.AUTHENTICATION_BACKENDS:
        return None
    user = load_backend(backend_path).get_user(get_user_model()._meta.pk.to_python(user_id))
    if user is None:
        return None
    if hasattr(user, "get_session_auth_hash"):
        session_hash = session.get(HASH_SESSION_KEY)
        if not session_hash:
            return None
        hashes = [user.get_session_auth_hash(), *user.get_session_auth_fallback_hash()]
        if not any(constant_time_compare(session_hash, h) for h in hashes):
            return None
    return user


# On threads of their own, not the one Django's synchronous views share;
# within PEERJS_DATABASE_TIMEOUT, else DatabaseUnavailable (signaling.db).
_user_for_session = Database(None, threads=2, name="sessions")


async def session_user(scope):
    """The logged-in user whose session cookie the socket's handshake carries, or None.

    One hop to the database thread, and none at all without a cookie.
    """
    key = session_key(scope)
    if not key:
        return None
    return await _user_for_session(user_for_session, key)
