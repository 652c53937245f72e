#!/usr/bin/env bash
# make bench: the reference PeerServer and this project side by side (bench/run.py).
#   bench/run.sh            the full comparison (under 10 minutes)
#   bench/run.sh --quick    about a minute
#   bench/run.sh --perpeer  memory per idle peer, CPU per open, the leak check (bench/perpeer.py)
#   bench/run.sh --scale    100 000 idle peers held for 10 minutes (bench/scale.py)
# Any other option goes to bench/run.py (see bench/run.py --help).
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/setup.sh
command -v redis-server >/dev/null || { echo "bench: redis-server is needed (apt-get install redis-server)" >&2; exit 1; }
command -v node >/dev/null || { echo "bench: node is needed" >&2; exit 1; }

# The reference server, pinned by bench/package-lock.json.
stamp=bench/node_modules/.lock.sha
want=$(sha256sum bench/package-lock.json | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  (cd bench && npm ci --silent --no-audit --no-fund)
  echo "$want" > "$stamp"
fi

# Thousands of idle peers need as many descriptors.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [ "${1:-}" = "--scale" ]; then
  shift
  exec .venv/bin/python bench/scale.py "$@"
fi
if [ "${1:-}" = "--perpeer" ]; then
  shift
  exec .venv/bin/python bench/perpeer.py "$@"
fi
exec .venv/bin/python bench/run.py "$@"
