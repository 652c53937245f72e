"""System checks (``manage.py check``, every server's start): the channel layers the app needs.

The bus between workers is the app's own alias (``PEERJS["CHANNEL_LAYER"]``,
signaling.bus); ``default`` carries Channels groups, the site's and the
operators' Disconnects and ban changes (signaling.broadcasts).
``signaling.conf.channel_layers(PEERJS)`` makes both right; these say what a
hand-written ``CHANNEL_LAYERS`` misses.
"""
from channels import DEFAULT_CHANNEL_LAYER
from django.conf import settings
from django.core import checks

from signaling.conf import options

BUS_BACKEND = "signaling.bus.layer.RedisBatchLayer"
IN_MEMORY_BACKEND = "channels.layers.InMemoryChannelLayer"
HINT = "CHANNEL_LAYERS = signaling.conf.channel_layers(PEERJS), or add **signaling.conf.bus_layer(PEERJS) to your own."


@checks.register("signaling")
def channel_layers(app_configs=None, **kwargs):
    layers = getattr(settings, "CHANNEL_LAYERS", None) or {}
    o = options()
    if not o.redis_url:
        return []  # one worker: whatever layers it has (none, or in memory) reach it
    found = []
    default = layers.get(DEFAULT_CHANNEL_LAYER)
    if default is None:
        found.append(checks.Warning(
            "REDIS_URL is set but CHANNEL_LAYERS has no 'default' layer: operators' Disconnects and ban changes "
            "cannot reach the workers (bans still apply at their next re-read, PEERJS_BAN_REFRESH).",
            hint=HINT, id="signaling.W001",
        ))
    bus = layers.get(o.channel_layer)
    if bus is None:
        found.append(checks.Error(
            f"REDIS_URL is set but CHANNEL_LAYERS has no {o.channel_layer!r} layer (PEERJS['CHANNEL_LAYER']): "
            "the workers cannot reach each other's peers.",
            hint=HINT, id="signaling.E001",
        ))
    elif bus.get("BACKEND") != BUS_BACKEND:
        found.append(checks.Warning(
            f"CHANNEL_LAYERS[{o.channel_layer!r}] is {bus.get('BACKEND')!r}, not {BUS_BACKEND}: frames between "
            "workers go one at a time, unbatched, and what is lost is not told to its sender.",
            hint=HINT, id="signaling.W002",
        ))
    if default is not None and default.get("BACKEND") == IN_MEMORY_BACKEND:
        found.append(checks.Warning(
            "REDIS_URL is set but CHANNEL_LAYERS['default'] is in memory: groups stay within each worker, so an "
            "operator's Disconnect reaches only the worker that serves the admin page, and ban changes wait for "
            "each worker's next re-read (PEERJS_BAN_REFRESH).",
            hint=HINT, id="signaling.W003",
        ))
    return found
