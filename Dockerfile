# syntax=docker/dockerfile:1
# One image for every PeerServer process: the workers (daphne or uvicorn, see
# deploy/worker-entrypoint.sh) and the one-off migrate job of docker-compose.yml.

# --- The PeerJS browser client, from the pinned npm packages --------------------
# package.json / package-lock.json are optional: requirements.txt is listed in
# the COPY only so that the wildcard always matches something. Whatever the
# pages need ends up under /vendor, empty when there is nothing to install.
FROM node:22-slim AS vendor
WORKDIR /src
COPY requirements.txt package*.json ./
RUN set -eu; \
    mkdir -p /vendor; \
    if [ -f package-lock.json ]; then \
        npm ci --ignore-scripts --no-audit --no-fund; \
    elif [ -f package.json ]; then \
        npm install --ignore-scripts --no-audit --no-fund; \
    fi; \
    if [ -d node_modules/peerjs/dist ]; then \
        mkdir -p /vendor/node_modules/peerjs; \
        cp -a node_modules/peerjs/dist /vendor/node_modules/peerjs/dist; \
    fi

# --- The Python workers ---------------------------------------------------------
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    ASGI_SERVER=uvicorn

WORKDIR /app

# Dependencies first, so that code changes do not reinstall them.
COPY requirements.txt ./
RUN pip install -r requirements.txt

COPY . .
# p2psite.settings serves node_modules/peerjs/dist as static vendor/peerjs/
# when that directory exists.
COPY --from=vendor /vendor/ ./

# Static files are part of the image. The key is a random throwaway:
# collectstatic needs settings, not secrets, and no database (and the settings
# refuse a fixed, published key).
RUN DJANGO_SECRET_KEY="$(python -c 'import secrets; print(secrets.token_urlsafe(50))')" DJANGO_DEBUG=0 \
    python manage.py collectstatic --noinput -v0

# The code stays owned by root and read-only to the server. A fixed uid, so
# that Kubernetes can check runAsNonRoot and the Helm chart's runAsUser names
# the same user (deploy/helm/peerserver/values.yaml, podSecurityContext).
RUN groupadd --system --gid 10001 peerserver \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /app peerserver
USER 10001:10001

EXPOSE 8000
# Healthy means ready: the database and Redis answer and the worker is not
# draining (GET /readyz). The interval is short because Compose v1 knows no
# start_interval: nginx waits for the first healthy check.
HEALTHCHECK --interval=5s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "/app/deploy/healthcheck.py"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/app/deploy/worker-entrypoint.sh"]
