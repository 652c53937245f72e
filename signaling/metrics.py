"""What a worker counts, in the Prometheus text format (``GET /metrics``).

The hot path pays a dict increment per event and nothing more: the hub keeps
plain counters in ``hub.stats`` (a ``collections.Counter`` with string keys)
and the core calls :meth:`Histogram.observe` on the two module-level
histograms. Only a scrape turns them into metric families, here. No
prometheus_client object is touched while relaying.

This module imports nothing of the core, so that the hub, the consumer and the
transport can all import it: the scrape is handed the hub
(``signaling.health`` serves ``/metrics`` with ``current_hub()``).

Each worker answers for itself; Prometheus scrapes every worker, and sums
across them with ``sum without (instance)``.
"""
import bisect
import collections
import hmac
import math
import sys

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.utils import floatToGoString

from signaling import limits, turn, webhooks
from signaling.conf import options
from signaling.http import request_address

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Histogram:
    """A fixed-bucket histogram that costs a bisect and two additions per observation.

    No lock: a worker runs one event loop and ``observe`` never awaits, so no
    two observations interleave. Counts are per bucket here and made
    cumulative (as Prometheus wants them) only at scrape time.
    """

    def __init__(self, name, documentation, bounds):
        self.name = name
        self.documentation = documentation
        self.bounds = tuple(sorted(bounds))  # upper bounds in seconds; +Inf is implied
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, seconds, count=1):
        """Record ``count`` events that each took ``seconds`` (a batch of frames counts once per frame)."""
        # bisect_left: a value equal to a bound belongs to that bucket (le = "less or equal").
        self.counts[bisect.bisect_left(self.bounds, seconds)] += count
        self.sum += seconds * count

    def family(self):
        buckets, total = [], 0
        for bound, count in zip((*self.bounds, math.inf), self.counts):
            total += count
            buckets.append((floatToGoString(bound), total))
        return HistogramMetricFamily(self.name, self.documentation, buckets=buckets, sum_value=self.sum)


# An open is a database write: milliseconds when all is well, seconds when
# the database struggles.
OPEN_LATENCY = Histogram(
    "peerjs_open_latency_seconds",
    "Time from a signaling socket's connect to the OPEN frame sent to it.",
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
)
# Fed by the transport between workers: sub-millisecond on a quiet LAN, and
# seconds once a backlog builds.
CROSS_WORKER_DELIVERY = Histogram(
    "peerjs_cross_worker_delivery_seconds",
    "Time a relayed frame spent between the worker that received it and the worker that delivered it.",
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
)
HISTOGRAMS = (OPEN_LATENCY, CROSS_WORKER_DELIVERY)

# hub.stats keys with a label: "sockets_opened:<outcome>", "frames_relayed:<path>", "fast_path:<way>".
# The values listed are exported even at 0, so that rate() and alerts see a
# series from the worker's start; a value the core adds later shows up too.
SOCKET_OUTCOMES = ("open", "taken", "full", "error", "refused", "limited", "banned", "retry", "elsewhere")
RELAY_PATHS = ("same_worker", "other_worker")
TAKEOVERS = ("replaced", "refused")
FAST_PATHS = ("received", "written", "opened")

