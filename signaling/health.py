"""Health endpoints for load balancers, orchestrators and ``make cluster``.

``GET /healthz`` says the process answers (liveness): it checks nothing else,
because restarting a worker never fixes its database or Redis.

``GET /readyz`` says whether this worker should get traffic now: the database
answers ``SELECT 1``, Redis answers ``PING`` (only with a REDIS_URL; with
REDIS_SENTINELS, the master they name now: 503 through a failover) and the
worker is not draining after SIGTERM. It answers 200 or 503 with a JSON
object naming every part, so a failing probe says which part fails. What went
wrong (an error naming the database's host and port) goes to the log, and
into the answer only for a caller that may read ``/metrics``: nginx passes
``/readyz`` on to anyone.

``GET /metrics`` is this worker's metrics for Prometheus (signaling/metrics.py),
for allowed addresses or a bearer token only.

Every check is bounded by CHECK_TIMEOUT, so a dead or black-holed database
never hangs the probe. The probes run in :class:`ProbeMiddleware`, first in
MIDDLEWARE, so that an orchestrator's Host header (a container name, a pod IP)
and its plain-HTTP request are answered instead of being refused by
ALLOWED_HOSTS or redirected to HTTPS; so does Prometheus' scrape, which names
a worker by its container name or address.
"""
import asyncio
import logging
import weakref
from concurrent.futures import ThreadPoolExecutor

from asgiref.sync import sync_to_async
from django.db import connections
from django.http import HttpResponse, HttpResponseForbidden, JsonResponse
from django.utils.decorators import async_only_middleware
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from signaling import metrics as worker_metrics
from signaling import sentinel
from signaling.conf import options
from signaling.hub import current_hub

logger = logging.getLogger(__name__)

CHECK_TIMEOUT = 2.0  # seconds, per check; the checks run side by side
UNREACHABLE, NOT_USED = "unreachable", "not used"  # what a failed or skipped check says to anyone

# The database check runs on threads of its own: it must neither queue behind
# the hub's database work (thread_sensitive=False) nor, when a connection
# hangs, tie up the event loop's default executor that DNS lookups use. Two
# threads: a hung check leaves one for the next probe.
_db_threads = ThreadPoolExecutor(max_workers=2, thread_name_prefix="readyz-db")

# One Redis client per event loop: a client's connections belong to the loop
# that opened them (tests run several loops; a worker has one).
_redis_clients = weakref.WeakKeyDictionary()


def _select_one():
    connection = connections["default"]
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    finally:
        # A fresh connection per probe: it proves the worker can connect now,
        # and one broken by an outage is never reused.
        connection.close()


def _redis_client():
    loop = asyncio.get_running_loop()
    client = _redis_clients.get(loop)
    if client is None:
        client = sentinel.client(
            options(),
            socket_timeout=CHECK_TIMEOUT,
            socket_connect_timeout=CHECK_TIMEOUT,
            # One immediate retry: the first PING after Redis restarted meets
            # the connection the restart closed; a second attempt reconnects.
            retry=Retry(NoBackoff(), 1),
        )
        _redis_clients[loop] = client
    return client


async def _check(name, probe):
    """'ok', or what went wrong, in words an operator can act on."""
    try:
        await asyncio.wait_for(probe(), CHECK_TIMEOUT)
    except TimeoutError:
        why = f"{UNREACHABLE}: no answer within {CHECK_TIMEOUT:g} s"
    except Exception as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        why = f"{UNREACHABLE}: {type(exc).__name__}: {first_line}"[:300]
    else:
        return "ok"
    logger.warning("readiness: %s %s", name, why)
    return why


def _public(why):
    """What anyone may read of a check's outcome: which part fails, not why (the why names hosts and ports)."""
    if why == "ok":
        return why
    return NOT_USED if why.startswith(NOT_USED) else UNREACHABLE


def _database():
    return sync_to_async(_select_one, thread_sensitive=False, executor=_db_threads)()


def _redis():
    return _redis_client().ping()


@never_cache
@require_safe
async def healthz(request):
    return JsonResponse({"status": "ok"})


@never_cache
@require_safe
async def readyz(request):
    checks = {"database": _check("database", _database)}
    if options().redis_url:
        checks["redis"] = _check("redis", _redis)
    results = dict(zip(checks, await asyncio.gather(*checks.values())))
    if not options().redis_url:
        results["redis"] = f"{NOT_USED} (REDIS_URL is not set)"
    hub = current_hub()
    draining = hub is not None and hub.stopping
    ready = not draining and all(results[name] == "ok" for name in checks)
    if not worker_metrics.allowed(request):
        results = {name: _public(why) for name, why in results.items()}
    body = {"ready": ready, **results, "draining": draining}
    return JsonResponse(body, status=200 if ready else 503)


@never_cache
@require_safe
async def metrics(request):
    # Async, so that it runs on the event loop whose hub it reports.
    if not worker_metrics.allowed(request):
        return HttpResponseForbidden(
            "/metrics is for the addresses in PEERJS_METRICS_ALLOW, or with the bearer token PEERJS_METRICS_TOKEN.\n",
            content_type="text/plain; charset=utf-8",
        )
    return HttpResponse(worker_metrics.exposition(current_hub()), content_type=worker_metrics.CONTENT_TYPE)


PROBES = {"/healthz": healthz, "/readyz": readyz, "/metrics": metrics}


@async_only_middleware
def ProbeMiddleware(get_response):
    """Answer the probes before host validation, the HTTPS redirect and sessions.

    Put it first in MIDDLEWARE. Probes come from inside the deployment: a
    Docker health check asks for http://localhost:8000/readyz, Kubernetes
    sends the pod's IP as Host, Prometheus asks for http://worker1:8000/metrics.
    None is a name the site serves, and with DJANGO_HTTPS on none speaks
    HTTPS to the worker.
    """

    async def middleware(request):
        probe = PROBES.get(request.path_info)
        if probe is not None:
            return await probe(request)
        return await get_response(request)

    return middleware
