"""A Django app for test workers: writes down every peer_connected, peer_disconnected and peer_message signal,
and on SIGUSR2 the garbage only the cyclic collector would free (with PEERJS_GARBAGE_PROBE).

A worker started with DJANGO_SETTINGS_MODULE=tests.probe_settings has it
installed; it appends one JSON line per signal to the file named by
PEERJS_SIGNAL_PROBE, with the arguments as a receiver got them and whether
it ran on the worker's event loop (where the hub sends them).
"""
import asyncio
import collections
import gc
import json
import os
import signal as signal_module

from django.apps import AppConfig


def _write_garbage(signum, frame):
    """On SIGUSR2: collect, and write what the collection found unreachable (by type) to PEERJS_GARBAGE_PROBE.

    Everything, frozen or not (gc.unfreeze first): what a closed socket
    leaves to the cyclic collector instead of freeing it at once.
    """
    gc.unfreeze()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
        types = collections.Counter(f"{type(o).__module__}.{type(o).__qualname__}" for o in gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    gc.collect()
    gc.freeze()
    with open(os.environ["PEERJS_GARBAGE_PROBE"], "w") as probe:
        json.dump(dict(types), probe)


def _on_event_loop():
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


class SignalProbeConfig(AppConfig):
    name = "tests.signal_probe"
    label = "signal_probe"

    def ready(self):
        if os.environ.get("PEERJS_GARBAGE_PROBE"):
            signal_module.signal(signal_module.SIGUSR2, _write_garbage)
        if os.environ.get("PEERJS_SIGNAL_PROBE"):
            self.record_signals()

    def record_signals(self):
        from signaling.signals import peer_connected, peer_disconnected, peer_message

        path = os.environ["PEERJS_SIGNAL_PROBE"]
        names = {peer_connected: "peer_connected", peer_disconnected: "peer_disconnected", peer_message: "peer_message"}

        def record(signal, sender, **kwargs):
            at = kwargs.get("at")
            line = {
                "signal": names[signal],
                "sender": sender,
                "arguments": sorted(kwargs),
                **{name: kwargs.get(name) for name in ("key", "peer_id", "address", "worker", "connection")},
                "at": at.isoformat() if at is not None else None,
                "aware": at is not None and at.utcoffset() is not None,
                "on_event_loop": _on_event_loop(),
                "pid": os.getpid(),
            }
            if "message" in kwargs:
                line["message"] = kwargs["message"]
            with open(path, "a") as probe:  # one short append per line: lines of two workers never mix
                probe.write(json.dumps(line) + "\n")

        for signal in names:
            signal.connect(record, weak=False, dispatch_uid="tests.signal_probe")
