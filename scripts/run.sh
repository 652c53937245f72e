#!/usr/bin/env bash
# Set up, then serve the PeerServer and the cue pages on http://localhost:8080/
# with the embedded defaults: a SQLite file and the in-memory channel layer.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export DJANGO_DEBUG=${DJANGO_DEBUG:-1}
exec "${VENV:-.venv}/bin/python" manage.py runserver "${BIND:-0.0.0.0:8080}"
