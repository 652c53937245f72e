#!/bin/sh
# Start one PeerServer worker, or run the command given instead.
#
#   ASGI_SERVER  uvicorn (default: the faster, see README "Performance") or
#                daphne: the one switch between the two
#                ASGI servers, used by the Docker image and scripts/cluster.sh.
#   ASGI_HOST    address to bind (default 0.0.0.0)
#   ASGI_PORT    port to bind (default 8000)
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
app=p2psite.asgi:application

case "${ASGI_SERVER:-uvicorn}" in
    daphne)
        exec daphne -b "$host" -p "$port" "$app"
        ;;
    uvicorn)
        exec uvicorn "$app" --host "$host" --port "$port" \
            --ws websockets-sansio --ws-per-message-deflate false --lifespan on --proxy-headers \
            --no-access-log --log-level warning
        ;;
    *)
        echo "error: ASGI_SERVER=${ASGI_SERVER} is not a server this image runs; use daphne or uvicorn." >&2
        exit 64
        ;;
esac