# hub.stats key -> help text; exported as peerjs_<key>_total.
COUNTERS = {
    "frames_queued": "Relayed frames queued for a peer that was not connected.",
    "frames_expired": "Queued frames that expired before their peer connected.",
    "expire_sent": "EXPIRE notices the server sent to peers (what they sent cannot arrive).",
    "bad_frames": "Frames refused with an ERROR: not JSON, unknown type, binary, oversize.",
    "frames_too_big": "Frames over PEERJS_MAX_FRAME_BYTES (and under PEERJS_MAX_MESSAGE_BYTES): "
    "answered with EXPIRE if meant for a peer, else with ERROR.",
    "floods": "Sockets closed for flooding: held at the frame rate limit for too long.",
    "throttled": "Times a socket was slowed down for sending faster than the frame rate limit.",
    "inbox_full": "Frames another worker's full inbox refused (their senders got EXPIRE).",
    "database_errors": "Database operations that failed.",
    "redis_errors": "Sends to or reads from Redis that failed.",
    "workers_reaped": "Silent workers this worker declared dead and whose peers it freed.",
    "slow_consumers": "Sockets closed because their client did not read what it was sent.",
    "write_failed": "Frames whose write to a socket failed because the socket had closed.",
    "queue_full": "Frames refused because a queue was full: the sender's, the peer's or the whole queue's (senders got EXPIRE).",
    "timed_out": "Sockets closed because they sent nothing within alive_timeout.",
    "internal_errors": "Sockets whose handling failed unexpectedly (their cleanup still ran).",
    "banned_closed": "Open sockets closed because a ban created since names their peer id or address.",
}


RECENT_SECONDS = 60  # what the admin's overview calls "per second": over the last minute


class Recent:
    """What a worker counted lately, for the admin's overview: written at each beat.

    The overview reads one row per worker, holding one snapshot. So each
    worker remembers its counters as they stood at each beat of the last
    minute, and writes, beside its totals, what it counted since the oldest
    of them and over how many seconds: a rate is then a division, exact over
    a minute (or over the worker's life while that is shorter), and neither
    the database nor the admin has to keep a history.
    """

    def __init__(self, hub):
        self.hub = hub
        # The counters as the beat begins to watch them: what the worker
        # counted before is in its totals, not in a minute nobody timed.
        self.beats = collections.deque([(hub.loop.time(), dict(hub.stats))])

    def snapshot(self):
        """What this beat writes to the worker's row (``Worker.stats``): JSON-ready, small."""
        hub = self.hub
        now, counts = hub.loop.time(), dict(hub.stats)
        self.beats.append((now, counts))
        while now - self.beats[0][0] > RECENT_SECONDS:
            self.beats.popleft()
        since, before = self.beats[0]
        return {
            "peers": len(hub.local),
            "sockets": len(hub.connections),
            "waiting": hub.waiting(),
            "totals": counts,
            "recent": {
                "seconds": round(now - since, 3),
                "counts": {key: n - before.get(key, 0) for key, n in counts.items() if n != before.get(key, 0)},
            },
        }


def _server():
    # daphne is imported in every worker (it is an installed app, for
    # runserver); uvicorn only in the processes it runs.
    return "uvicorn" if "uvicorn" in sys.modules else "daphne"


