"""The ASGI servers a worker runs, adapted by subclass where their defaults fall short.

- :mod:`signaling.servers.uvicorn`: uvicorn's protocol classes, for the
  production worker (``uvicorn --http ... --ws ...``, deploy/worker-entrypoint.sh).
- :mod:`signaling.servers.daphne`: daphne's server, for development
  (``manage.py runserver``) and ``ASGI_SERVER=daphne``.

The subclasses rely on their servers' internals, so they were tested with
exactly the versions in :data:`TESTED` (requirements.txt pins them), and
:func:`require_tested` stops a worker with one line when others are
installed. The application finds what a server offers it in the scope's
``extensions`` (:data:`IMMEDIATE`), never by looking at the server's objects.

This package imports neither server: the consumer imports it for the name.
"""
import importlib.metadata
import logging
import resource
import threading

logger = logging.getLogger(__name__)

# The scope extension through which signaling.servers.uvicorn offers the
# application its fast paths: {"send_text": send_text(text) -> bool,
# "receive_text": receive_text(take), "accept_text": accept_text(text) -> bool},
# see WebSocketProtocol.
IMMEDIATE = "peerjs.immediate"


class HeldWrites(threading.local):
    """Frames written to one socket within a block go out in one system call at its end.

    ``with held_writes: ...`` around a loop that may write several frames to
    the same socket -- a batch from another worker, where at full speed a
    socket's frames arrive nine at a time -- and a server that can hold its
    writes (signaling.servers.uvicorn) keeps each socket's frames until the
    block ends: one ``send()`` per socket instead of one per frame, the
    largest cost of a relayed frame when profiled. Nothing waits longer than
    the block, which never awaits. Other servers write at once, as always.
    Per thread, since each event loop runs in its own.
    """

    def __init__(self):
        self.depth = 0  # blocks under way: only the outermost flushes
        self.flushes = None  # while held: the sockets' flush callbacks, in the order they first wrote

    def __enter__(self):
        if not self.depth:
            self.flushes = []
        self.depth += 1

    def __exit__(self, *exc_info):
        self.depth -= 1
        if self.depth:
            return
        flushes, self.flushes = self.flushes, None
        for flush in flushes:
            try:
                flush()
            except Exception:  # one socket's failure keeps no other's frames back
                logger.exception("could not write a socket's held frames")

    def hold(self, flush):
        """Whether a block is under way; if so, ``flush`` is called at its end (once per socket, by the caller's care)."""
        if self.flushes is None:
            return False
        self.flushes.append(flush)
        return True


held_writes = HeldWrites()

# The distributions whose internals the subclasses use, at the versions they
# were tested with (the same pins as requirements.txt and as the extras of
# pyproject.toml, named for the first of each group; tests keep them equal).
TESTED = {
    "uvicorn": "0.54.0",
    "h11": "0.16.0",
    "websockets": "15.0.1",
    "daphne": "4.2.3",
    "twisted": "26.10.0",
    "autobahn": "26.11.1",
}


def require_tested(*names):
    """Stop the process, with one line, unless distributions ``names`` are installed at their TESTED versions."""
    wrong = []
    for name in names:
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            installed = "none"
        if installed != TESTED[name]:
            wrong.append(f"{name} {installed} (tested: {TESTED[name]})")
    if wrong:
        raise SystemExit(
            f"error: signaling.servers adapts {', '.join(names)} at the versions it was tested with, "
            f"and finds {'; '.join(wrong)}: install requirements.txt's pins "
            f"(or the app's extra: pip install 'django-peerjs-signaling[{names[0]}]')."
        )


def raise_open_files_limit():
    """Raise this process's soft limit of open files to its hard limit, and log both.

    Every connection is a file descriptor, and many systems start processes
    with a soft limit of 1 024 under a far higher hard one.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == hard:
        logger.info("open files: limit %d (the hard limit)", soft)
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError) as exc:
        logger.warning("open files: limit %d; could not raise it to the hard limit %d: %s", soft, hard, exc)
        return
    logger.info("open files: raised the limit from %d to %d (the hard limit)", soft, hard)
