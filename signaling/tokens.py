"""Signed connect tokens: an app's backend vouches that a browser may hold a peer id.

An app whose ``auth`` is "token" admits a socket only with a token its
backend signed with the app's token secret, for that peer id, that key and
until an expiry. The browser passes it as PeerJS's own ``token`` option,
``new Peer(id, {token, ...})``, and the PeerJS client puts it raw (not
URL-encoded) in the socket's query string.

Why a JWT (HS256, PyJWT) and not ``django.core.signing``: the backends that
mint tokens are often not Python. Django's signed format (its own base64 and
``:`` layout, a salted key derivation from the secret) would have to be
re-implemented, byte for byte, in every language; a JWT is signed in one
call by a library that already exists for Node (``jsonwebtoken``), PHP
(``firebase/php-jwt``), Go, Ruby, Java and the rest, and its three
base64url parts joined by dots are URL-safe as they are, which the raw
query string needs. Only HS256 is accepted: the algorithm is fixed here,
never taken from the token.

The claims: ``sub`` the peer id, ``aud`` the app's key (a token for one
app is worth nothing at another that shares a secret by mistake), ``exp``
the expiry (required: no token lives for ever), ``iat`` when it was made.

    mint(app_or_key, peer_id, ttl_seconds=3600) -> token
    verify(app, peer_id, token) -> None when valid, else the reason, as the
                                   socket's ERROR frame and a 401 say it
"""
import time

import jwt

from signaling import conf

ALGORITHM = "HS256"
DEFAULT_TTL = 3600  # seconds
# Backends and workers run on different machines whose clocks differ a little.
LEEWAY = 30  # seconds

TOKEN_REQUIRED = "Token required"
BAD_SIGNATURE = "Invalid token: bad signature"
EXPIRED = "Invalid token: expired"
NOT_YET_VALID = "Invalid token: not yet valid"
OTHER_ID = "Invalid token: issued for another id"
OTHER_KEY = "Invalid token: issued for another key"
MALFORMED = "Invalid token: malformed"
WRONG_ALGORITHM = f"Invalid token: not signed with {ALGORITHM}"
NO_SECRET = "Invalid token: this app has no token secret"


def _resolve(app_or_key):
    if isinstance(app_or_key, str):
        from signaling.applications import get_app

        app = get_app(app_or_key)
        if app is None:
            raise LookupError(f"No app with key {app_or_key!r}")
        return app
    return app_or_key


def mint(app_or_key, peer_id, ttl_seconds=DEFAULT_TTL, now=None):
    """A token that lets ``peer_id`` connect to the app for ``ttl_seconds``.

    ``app_or_key`` is an AppSettings or a key (looked up with get_app).
    ``now`` (Unix seconds) defaults to the current time. The token is
    URL-safe: pass it as it is to ``new Peer(id, {token})``.
    """
    app = _resolve(app_or_key)
    if not app.token_secret:
        raise ValueError(f"The app {app.key!r} has no token secret (PEERJS_TOKEN_SECRET for the default app)")
    if not (isinstance(peer_id, str) and len(peer_id) <= conf.ID_COLUMN_LENGTH and conf.ID_RULE.fullmatch(peer_id)):
        raise ValueError(f"{peer_id!r} is not a PeerJS id (letters and digits, single spaces, '-' or '_' between)")
    if ttl_seconds <= 0:
        raise ValueError("ttl_seconds must be positive")
    issued = int(time.time() if now is None else now)
    claims = {"sub": peer_id, "aud": app.key, "iat": issued, "exp": issued + int(ttl_seconds)}
    return jwt.encode(claims, app.token_secret, algorithm=ALGORITHM)


def verify(app, peer_id, token):
    """None when ``token`` lets ``peer_id`` connect to ``app``; else why not, in a few words.

    The reason goes verbatim into the socket's ERROR frame (and the
    ice-servers endpoint's 401), so the app's developer reads in the
    browser's console which of missing, forged, expired or someone else's
    token it was. A token that is no JWT at all is "Token required": the
    PeerJS client makes up a random token when the page gives none.
    """
    if not token or token.count(".") != 2:
        return TOKEN_REQUIRED
    if not app.token_secret:
        return NO_SECRET
    try:
        claims = jwt.decode(
            token,
            app.token_secret,
            algorithms=[ALGORITHM],
            audience=app.key,
            leeway=LEEWAY,
            options={"require": ["sub", "aud", "exp"]},
        )
    except jwt.InvalidSignatureError:
        return BAD_SIGNATURE
    except jwt.InvalidAlgorithmError:
        return WRONG_ALGORITHM
    except jwt.ExpiredSignatureError:
        return EXPIRED
    except jwt.ImmatureSignatureError:
        return NOT_YET_VALID
    except jwt.InvalidAudienceError:
        return OTHER_KEY
    except jwt.MissingRequiredClaimError as exc:
        return f"Invalid token: no {exc.claim} claim"
    except jwt.InvalidTokenError:
        return MALFORMED
    if claims["sub"] != peer_id:
        return OTHER_ID
    return None
