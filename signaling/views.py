"""The PeerServer's HTTP API: server info, fresh ids and discovery."""
import functools

from django.http import HttpResponse, JsonResponse
from django.views.decorators.http import require_http_methods

from signaling import registry
from signaling.conf import options
from signaling.db import unavailable_is_503

INFO = {
    "name": "PeerJS Server",
    "description": "A server side element to broker connections between PeerJS clients.",
    "website": "https://peerjs.com/",
}


def cors(view):
    """Answer preflight requests and add CORS headers for allowed origins.

    PEERJS_CORS_ORIGINS lists the origins whose pages may call the API ("*":
    any, as the reference). A disallowed origin gets no CORS headers, so the
    browser withholds the answer from that page.
    """

    @functools.wraps(view)
    def wrapper(request, *args, **kwargs):
        origin = request.headers.get("Origin")
        o = options()
        if request.method == "OPTIONS":
            response = HttpResponse(status=204)
        else:
            response = view(request, *args, **kwargs)
        if origin and o.origin_allowed(origin):
            response["Access-Control-Allow-Origin"] = "*" if o.any_origin else origin
            response["Access-Control-Allow-Methods"] = "GET, OPTIONS"
            response["Access-Control-Allow-Headers"] = "Content-Type"
            if not o.any_origin:
                response["Vary"] = "Origin"
        return response

    return wrapper


def _text(body, status=200):
    return HttpResponse(body, status=status, content_type="text/plain; charset=utf-8")


@require_http_methods(["GET", "HEAD", "OPTIONS"])
@cors
def info(request):
    return JsonResponse(INFO)


@require_http_methods(["GET", "HEAD", "OPTIONS"])
@cors
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
    o = options()
    if key != o.key:
        return _text("Invalid key provided", status=401)
    if not o.allow_discovery:
        return _text("Discovery is not allowed on this server", status=401)
    return JsonResponse(registry.connected_ids(key), safe=False)
