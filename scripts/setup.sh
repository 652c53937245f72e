#!/usr/bin/env bash
# Set up everything the server and its tests need, idempotently:
# the virtualenv with the pinned requirements, the npm packages (the PeerJS
# client the pages serve), and the database schema.
#   scripts/setup.sh          server only (requirements.txt)
#   scripts/setup.sh --test   also what the tests need: requirements-test.txt,
#                             redis-server, chromium, nginx, PostgreSQL's server
#                             binaries for outage tests, Compose v1 to validate
#                             docker-compose.yml, promtool and prometheus to
#                             check the metrics and the Prometheus config, and
#                             coturn for the TURN tests
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}

need_apt=()
# Installed without their recommends: docker-compose would bring a Docker
# engine, and the tests only ask it to read the compose file.
need_apt_bare=()
if [ "${1:-}" = "--test" ]; then
  command -v redis-server >/dev/null || need_apt+=(redis-server)
  [ -x /usr/bin/chromium ] || need_apt+=(chromium)
  command -v nginx >/dev/null || need_apt+=(nginx-light)
  command -v openssl >/dev/null || need_apt+=(openssl)
  # initdb and pg_ctl, for a private server the outage tests may stop.
  compgen -G '/usr/lib/postgresql/*/bin/pg_ctl' >/dev/null || need_apt+=(postgresql)
  command -v docker-compose >/dev/null || need_apt_bare+=(docker-compose)
  # promtool, and a Prometheus server the tests start themselves (the
  # package's service is not started).
  { command -v promtool && command -v prometheus; } >/dev/null || need_apt_bare+=(prometheus)
  # turnserver and turnutils_uclient: the TURN tests run a real coturn. The
  # package enables its service without starting it; the tests start their own.
  command -v turnserver >/dev/null || need_apt+=(coturn)
fi
command -v npm >/dev/null || need_apt+=(npm)
if [ $((${#need_apt[@]} + ${#need_apt_bare[@]})) -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "== installing ${need_apt[*]} ${need_apt_bare[*]} (apt-get)"
    apt-get update -qq
    if [ ${#need_apt[@]} -gt 0 ]; then
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
    fi
    if [ ${#need_apt_bare[@]} -gt 0 ]; then
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt_bare[@]}" >/dev/null
    fi
  else
    echo "error: this machine lacks ${need_apt[*]} ${need_apt_bare[*]}; install them (Debian: apt-get install ${need_apt[*]} ${need_apt_bare[*]}) and run again." >&2
    exit 1
  fi
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "== creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
# Each requirements file is installed again only when it changed since its
# last install (one stamp each), so `make run` after `make test` installs nothing.
requirements=(requirements.txt)
[ "${1:-}" != "--test" ] || requirements+=(requirements-test.txt)
for file in "${requirements[@]}"; do
  stamp="$VENV/.${file%.txt}.sha"
  want=$(sha256sum "$file" | cut -d' ' -f1)
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "== installing $file"
    "$VENV/bin/pip" install -q --upgrade pip
    "$VENV/bin/pip" install -q -r "$file"
    echo "$want" > "$stamp"
  fi
done

if [ -f package-lock.json ]; then
  stamp=node_modules/.lock.sha
  want=$(sha256sum package-lock.json | cut -d' ' -f1)
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "== installing npm packages (package-lock.json)"
    npm ci --silent --no-audit --no-fund
    echo "$want" > "$stamp"
  fi
fi

# Migrations need settings; the embedded defaults are development ones.
DJANGO_DEBUG=${DJANGO_DEBUG:-1} "$VENV/bin/python" manage.py migrate --noinput -v0
# Collected static files, for workers with DEBUG off (whitenoise serves them).
DJANGO_DEBUG=${DJANGO_DEBUG:-1} "$VENV/bin/python" manage.py collectstatic --noinput -v0
