"""Bans: peer ids and client addresses refused at socket open, on every worker.

The bans live in the database (signaling.models.Ban, edited in the admin);
each worker keeps the active ones in memory (:class:`BanList`), so checking
a socket's open costs a few dict lookups and no query. A worker re-reads
them every PEERJS_BAN_REFRESH ms, and at once when told to: whoever creates
or lifts a ban calls signaling.broadcasts.announce_bans, a message to every
worker's hub on the default channel layer. A worker that re-reads the bans
also closes its sockets that a ban now names. While the database is away a
worker keeps the bans it knew: opens are refused or answered as they would
have been.
"""
import dataclasses
import logging

from django.conf import settings
from django.utils import timezone

from signaling import codes, conf
from signaling.db import DatabaseUnavailable
from signaling.http import client_group

logger = logging.getLogger(__name__)

ANY_KEY = ""  # Ban.key for a ban on every app


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
    """The active bans, by (key, peer id) and (key, client); ANY_KEY for every app.

    A client is what signaling.http.client_group makes of an address: a ban
    of an IPv6 address covers its whole network (/64 by default), the unit
    every other per-address rule counts by.
    """

    def __init__(self, rows=(), options=None):
        self.options = options or conf.options()
        self.peers = {}
        self.addresses = {}
        for key, peer_id, address, reason, expires_at in rows:
            if peer_id:
                table, target, what = self.peers, peer_id, "peer id"
            else:
                table, target, what = self.addresses, client_group(address, self.options), "address"
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
        for table, target in ((self.peers, peer_id), (self.addresses, client_group(address, self.options))):
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
        if connection.peer_id is None or not connection.accepted:
            continue  # still opening: it looks at the bans itself, last just before it accepts
        ban = hub.bans.find(connection.key, connection.peer_id, connection.address)
        if ban is not None:
            hub.stats["banned_closed"] += 1
            hub.spawn(connection.expel(ban.message(), codes.BANNED, "Banned"))
