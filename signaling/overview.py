"""The admin's overview of the cluster: per worker, what it holds and how busy it is.

Every figure comes from ``Worker.stats``, which each worker writes at its beat
(signaling.metrics.Recent): the page asks the database, never the workers,
so whichever worker serves it shows them all, and a worker that stopped
beating shows as it last was, flagged stale. The admin serves them
(signaling.admin.OverviewAdmin): ``/admin/signaling/overview/`` is the page,
``/admin/signaling/overview/data/`` the same figures as JSON, which the
page's script (static/signaling/overview.js) fetches to refresh its table.

Each row carries its table cells as text, formatted here once: the template
renders them, and the script only puts them in place.
"""
from django.conf import settings
from django.template.defaultfilters import pluralize
from django.utils import timezone

from signaling.admin import duration, moment
from signaling.conf import options
from signaling.models import QueuedMessage, Worker

# The counters that say something went wrong, a client's doing or the
# server's (signaling.metrics.COUNTERS says what each one counts).
ERRORS = {
    "bad_frames": "bad frames",
    "floods": "floods",
    "slow_consumers": "slow clients",
    "write_failed": "failed writes",
    "inbox_full": "inbox full",
    "queue_full": "queue full",
    "database_errors": "database",
    "redis_errors": "Redis",
    "internal_errors": "internal",
}

COLUMNS = [
    ("name", "worker"),
    ("host", "host"),
    ("pid", "pid"),
    ("peers", "peers"),
    ("opens", "opens/s"),
    ("relays_same", "relays/s, same worker"),
    ("relays_other", "relays/s, other worker"),
    ("waiting", "queue depth"),
    ("errors", "errors"),
    ("last_beat", f"last beat ({settings.TIME_ZONE})"),
    ("beat_age", "beat age"),
]

SAME, OTHER = "frames_relayed:same_worker", "frames_relayed:other_worker"
OPENED = "sockets_opened:"


def _per_second(count, seconds):
    return round(count / seconds, 2) if seconds else 0.0


def _number(value):
    """``12,710.5``, ``3``: thousands apart, at most two decimals, none that say nothing."""
    return f"{value:,.2f}".rstrip("0").rstrip(".")


def worker_figures(worker, now, timeout):
    """One worker's row: its figures as of its last beat, and its cells."""
    stats = worker.stats or {}  # {} until the worker's first beat with this version
    totals = stats.get("totals", {})
    recent = stats.get("recent", {})
    counts, seconds = recent.get("counts", {}), recent.get("seconds", 0)
    errors = {key: totals[key] for key in ERRORS if totals.get(key)}
    age = (now - worker.last_beat).total_seconds()
    row = {
        "name": worker.name,
        "host": worker.host,
        "pid": worker.pid,
        "peers": stats.get("peers", 0),
        # Every socket opened, whatever its outcome (refusals cost a worker too).
        "opens": _per_second(sum(n for key, n in counts.items() if key.startswith(OPENED)), seconds),
        "relays_same": _per_second(counts.get(SAME, 0), seconds),
        "relays_other": _per_second(counts.get(OTHER, 0), seconds),
        "waiting": sum(stats.get("waiting", {}).values()),
        "errors": sum(errors.values()),
        "last_beat": moment(worker.last_beat),
        "beat_age": round(age, 1),
        "stale": age > timeout,
        # What the rates are over, and what they add up to since the worker started.
        "seconds": seconds,
        "waiting_by_place": stats.get("waiting", {}),
        "totals": {
            "sockets_opened": {key[len(OPENED):]: n for key, n in totals.items() if key.startswith(OPENED)},
            "frames_relayed": {"same_worker": totals.get(SAME, 0), "other_worker": totals.get(OTHER, 0)},
            "frames_queued": totals.get("frames_queued", 0),
            "frames_expired": totals.get("frames_expired", 0),
            "errors": errors,
        },
    }
    text = {
        "name": worker.name,
        "host": worker.host,
        "pid": str(worker.pid),
        "last_beat": row["last_beat"],
        "beat_age": f"{duration(age)} ago" + (", stale" if row["stale"] else ""),
        "errors": str(row["errors"]) + (": " + ", ".join(f"{ERRORS[k]} {n}" for k, n in errors.items()) if errors else ""),
    }
    row["cells"] = [(column, text[column] if column in text else _number(row[column])) for column, _label in COLUMNS]
    return row


def cluster_totals(rows):
    """The totals row: every worker with a row, stale ones too (their rows are reaped soon)."""
    row = {column: sum(r[column] for r in rows) for column in ("peers", "waiting", "errors")}
    row.update({column: round(sum(r[column] for r in rows), 2) for column in ("opens", "relays_same", "relays_other")})
    stale = sum(r["stale"] for r in rows)
    text = {
        "name": f"{len(rows)} worker{pluralize(len(rows))}" + (f" ({stale} stale)" if stale else ""),
        "host": "", "pid": "", "last_beat": "", "beat_age": "",
    }
    row["cells"] = [(column, text[column] if column in text else _number(row[column])) for column, _label in COLUMNS]
    return row


def stats_rows(worker):
    """(what, how much) of one worker's figures, for its page in the admin."""
    row = worker_figures(worker, timezone.now(), options().worker_timeout / 1000)
    totals = row["totals"]
    over = f"over the last {_number(row['seconds'])} s"

    def listed(counts, names=None):
        return ", ".join(f"{(names or {}).get(k, k.replace('_', ' '))} {_number(n)}" for k, n in counts.items() if n) or "none"

    return [
        ("peers", _number(row["peers"])),
        (f"sockets opened per second, {over}", _number(row["opens"])),
        (f"frames relayed per second, {over}", f"same worker {_number(row['relays_same'])}, other worker {_number(row['relays_other'])}"),
        ("queue depth", f"{_number(row['waiting'])} ({listed(row['waiting_by_place'])})" if row["waiting"] else "0"),
        ("sockets opened since it started, by outcome", listed(totals["sockets_opened"])),
        ("frames relayed since it started", listed(totals["frames_relayed"])),
        ("frames queued for peers not connected, expired", f"{_number(totals['frames_queued'])}, {_number(totals['frames_expired'])}"),
        ("errors since it started", listed(totals["errors"], ERRORS)),
    ]


def figures():
    """Everything the page shows, JSON-ready."""
    now = timezone.now()
    o = options()
    rows = [worker_figures(worker, now, o.worker_timeout / 1000) for worker in Worker.objects.all()]
    return {
        "at": moment(now),
        "columns": COLUMNS,
        "workers": rows,
        "totals": cluster_totals(rows),
        # Frames waiting in the database for peers that are not connected: the
        # cluster's, since any worker delivers them.
        "queued": QueuedMessage.objects.count(),
    }
