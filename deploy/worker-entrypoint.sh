#!/bin/sh
# Start one PeerServer worker, or run the command given instead.
#
#   ASGI_SERVER  uvicorn (default: the faster, see docs/performance.md) or
#                daphne: the one switch between the two
#                ASGI servers, used by the Docker image and scripts/cluster.sh.
#   ASGI_HOST    address to bind (default: every address, IPv4 and, where
#                the machine has it, IPv6)
#   ASGI_PORT    port to bind (default 8000)
#   ASGI_TLS_CERT, ASGI_TLS_KEY
#                a certificate chain and its key (PEM files): the worker
#                itself serves HTTPS and WSS (one worker without nginx; set
#                DJANGO_HTTPS=1 too). Unset: plain HTTP, as behind nginx.
#
# Both servers run as signaling/servers/ adapts them (uvicorn's protocol
# classes, daphne's server), with their options from the app's PEERJS_*
# settings (docs/operations.md): the message size limit, the request deadline,
# the cap per address, the handshakes worked on at once. The servers never
# rewrite the client address: the app decides whose X-Forwarded-For to believe.
#
# With arguments (docker compose's "migrate" service, "docker run IMAGE sh")
# the arguments are run instead, so one image serves every role.
# The server is exec'd: it is the process that receives SIGTERM and drains.
set -eu

if [ "$#" -gt 0 ]; then
    exec "$@"
fi

# ASGI_HOST unset: both families where the machine has IPv6. uvicorn (asyncio)
# takes "" for that and opens a socket per family; daphne (Twisted) takes "::",
# one dual-stack socket (IPv4 clients arrive as ::ffff:a.b.c.d, which the app
# reads as the IPv4 address). Without IPv6 "::" cannot be bound: 0.0.0.0.
host=${ASGI_HOST-}
daphne_host=${ASGI_HOST:-0.0.0.0}
if [ -z "${ASGI_HOST:-}" ] && [ -e /proc/net/if_inet6 ]; then
    daphne_host=::
fi
port=${ASGI_PORT:-8000}
app=p2psite.asgi:application

# uvicorn believes X-Forwarded-For from 127.0.0.1 unless told otherwise, and
# then hides the connection's own address from the app, which decides whose
# header to believe (PEERJS_TRUSTED_PROXIES): so it is told otherwise. The
# options go in "$@" (free now).
set -- --no-proxy-headers

tls=
if [ -n "${ASGI_TLS_CERT:-}${ASGI_TLS_KEY:-}" ]; then
    if [ -z "${ASGI_TLS_CERT:-}" ] || [ -z "${ASGI_TLS_KEY:-}" ]; then
        echo "error: set both ASGI_TLS_CERT and ASGI_TLS_KEY (PEM files), or neither." >&2
        exit 64
    fi
    tls=1
    set -- "$@" --ssl-certfile "$ASGI_TLS_CERT" --ssl-keyfile "$ASGI_TLS_KEY"
fi

# A value inside a Twisted endpoint string: ':', '=' and '\' are escaped.
endpoint_escape() {
    printf '%s' "$1" | sed 's/[\\:=]/\\&/g'
}

case "${ASGI_SERVER:-uvicorn}" in
    daphne)
        if [ -n "$tls" ]; then
            exec python -m signaling.servers.daphne -e "ssl:$port:interface=$(endpoint_escape "$daphne_host"):privateKey=$(endpoint_escape "$ASGI_TLS_KEY"):certKey=$(endpoint_escape "$ASGI_TLS_CERT")" "$app"
        fi
        exec python -m signaling.servers.daphne -b "$daphne_host" -p "$port" "$app"
        ;;
    uvicorn)
        # No keepalive pings of uvicorn's (--ws-ping-interval 0): a timer per
        # socket, and a ping and pong every 20 s, for what the PeerJS client's
        # HEARTBEAT and the hub's one liveness sweep (PEERJS_ALIVE_TIMEOUT)
        # already do (docs/performance.md).
        exec uvicorn "$app" --host "$host" --port "$port" \
            --http signaling.servers.uvicorn:HTTPProtocol \
            --ws signaling.servers.uvicorn:WebSocketProtocol --ws-per-message-deflate false --ws-ping-interval 0 \
            --lifespan on "$@" --no-access-log --log-level warning
        ;;
    *)
        echo "error: ASGI_SERVER=${ASGI_SERVER} is not a server this image runs; use daphne or uvicorn." >&2
        exit 64
        ;;
esac
