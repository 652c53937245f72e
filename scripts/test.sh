#!/usr/bin/env bash
# Set up, then run the whole test suite:
#   pass 1: everything on SQLite (real daphne workers, redis-server, Chromium);
#   pass 2: the database-facing tests again on PostgreSQL.
# Extra arguments go to pytest in both passes.
# PostgreSQL: PEERJS_TEST_POSTGRES_URL (default postgres://postgres@127.0.0.1:5432/postgres),
# a database the tests may create and drop databases beside. Without a server
# there, pass 2 does not run and the script says so; with
# PEERJS_REQUIRE_POSTGRES=1 (CI) that is a failure.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh --test
PY=${VENV:-.venv}/bin/python

echo "== pass 1: the whole suite on SQLite"
"$PY" -m pytest "$@"

PG_URL=${PEERJS_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}
if "$PY" -c "import psycopg, sys; psycopg.connect(sys.argv[1], connect_timeout=3).close()" "$PG_URL" 2>/dev/null; then
  echo "== pass 2: database-facing tests on PostgreSQL ($PG_URL)"
  PEERJS_TEST_DATABASE_URL=$PG_URL "$PY" -m pytest -m "(db or cluster) and not own_postgres" "$@"
else
  echo "!! pass 2 (PostgreSQL) DID NOT RUN: no PostgreSQL server answers at $PG_URL"
  echo "!! set PEERJS_TEST_POSTGRES_URL to a server the tests may create databases on."
  if [ "${PEERJS_REQUIRE_POSTGRES:-0}" = 1 ]; then
    exit 1
  fi
fi
