#!/usr/bin/env bash
# Set up, then run the whole test suite:
#   pass 1: everything on SQLite (real uvicorn and daphne workers, redis-server,
#           PostgreSQL for the outage tests, nginx, coturn, Chromium);
#   pass 2: what PostgreSQL changes (-m postgres: the registry's SQL and locks,
#           claims under concurrency, queues, bans, reaping) on PostgreSQL.
# Both passes run in parallel processes (pytest-xdist), and print the 15
# slowest tests at the end.
#
#   scripts/test.sh                 the whole suite
#   scripts/test.sh -k cluster      a part (extra arguments go to pytest, both passes)
#   scripts/test.sh --fast          the first tier only (in-process, no server): a developer's loop
#
# PostgreSQL: PEERJS_TEST_POSTGRES_URL (default postgres://postgres@127.0.0.1:5432/postgres),
# a database the tests may create and drop databases beside. Without a server
# there, pass 2 does not run and the script says so; with
# PEERJS_REQUIRE_POSTGRES=1 (CI) that is a failure.
# PEERJS_TEST_PROCESSES: pytest-xdist processes (default: 2 per core, at least 4;
# most tests wait on real servers rather than compute).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh --test
PY=${VENV:-.venv}/bin/python

if [ "${1:-}" = "--fast" ]; then
  shift
  exec "$PY" -m pytest -m "fast and not servers" -n 2 --durations=15 "$@"
fi

processes=${PEERJS_TEST_PROCESSES:-$(( $(nproc) * 2 > 4 ? $(nproc) * 2 : 4 ))}
parallel=(-n "$processes" --dist loadgroup --durations=15)

echo "== pass 1: the whole suite on SQLite ($processes processes)"
"$PY" -m pytest "${parallel[@]}" "$@"

PG_URL=${PEERJS_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}
if "$PY" -c "import psycopg, sys; psycopg.connect(sys.argv[1], connect_timeout=3).close()" "$PG_URL" 2>/dev/null; then
  echo "== pass 2: what PostgreSQL changes, on PostgreSQL ($PG_URL)"
  PEERJS_TEST_DATABASE_URL=$PG_URL "$PY" -m pytest -m "postgres and not own_postgres" "${parallel[@]}" "$@"
else
  echo "!! pass 2 (PostgreSQL) DID NOT RUN: no PostgreSQL server answers at $PG_URL"
  echo "!! set PEERJS_TEST_POSTGRES_URL to a server the tests may create databases on."
  if [ "${PEERJS_REQUIRE_POSTGRES:-0}" = 1 ]; then
    exit 1
  fi
fi
