"""Docker health check of a worker: exit 0 when its /readyz answers 200, else 1.

The Dockerfile's HEALTHCHECK and docker-compose.yml's worker healthchecks run
it inside the worker's container (python:3.11-slim has no curl). It asks the
worker on localhost at ASGI_PORT, over HTTPS when the worker serves TLS itself
(ASGI_TLS_CERT set, see deploy/worker-entrypoint.sh). The certificate is not
checked: it names the public host, and this is the container asking itself.
What /readyz answered is printed, so `docker inspect` shows why a worker is
unhealthy.
"""
import os
import ssl
import sys
import urllib.error
import urllib.request

TIMEOUT = 4  # /readyz bounds each of its checks at 2 s


def main():
    scheme = "https" if os.environ.get("ASGI_TLS_CERT") else "http"
    url = f"{scheme}://localhost:{os.environ.get('ASGI_PORT', '8000')}/readyz"
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT, context=ssl._create_unverified_context()) as response:
            print(response.read().decode(errors="replace"))
            return 0
    except urllib.error.HTTPError as error:
        print(f"{url}: {error.code} {error.read().decode(errors='replace')}")
    except OSError as error:
        print(f"{url}: {error}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
