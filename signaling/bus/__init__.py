"""Between workers: the batching Redis channel layer, its wire protocol, each worker's inbox.

On a channel-layer alias of its own (``PEERJS["CHANNEL_LAYER"]``), beside the
site's ``default`` layer, which carries Channels groups.
"""
import asyncio


def redis_name(channel):
    """The Redis channel for a Channels channel: braced, so that its hash slot is the
    whole name's and the process's acknowledgements ("<name>!acks") share it."""
    return "{" + channel + "}"


async def quietly(awaitable):
    """Await ``awaitable`` for its effect, whatever it raises (closing, refreshing what may be gone)."""
    try:
        await awaitable
    except (Exception, asyncio.CancelledError):
        pass
