"""Short-lived TURN credentials, in the scheme coturn checks with --use-auth-secret.

The TURN REST API scheme (draft-uberti-behave-turn-rest-00), which coturn
implements: the username is ``EXPIRY:NAME`` (EXPIRY in Unix seconds) and the
credential is base64(HMAC-SHA1(shared secret, username)). The TURN server
knows only the shared secret: it recomputes the credential from the
username, and refuses it once EXPIRY has passed. So nothing is stored, no
credential outlives its expiry, and a leaked one cannot be stretched
(changing the expiry changes the credential).

NAME is the peer's id when the caller gives one (coturn logs it, so an
operator can see whose relay is whose), else a random string.

    credentials(app, peer_id=None, now=None) -> {"iceServers": [...], "ttl": N}
"""
import base64
import collections
import hashlib
import hmac
import secrets
import threading
import time

from signaling.conf import TURN_URL_SCHEMES

# TURN credentials made, by app key, for the metrics (peerjs_turn_credentials_total).
# The views that make them run on threads.
_made = collections.Counter()
_made_lock = threading.Lock()


def made():
    """{app key: TURN credentials made by this process}."""
    with _made_lock:
        return dict(_made)


def credential(secret, username):
    """base64(HMAC-SHA1(secret, username)): what coturn computes for ``username``."""
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def credentials(app, peer_id=None, now=None):
    """The RTCIceServer list for ``app``'s peers, and how many seconds it is good for.

    ``app`` is an AppSettings (signaling.applications). STUN URLs need no
    credential and get none; TURN URLs share one username and credential
    valid until ``now + app.turn_ttl`` (``now``, Unix seconds, defaults to
    the current time). The answer goes into PeerJS as ``config: {iceServers}``.
    """
    now = int(time.time() if now is None else now)
    stun = [url for url in app.turn_urls if not url.startswith(TURN_URL_SCHEMES)]
    turn = [url for url in app.turn_urls if url.startswith(TURN_URL_SCHEMES)]
    servers = []
    if stun:
        servers.append({"urls": stun})
    if turn:
        username = f"{now + app.turn_ttl}:{peer_id or secrets.token_hex(8)}"
        servers.append({"urls": turn, "username": username, "credential": credential(app.turn_secret, username)})
        with _made_lock:
            _made[app.key] += 1
    return {"iceServers": servers, "ttl": app.turn_ttl}
