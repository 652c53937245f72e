"""Between workers: each worker's inbox on the channel layer.

The transport knows no hub. It hands what arrives in this worker's inbox to
``on_messages(messages)`` (a list, in the order sent), and what could not
reach another worker to ``on_undelivered(worker, messages, reason)``, where
``reason`` is GONE when nobody reads that worker's inbox any more (it died
or stopped) and something else when the fate of the messages is unknown.

With the batching Redis layer (signaling.bus.layer) a send costs the caller no
round trip: it joins the batch for the other worker, and failures come back
through ``on_undelivered``. Any other Channels layer (the in-memory one of a
single worker) is driven through its plain ``send`` and ``receive``.
"""
import asyncio
import logging

from channels.exceptions import ChannelFull
from channels.layers import get_channel_layer

from signaling import metrics
from signaling.bus import redis_name
from signaling.bus.layer import NotDelivered
from signaling.conf import options
from signaling.logs import Occasional

logger = logging.getLogger(__name__)
# A full inbox refuses every frame past it, thousands a second under
# overload: a line per frame took a seventh of the worker's CPU when profiled,
# and drowned the log. The counter (peerjs_inbox_full_total) has each.
_inbox_full = Occasional(logger)

GONE = "gone"
LISTEN_WAIT = 1.0  # seconds a starting worker waits for its inbox subscription before it serves anyway
INBOX_PREFIX = "peerjs.worker."


def channel_layer():
    """The layer between workers: the app's alias (PEERJS["CHANNEL_LAYER"]), or, without Redis, the default (in memory)."""
    return get_channel_layer(options().channel_layer) or get_channel_layer()


def inbox_name(worker):
    """The channel on which ``worker`` receives."""
    return INBOX_PREFIX + worker


def worker_of(channel):
    return channel[len(INBOX_PREFIX) :]


class Transport:
    def __init__(self, layer, worker, stats, on_messages, on_undelivered, on_heard_again=None):
        self.layer = layer
        self.inbox = inbox_name(worker)
        self.stats = stats
        self.on_messages = on_messages
        self.on_undelivered = on_undelivered
        self.on_heard_again = on_heard_again  # called when the inbox is subscribed again after a failure
        self.batching = hasattr(layer, "send_nowait")
        if self.batching:
            layer.on_undelivered = self._undelivered
            layer.on_resubscribed = self._resubscribed
            layer.on_arrival = metrics.CROSS_WORKER_DELIVERY.observe
        self.task = None
        self._tasks = set()
        self._send_nowait = None  # the layer's sender for this worker's event loop

    async def start(self):
        """Listen on this worker's inbox; returns once others can reach it.

        If Redis is away, the worker starts without waiting for it (what
        others send meanwhile comes back to them as undelivered).
        """
        if not self.batching:
            self.task = asyncio.get_running_loop().create_task(self._read())
            return
        # Each batch is handed over as it is read from Redis, not through a
        # task waiting in receive_many (a turn of the event loop sooner).
        listening = self.layer.listen(self.inbox, on_messages=self.on_messages)
        try:
            await asyncio.wait_for(asyncio.shield(listening), LISTEN_WAIT)
        except asyncio.TimeoutError:
            logger.error("worker inbox %s is not subscribed yet (Redis away?); starting anyway", self.inbox)

    def stop(self):
        if self.task is not None:
            self.task.cancel()

    async def flushed(self):
        """Return once what was sent so far is on its way (Redis has it)."""
        if self.batching:
            await self.layer.flushed()

    async def settled(self, worker):
        """Return once what was sent to ``worker`` so far arrived or came back through ``on_undelivered``.

        (At once on a plain layer, which does not say.)
        """
        if self.batching:
            await self.layer.settled(inbox_name(worker))

    def receiving(self):
        """Whether this worker hears its inbox now: False while its Redis subscription is broken.

        (Always on a plain layer: the in-memory one of a single worker has nothing to lose.)
        """
        return not self.batching or self.layer.receiving()

    def in_flight(self):
        """Messages for other workers that have not been acknowledged yet (0 on a plain layer, which does not say)."""
        return self.layer.in_flight() if self.batching else 0

    def send(self, worker, message):
        """Hand ``message`` to ``worker``'s inbox. False if it was refused at once (counted)."""
        channel = inbox_name(worker)
        if not self.batching:
            task = asyncio.get_running_loop().create_task(self._send_plainly(worker, channel, message))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return True
        try:
            self._sender()(channel, message)
        except ChannelFull:
            self.stats["inbox_full"] += 1
            _inbox_full.warning("inbox full: worker %s has too many messages in flight; refused a %s", worker, message["type"])
            return False
        return True

    def _sender(self):
        """The layer's send_nowait for this worker's event loop, bound on first use (its side listens by then)."""
        if self._send_nowait is None:
            self._send_nowait = self.layer.sender()
        return self._send_nowait

    async def _send_plainly(self, worker, channel, message):
        try:
            await self.layer.send(channel, message)
        except ChannelFull:
            self.stats["inbox_full"] += 1
            self.on_undelivered(worker, [message], "inbox full")
        except NotDelivered:
            self.on_undelivered(worker, [message], GONE)
        except Exception as exc:
            self.stats["redis_errors"] += 1
            self.on_undelivered(worker, [message], repr(exc))

    def _undelivered(self, channel, messages, reason):
        if reason.startswith("nobody"):
            reason = GONE
            # Nobody held the inbox when the batch got there. Frames waiting to
            # go there next would be published a round later, and could overtake
            # these on their new way (the queue) if the worker subscribed again
            # meanwhile (a Sentinel failover): they come back with them. The
            # rest (drains, closes) goes as it would have.
            waiting = self.layer.take_back(channel)
            messages = [*messages, *(m for m in waiting if m.get("type") == "peerjs.relay")]
            for message in waiting:
                if message.get("type") != "peerjs.relay":
                    self._sender()(channel, message)
        else:
            self.stats["redis_errors"] += 1
            logger.warning("%d messages for worker %s were lost: %s", len(messages), worker_of(channel), reason)
        self.on_undelivered(worker_of(channel), messages, reason)

    def _resubscribed(self, channel):
        if channel == redis_name(self.inbox) and self.on_heard_again is not None:  # the Redis name
            self.on_heard_again()

    async def _read(self):
        """A plain layer's inbox: received one message at a time."""
        while True:
            try:
                message = await self.layer.receive(self.inbox)
            except asyncio.CancelledError:
                raise
            except Exception:
                self.stats["redis_errors"] += 1
                logger.exception("cannot read inbox %s; retrying", self.inbox)
                await asyncio.sleep(1)
                continue
            try:
                self.on_messages([message])
            except Exception:
                logger.exception("failed on messages from inbox %s", self.inbox)
