"""Which worker takes a new socket: this one if it can register its peer now, else another one.

Open-source nginx has no active health checks: it learns a worker's health
from the answers it gets. So a worker that cannot register a peer now
answers the handshake of a socket that nginx may send elsewhere with HTTP
503: nginx asks the next worker (``proxy_next_upstream http_503``) and leaves
this one out for its ``fail_timeout``. Accepted first and then refused
(ERROR "try again", 1013), the client would have to start over, and nginx,
which saw a 101, would keep sending new sockets here.

A socket may go elsewhere (:func:`may_go_elsewhere`) when

- nginx says so: ``X-PeerJS-Retry-Elsewhere: 1`` on the handshake, which
  deploy/nginx/peerserver.conf.template sends on its first tries and leaves
  off on its last, so that when no worker is ready one of them still answers
  as ever (ERROR "try again" and 1013; OPEN when only Redis is away);
- it comes from a trusted proxy (:func:`signaling.http.from_trusted_proxy`):
  a client cannot have itself turned away with a header of its own;
- the ASGI server can answer a handshake with a status (the
  ``websocket.http.response`` extension: uvicorn has it, daphne not).

A worker cannot register a peer now (:func:`unready`) while it drains after
SIGTERM, while its database is away as far as it knows
(:data:`signaling.db.outage`), or while its subscription to Redis is broken
(it would not hear what other workers send its new peer). A claim that
finds the database away for the first time turns its socket away too
(``PeerConsumer.try_again``): that is why such a socket is accepted only
once its claim is made.
"""
from signaling import conf
from signaling.db import outage
from signaling.http import from_trusted_proxy, header
from signaling.hub import current_hub

RETRY_ELSEWHERE = b"x-peerjs-retry-elsewhere"
DENIAL = "websocket.http.response"  # the ASGI extension that lets a handshake be answered with a status

DRAINING, DATABASE, REDIS = "draining", "database", "redis"
# why -> (Retry-After, body) of the 503; behind nginx a client sees them only when no worker is left to ask.
_ANSWERS = {
    DRAINING: (b"1", b"This worker is shutting down.\n"),
    DATABASE: (b"5", b"This worker cannot reach its database right now; another worker may take the socket.\n"),
    REDIS: (b"5", b"This worker cannot hear the other workers (Redis) right now; another worker may take the socket.\n"),
}


def can_deny(scope):
    """Whether the ASGI server lets the app answer this handshake with an HTTP status."""
    return DENIAL in (scope.get("extensions") or {})


def may_go_elsewhere(scope, options):
    """Whether a socket this worker turns away with 503 is asked of another worker (see the module)."""
    return can_deny(scope) and header(scope, RETRY_ELSEWHERE) == "1" and from_trusted_proxy(scope, options)


def unready(hub):
    """Why this worker cannot register a new peer now (DRAINING, DATABASE, REDIS), or None."""
    if hub is not None and hub.stopping:
        return DRAINING
    if outage.since is not None:
        return DATABASE
    if hub is not None and hub.transport is not None and not hub.transport.receiving():
        return REDIS
    return None


async def turn_away(send, why, hub):
    """Answer a handshake with 503 and Retry-After; the socket never opens."""
    if hub is not None:
        hub.stats["sockets_opened:elsewhere"] += 1
    retry_after, body = _ANSWERS[why]
    await send({
        "type": "websocket.http.response.start",
        "status": 503,
        "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"retry-after", retry_after)],
    })
    await send({"type": "websocket.http.response.body", "body": body})


async def _turn_away_handshake(receive, send, why, hub):
    await receive()  # websocket.connect
    await turn_away(send, why, hub)


def refuse_sockets_when_unready(app):
    """Wrap the WebSocket app: turn away, before the consumer runs, a socket this worker would only refuse.

    A draining worker turns every socket away, whoever sends it: a client
    that reconnects lands, through the balancer, on a worker that stays,
    whereas accepted and closed it could come straight back (least_conn
    favours the worker that has just closed its sockets). An unready one
    turns away only what nginx may send elsewhere (:func:`may_go_elsewhere`).
    Servers without the denial extension (daphne) get the consumer's answers.
    """

    # A plain function that returns the coroutine to await, not a coroutine
    # awaiting it: a layer that awaits would hold a frame and the scope for
    # as long as the socket lives (signaling.routing.route).
    def app_unless_unready(scope, receive, send):
        if can_deny(scope):
            hub = current_hub()
            why = unready(hub)
            if why == DRAINING or (why is not None and may_go_elsewhere(scope, conf.options())):
                return _turn_away_handshake(receive, send, why, hub)
        return app(scope, receive, send)

    return app_unless_unready
