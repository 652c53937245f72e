#!/bin/sh
# Start one PeerServer worker, or run the command given instead.
#
#   ASGI_SERVER  uvicorn (default: the faster, see README "Performance") or
#                daphne: the one switch between the two
#                ASGI servers, used by the Docker image and scripts/cluster.sh.
#   ASGI_HOST    address to bind (default 0.0.0.0)
#   ASGI_PORT    port to bind (default 8000)
#   ASGI_TLS_CERT, ASGI_TLS_KEY
#                a certificate chain and its key (PEM files): the worker
#                itself serves HTTPS and WSS (one worker without nginx; set
#                DJANGO_HTTPS=1 too). Unset: plain HTTP, as behind nginx.
#   PEERJS_MAX_FRAME_BYTES  the largest WebSocket message a client may send
#                (default 262144, as the app's own limit): uvicorn refuses a
#                bigger one at its header (close 1009), before buffering it.
#   ASGI_HEADER_TIMEOUT  seconds a request (a WebSocket handshake too) may take
#                to send its headers (uvicorn; default 10): see p2psite/asgi_servers.py.
#   ASGI_HANDSHAKE_CONCURRENCY  WebSocket handshakes worked on at once (uvicorn;
#                default 32); the rest wait their turn: see p2psite/asgi_servers.py.
#   PEERJS_PROXIED, PEERJS_TRUSTED_PROXIES  read by the app itself (README,
#                "Options"): the servers never rewrite the client address.
#
# With arguments (docker compose's "migrate" service, "docker run IMAGE sh")
# the arguments are run instead, so one image serves every role.
# The server is exec'd: it is the process that receives SIGTERM and drains.
set -eu

if [ "$#" -gt 0 ]; then
    exec "$@"
fi

host=${ASGI_HOST:-0.0.0.0}
port=${ASGI_PORT:-8000}
max_frame=${PEERJS_MAX_FRAME_BYTES:-262144}
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
            exec daphne -e "ssl:$port:interface=$(endpoint_escape "$host"):privateKey=$(endpoint_escape "$ASGI_TLS_KEY"):certKey=$(endpoint_escape "$ASGI_TLS_CERT")" "$app"
        fi
        exec daphne -b "$host" -p "$port" "$app"
        ;;
    uvicorn)
        exec uvicorn "$app" --host "$host" --port "$port" \
            --http h11 \
            --ws websockets-sansio --ws-per-message-deflate false --ws-max-size "$max_frame" \
            --lifespan on "$@" --no-access-log --log-level warning
        ;;
    *)
        echo "error: ASGI_SERVER=${ASGI_SERVER} is not a server this image runs; use daphne or uvicorn." >&2
        exit 64
        ;;
esac