class HubCollector:
    """The worker's own metrics, read from its hub at scrape time."""

    def __init__(self, hub):
        self.hub = hub

    def collect(self):
        hub = self.hub
        stats = hub.stats if hub is not None else {}

        yield _labelled(
            stats, "sockets_opened", "peerjs_sockets_opened", "outcome", SOCKET_OUTCOMES,
            "Signaling sockets by how their opening ended: open (OPEN sent), taken (ID-TAKEN), "
            "full (concurrent limit), error (ERROR: bad id, key or parameters), "
            "refused (origin, too many sockets, the app's token or login), limited (the address's rate limit), "
            "banned (a ban), retry (closed for the client to retry: database unavailable), "
            "elsewhere (turned away with HTTP 503 for the proxy to try another worker: draining or not ready).",
        )
        limited = CounterMetricFamily(
            "peerjs_rate_limited",
            "Requests refused by the rate limit per client address, by kind: socket opens, /id and /ice-servers requests.",
            labels=["kind"],
        )
        for kind in limits.KINDS:
            limited.add_metric([kind], limits.refused[kind])
        yield limited
        posted = CounterMetricFamily(
            "peerjs_webhooks", "Apps' webhook events by outcome: sent (the receiver answered 2xx), "
            "failed (refused, or every try failed), dropped (the queue of events to send was full).",
            labels=["outcome"],
        )
        for outcome in ("sent", "failed", "dropped"):
            posted.add_metric([outcome], webhooks.webhook_stats[f"webhooks_{outcome}"])
        yield posted
        credentials = CounterMetricFamily(
            "peerjs_turn_credentials", "TURN credentials handed out by GET /ice-servers, by app key.", labels=["key"],
        )
        for key, count in sorted(turn.made().items()):
            credentials.add_metric([key], count)
        yield credentials
        yield _labelled(
            stats, "takeovers", "peerjs_takeovers", "outcome", TAKEOVERS,
            "Sockets that came with a connected peer's id and token: replaced (took the id over, the older "
            "socket closed with 4100), refused (from another address, by an app that keeps ids on their address: ID-TAKEN).",
        )
        yield _labelled(
            stats, "frames_relayed", "peerjs_frames_relayed", "path", RELAY_PATHS,
            "Relayed frames handed on, to a peer of this worker (same_worker) or to the worker holding it (other_worker).",
        )
        yield _labelled(
            stats, "fast_path", "peerjs_fast_path_frames", "way", FAST_PATHS,
            "Frames that skipped a hand-over between tasks, through the ASGI server's fast paths "
            "(signaling.servers.uvicorn): received (handled in the read callback), written (at once), "
            "and opened (an OPEN written with the handshake's response). "
            "Zero under a server without them (daphne).",
        )
        for key, documentation in COUNTERS.items():
            yield CounterMetricFamily(f"peerjs_{key}", documentation, value=stats.get(key, 0))

        yield GaugeMetricFamily(
            "peerjs_connected_peers", "Peers registered on this worker.",
            value=len(hub.local) if hub is not None else 0,
        )
        yield GaugeMetricFamily(
            "peerjs_open_sockets", "Signaling sockets open on this worker, registered or not yet.",
            value=len(hub.connections) if hub is not None else 0,
        )
        for histogram in HISTOGRAMS:
            yield histogram.family()

        # The worker's name is its hub's, which under daphne (no lifespan)
        # exists only from the first socket on: until then, no sample.
        info = GaugeMetricFamily(
            "peerjs_worker_info", "This worker: its name in the registry and its ASGI server; always 1.",
            labels=["worker", "server"],
        )
        if hub is not None:
            info.add_metric([hub.name, _server()], 1)
        yield info


def _labelled(stats, prefix, name, label, known, documentation):
    family = CounterMetricFamily(name, documentation, labels=[label])
    values = {value: 0 for value in known}
    for key, count in stats.items():
        group, _, value = key.partition(":")
        if group == prefix and value:
            values[value] = count
    for value, count in values.items():
        family.add_metric([value], count)
    return family


# The process's own metrics (CPU, memory, open files, Python's GC), as every
# prometheus_client exporter has them.
_PROCESS = CollectorRegistry()
ProcessCollector(registry=_PROCESS)
PlatformCollector(registry=_PROCESS)
GCCollector(registry=_PROCESS)


class _Scrape:
    def __init__(self, hub):
        self.collectors = (HubCollector(hub), _PROCESS)

    def collect(self):
        for collector in self.collectors:
            yield from collector.collect()


def exposition(hub):
    """The text a scrape returns: ``hub``'s metrics (None: not started yet) and the process's."""
    return generate_latest(_Scrape(hub))


def allowed(request):
    """Whether ``request`` may read /metrics.

    With PEERJS_METRICS_TOKEN set, ``Authorization: Bearer <token>`` is
    enough. Otherwise the client's address must be in PEERJS_METRICS_ALLOW,
    by the same rule the signaling server records addresses with (behind our
    proxy, the address the proxy saw: a forged X-Forwarded-For gains nothing).
    """
    o = options()
    if o.metrics_token:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), o.metrics_token.encode()):
            return True
    address = request_address(request, o)
    return address is not None and o.metrics_address_allowed(address)
