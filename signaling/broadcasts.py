"""What an operator's action tells the workers, as Channels group messages on the site's ``default`` layer.

An operator's Disconnect and a change of bans are rare, and a millisecond
does not matter to them (docs/performance.md has the measurement), so they
travel as Channels users expect: ``group_send`` on the ``default`` layer
(channels-redis with Redis, the in-memory layer without), not through the bus
between workers (signaling.bus), which carries the relayed frames.

Each hub joins two groups with one channel of its own: its worker's
(:func:`hub_group`), for Disconnects of the sockets it holds, and every
hub's (:data:`EVERY_HUB`), for changes of bans. It renews its membership
every ``worker_beat``: a Redis restarted without persistence forgets every
group, and channels-redis lets a membership lapse after its ``group_expiry``
(a day). It joins again when its read of the layer failed (Redis went away),
before it reads again, not a beat later; during an outage it tries every
RETRY_PAUSE_MAX at most. A message sent while a hub is not in its groups is
lost: a ban is still applied at the next re-read of the bans
(``BAN_REFRESH``), a Disconnect has to be asked again.
"""
import asyncio
import logging

import redis.exceptions
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

from signaling import codes

logger = logging.getLogger(__name__)

EVERY_HUB = "peerjs.hubs"
CLOSE = "peerjs.close"  # close one socket: an operator's Disconnect, or a takeover (through the bus)
BANS = "peerjs.bans"  # re-read the bans, and close the sockets they now name
RETRY_PAUSE, RETRY_PAUSE_MAX = 0.1, 0.5  # seconds before reading again after a failure, doubled up to the max
LEAVE_TIMEOUT = 1.0  # seconds a stopping hub gives the layer to take it out of its groups


def hub_group(worker):
    """The group of ``worker``'s hub (one per worker process)."""
    return f"peerjs.hub.{worker}"


def close_message(connection_id, code, reason):
    """What asks a worker to close one of its sockets."""
    return {"type": CLOSE, "connection": connection_id, "code": code, "reason": reason}


def request_disconnect(peer):
    """Ask the worker holding ``peer`` (a Peer row) to close its socket; for sync code (the admin).

    Raises when the default layer cannot take it (Redis away).
    """
    message = close_message(peer.connection, codes.DISCONNECTED, "Disconnected by an operator")
    _group_send(hub_group(peer.worker), message)


def announce_bans():
    """Tell every worker to re-read the bans now; for sync code (the admin). Raises when the default layer cannot take it."""
    _group_send(EVERY_HUB, {"type": BANS})


def _group_send(group, message):
    """``group_send`` on the default layer; once more if Redis refused it.

    After a Redis restart (or a Sentinel failover) the layer's pooled
    connections are closed, and the first command on one fails although Redis
    is back: redis-py drops that connection, and the second goes on a new one.
    (Not a retry in the layer's pool: a hub's read must fail then, see Membership.)
    """
    send = async_to_sync(_layer().group_send)
    try:
        send(group, message)
    except redis.exceptions.ConnectionError:
        send(group, message)


def _layer():
    layer = get_channel_layer()
    if layer is None:
        raise RuntimeError("no default channel layer (CHANNEL_LAYERS['default']): the workers cannot be told")
    return layer


class Membership:
    """A hub's channel on the default layer, its place in its groups, and what arrives there."""

    def __init__(self, layer, worker, renew_every, on_messages):
        self.layer = layer
        self.groups = (hub_group(worker), EVERY_HUB)
        self.renew_every = renew_every  # seconds
        self.on_messages = on_messages  # called with [message] for each message that arrives
        self.channel = None
        self.tasks = ()
        self.failing = False  # the last join failed (logged once per outage)

    async def start(self):
        # The default prefix, as the site's consumers get: channels-redis reads
        # every channel of a process through one blocking read of one key,
        # that of the first receiver's prefix, so a prefix of our own would
        # keep the site's consumers from ever hearing their messages.
        self.channel = await self.layer.new_channel()
        loop = asyncio.get_running_loop()
        self.tasks = (loop.create_task(self._renew()), loop.create_task(self._read()))

    async def join(self):
        """Join (again) every group of the hub; whether it did. A refusal (Redis away) is logged once per outage."""
        try:
            for group in self.groups:
                await self.layer.group_add(group, self.channel)
        except Exception as exc:
            if not self.failing:
                logger.warning("could not join the operators' groups on the default channel layer (%r); retrying", exc)
            self.failing = True
            return False
        if self.failing:
            logger.info("joined the operators' groups on the default channel layer again")
        self.failing = False
        return True

    async def stop(self):
        """Stop reading and leave the groups: best effort, within LEAVE_TIMEOUT (memberships lapse by themselves)."""
        for task in self.tasks:
            task.cancel()
        try:
            await asyncio.wait_for(self._leave(), LEAVE_TIMEOUT)
        except Exception as exc:  # Redis away, or silent: a SIGTERM drain must not wait for it
            logger.info("left the operators' groups without telling the default channel layer (%r)", exc)

    async def _leave(self):
        for group in self.groups:
            await self.layer.group_discard(group, self.channel)

    async def _renew(self):
        while True:
            await self.join()
            await asyncio.sleep(self.renew_every)

    async def _read(self):
        pause = RETRY_PAUSE
        rejoin = False  # the last read failed: Redis may have restarted and forgotten the groups
        while True:
            try:
                if rejoin:
                    rejoin = not await self.join()
                message = await self.layer.receive(self.channel)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if pause == RETRY_PAUSE:
                    logger.warning("cannot read the operators' groups on the default channel layer (%r); retrying", exc)
                await asyncio.sleep(pause)
                pause = min(pause * 2, RETRY_PAUSE_MAX)
                rejoin = True
                continue
            pause = RETRY_PAUSE
            try:
                self.on_messages([message])
            except Exception:
                logger.exception("failed on a message of the operators' groups: %.200r", message)
