"""Bans: peer ids and client addresses refused at socket open, on every worker.

The bans live in the database (signaling.models.Ban, edited in the admin);
each worker keeps the active ones in memory (:class:`BanList`), so checking
a socket's open costs a few dict lookups and no query. A worker re-reads
them every PEERJS_BAN_REFRESH ms, and at once when told to: whoever creates
or lifts a ban calls :func:`announce`, which sends ``peerjs.bans`` to every
live worker's inbox. A worker that re-reads the bans also closes its sockets
that a ban now names. While the database is away a worker keeps the bans it
knew: opens are refused or answered as they would have been.
"""
import dataclasses
import logging

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.utils import timezone

from signaling import codes
from signaling.db import DatabaseUnavailable

logger = logging.getLogger(__name__)

ANY_KEY = ""  # Ban.key for a ban on every app
MESSAGE_TYPE = "peerjs.bans"


@dataclasses.dataclass(frozen=True)
class ActiveBan:
    what: str  # "peer id" or "address"
    expires_at: object  # an aware datetime, or None: until lifted
    reason: str

    def message(self):
        """The ERROR frame's text: what is banned, until when, and why."""
        if self.expires_at is None:
            until = "until an operator lifts the ban"
        else:
            until = "until " + timezone.localtime(self.expires_at).strftime("%Y-%m-%d %H:%M:%S ") + settings.TIME_ZONE
        text = f"Banned: this {self.what} may not connect to the server {until}"
        return f"{text} ({self.reason})" if self.reason else text


class BanList:
    """The active bans, by (key, peer id) and (key, address); ANY_KEY for every app."""

    def __init__(self, rows=()):
        self.peers = {}
        self.addresses = {}
        for key, peer_id, address, reason, expires_at in rows:
            table, target, what = (self.peers, peer_id, "peer id") if peer_id else (self.addresses, address, "address")
            ban = ActiveBan(what, expires_at, reason)
            held = table.get((key, target))
            # Of two bans on one target, the one that lasts longer counts.
            if held is None or (held.expires_at is not None and (expires_at is None or expires_at > held.expires_at)):
                table[key, target] = ban

    def __bool__(self):
        return bool(self.peers or self.addresses)

    def find(self, key, peer_id, address):
        """The ban that refuses ``peer_id`` of app ``key`` from ``address``, or None.

        An expired ban refuses nobody, whether or not the list was re-read
        since it ended.
        """
        if not self:
            return None
        now = timezone.now()
        for table, target in ((self.peers, peer_id), (self.addresses, address)):
            if not target:
                continue
            for scope in (key, ANY_KEY):
                ban = table.get((scope, target))
                if ban is not None and (ban.expires_at is None or ban.expires_at > now):
                    return ban
        return None


def active_rows():
    """The bans in force, as BanList takes them (a registry question: runs on a database thread)."""
    from django.db.models import Q

    from signaling.models import Ban

    now = timezone.now()
    return list(
        Ban.objects.filter(Q(expires_at__isnull=True) | Q(expires_at__gt=now)).values_list(
            "key", "peer_id", "address", "reason", "expires_at"
        )
    )


async def refresh(hub):
    """Re-read the active bans into ``hub``, and close the worker's sockets that one now names.

    While the database is away the bans known so far stay in force.
    """
    try:
        rows = await hub.db(active_rows)
    except DatabaseUnavailable:
        return
    hub.bans = BanList(rows)
    if not hub.bans:
        return
    for connection in list(hub.connections.values()):
        if connection.peer_id is None:
            continue  # not past its open's checks yet: they look at the bans themselves
        ban = hub.bans.find(connection.key, connection.peer_id, connection.address)
        if ban is not None:
            hub.stats["banned_closed"] += 1
            hub.spawn(connection.expel(ban.message(), codes.BANNED, "Banned"))


def announce(workers):
    """Tell ``workers`` (names) to re-read the bans now; for sync code (the admin).

    Returns the workers that could not be told (dead, or the channel layer
    unreachable): they apply the change at their next re-read.
    """
    from signaling.transport import inbox_name

    layer = get_channel_layer()
    missed = []
    for worker in workers:
        try:
            async_to_sync(layer.send)(inbox_name(worker), {"type": MESSAGE_TYPE})
        except Exception as exc:
            logger.warning("could not tell worker %s about a change of bans: %r", worker, exc)
            missed.append(worker)
    return missed
