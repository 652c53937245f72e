#!/usr/bin/env bash
# Set up, then serve the PeerServer and the cue pages on http://localhost:8080/
# with the embedded defaults: a SQLite file and the in-memory channel layer.
#   PORT   where to listen (8080): make run PORT=8081
#   BIND   address and port together (0.0.0.0:$PORT)
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=${PORT:-8080}
BIND=${BIND:-0.0.0.0:$PORT}

# runserver would print "Address already in use" and then wait for code
# changes forever: say it at once, with the way out.
host=${BIND%:*}
host=${host#[}
host=${host%]}
if ! python3 - "$host" "${BIND##*:}" <<'PY'
import socket, sys
host, port = sys.argv[1], int(sys.argv[2])
family = socket.AF_INET6 if ":" in host else socket.AF_INET
with socket.socket(family) as s:
    # As the server binds: connections left in TIME_WAIT do not make a port busy.
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind((host, port))
    except OSError as error:
        sys.exit(f"error: cannot listen on {host}:{port}: {error.strerror}.")
PY
then
  echo "Choose another port, e.g.: make run PORT=$((${BIND##*:} + 1))" >&2
  exit 1
fi

./scripts/setup.sh
export DJANGO_DEBUG=${DJANGO_DEBUG:-1}
exec "${VENV:-.venv}/bin/python" manage.py runserver "$BIND"
