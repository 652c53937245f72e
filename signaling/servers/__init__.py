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

logger = logging.getLogger(__name__)

# The scope extension through which signaling.servers.uvicorn offers the
# application its fast paths: {"send_text": send_text(text) -> bool,
# "receive_text": receive_text(take), "accept_text": accept_text(text) -> bool},
# see WebSocketProtocol.
IMMEDIATE = "peerjs.immediate"

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
