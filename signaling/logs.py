"""Log lines a client can cause, at most one per interval.

Whatever a stranger can make happen (a handshake to a wrong path, a
connection past a cap, a worker out of file descriptors) is worth a line in
the log, but not one per occurrence: a loop of requests would fill the disk
and bury everything else.
"""
import time

INTERVAL = 60.0  # seconds


class Occasional:
    """Logs one kind of event at most once per ``interval`` seconds; the next line counts those held back."""

    def __init__(self, logger, interval=INTERVAL):
        self.logger = logger
        self.interval = interval
        self.next = None  # monotonic time before which nothing more is logged
        self.held = 0

    def warning(self, message, *args):
        now = time.monotonic()
        if self.next is not None and now < self.next:
            self.held += 1
            return
        if self.held:
            message += f" (and {self.held} more like it since the last such line)"
            self.held = 0
        self.next = now + self.interval
        self.logger.warning(message, *args)
