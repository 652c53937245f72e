"""The PeerServer's HTTP API: server info, fresh ids, discovery and ICE servers."""
import functools

from django.http import HttpResponse, JsonResponse
from django.views.decorators.http import require_http_methods

from signaling import limits, registry, tokens, turn
from signaling.hub import known_bans
from signaling.applications import get_app
from signaling.auth import LOGIN_REQUIRED
from signaling.conf import options
from signaling.db import UNREACHABLE, unavailable_is_503
from signaling.http import request_address
from signaling.protocol import MSG_INVALID_KEY, check_id

INFO = {
    "name": "PeerJS Server",
    "description": "A server side element to broker connections between PeerJS clients.",
    "website": "https://peerjs.com/",
}


def cors(view):
    """Answer preflight requests and add CORS headers for allowed origins.

    The origins whose pages may call the API are the app's (App.allowed_origins,
    for the ``key`` in the URL), else PEERJS_CORS_ORIGINS ("*": any, as the
    reference). A disallowed origin gets no CORS headers, so the browser
    withholds the answer from that page. While the database is away an app
    never read before cannot be known: the environment's origins answer
    for it, and the view answers 503.
    """

    @functools.wraps(view)
    def wrapper(request, *args, **kwargs):
        origin = request.headers.get("Origin")
        key = kwargs.get("key")
        try:
            policy = (get_app(key) if key else None) or options()
        except UNREACHABLE:
            policy = options()
        if request.method == "OPTIONS":
            response = HttpResponse(status=204)
        else:
            response = view(request, *args, **kwargs)
        if origin and policy.origin_allowed(origin):
            response["Access-Control-Allow-Origin"] = "*" if policy.any_origin else origin
            response["Access-Control-Allow-Methods"] = "GET, OPTIONS"
            # Authorization: a token for /ice-servers may come as a Bearer header.
            response["Access-Control-Allow-Headers"] = "Content-Type, Authorization"
            if not policy.any_origin:
                response["Vary"] = "Origin"
        return response

    return wrapper


def _text(body, status=200):
    return HttpResponse(body, status=status, content_type="text/plain; charset=utf-8")


def rate_limited(kind):
    """Count the request against its client address's limit for ``kind``; over it, 429 with Retry-After.

    Inside ``cors``, so that a page on another origin can read the 429.
    """

    def decorator(view):
        @functools.wraps(view)
        def wrapper(request, *args, **kwargs):
            verdict = limits.limiter.hit(kind, request_address(request, options()))
            if verdict.over:
                response = _text(
                    f"Too many requests from your address; try again in {verdict.retry_after} s", status=429
                )
                response["Retry-After"] = str(verdict.retry_after)
                return response
            return view(request, *args, **kwargs)

        return wrapper

    return decorator


@require_http_methods(["GET", "HEAD", "OPTIONS"])
@cors
def info(request):
    return JsonResponse(INFO)


@require_http_methods(["GET", "HEAD", "OPTIONS"])
@cors
@rate_limited(limits.ID)
@unavailable_is_503
def new_id(request, key):
    """A fresh id, for any key, as the reference answers.

    An id is no secret, and the key is checked where it matters, on the
    socket: a client with a wrong key then hears "Invalid key provided"
    there. A 401 here would reach the PeerJS client as an error with an
    empty message (it keeps only the status of a failed /id).
    """
    o = options()
    # A collision with a connected peer is all but impossible with UUIDs, but
    # a pluggable generator may be less generous: check, and try again.
    for _attempt in range(10):
        candidate = o.generate_client_id()
        if not registry.is_connected(key, candidate):
            return _text(candidate)
    return _text("Could not find a free id; try again", status=503)


@require_http_methods(["GET", "HEAD", "OPTIONS"])
@cors
@unavailable_is_503
def peers(request, key):
    app = get_app(key)
    if app is None:
        return _text(MSG_INVALID_KEY, status=401)
    if not app.allow_discovery:
        return _text("Discovery is not allowed on this server", status=401)
    return JsonResponse(registry.connected_ids(key), safe=False)


def _bearer(request):
    scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
    return credentials.strip() if scheme.lower() == "bearer" else ""


@require_http_methods(["GET", "HEAD", "OPTIONS"])
@cors
@rate_limited(limits.ICE)
@unavailable_is_503
def ice_servers(request, key):
    """STUN/TURN servers with fresh TURN credentials: ``{"iceServers": [...], "ttl": N}``.

    Guarded as the app's sockets are: counted in the address's rate limit
    (a kind of its own), refused (403, the ban's message) to a banned
    address or id; with ``auth`` "token", the request carries the peer's id
    and its connect token (``?id=...&token=...``, or ``Authorization: Bearer
    TOKEN`` with ``?id=``); with "session", the site's session cookie.
    Without that, 401 and the reason, as the socket's ERROR says it.

    An unknown key is 404, not 401 as on /peers: no credential can make it
    answer, and a page that reacts to 401 by fetching a fresh token from
    its backend must not loop on a typo. A key with no ICE servers
    configured is 404 too (the cue pages then fall back to
    CUEPAGES_ICE_SERVERS).
    """
    app = get_app(key)
    if app is None:
        return _text(MSG_INVALID_KEY, status=404)
    if not app.has_ice_servers:
        return _text("No ICE servers are configured for this key", status=404)
    peer_id = request.GET.get("id") or None
    if peer_id:
        problem = check_id(peer_id, options().id_max_length)
        if problem:
            return _text(problem, status=400)
    ban = known_bans().find(key, peer_id, request_address(request, options()))
    if ban is not None:
        return _text(ban.message(), status=403)
    if app.requires_token:
        if peer_id:
            problem = tokens.verify(app, peer_id, _bearer(request) or request.GET.get("token", ""))
        else:
            problem = f"{tokens.TOKEN_REQUIRED}: pass ?id=ID&token=TOKEN"
        if problem:
            response = _text(problem, status=401)
            response["WWW-Authenticate"] = 'Bearer realm="peerjs"'
            return response
    elif app.requires_session and not request.user.is_authenticated:
        return _text(LOGIN_REQUIRED, status=401)
    response = JsonResponse(turn.credentials(app, peer_id))
    # Fresh credentials on every request: no cache may hand them to another client.
    response["Cache-Control"] = "no-store"
    return response
