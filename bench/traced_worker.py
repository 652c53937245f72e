"""uvicorn under tracemalloc, for ``bench/perpeer.py --tracemalloc``.

Run as ``traced_worker.py UVICORN-ARGS...`` in the project's directory. Each
SIGUSR1 writes, into the directory ``PERPEER_SNAPSHOTS`` names, ``N.snap`` (a
tracemalloc snapshot, ``PERPEER_FRAMES`` frames deep, default 1) and
``N.types.json`` (live objects the garbage collector tracks, counted by type),
then an empty ``N.done``. The worker itself is unchanged: this only starts
tracing before uvicorn imports anything.
"""
import collections
import gc
import itertools
import json
import os
import signal
import sys
import tracemalloc
from pathlib import Path


def main():
    out = Path(os.environ["PERPEER_SNAPSHOTS"])
    numbers = itertools.count()
    tracemalloc.start(int(os.environ.get("PERPEER_FRAMES", "1")))

    def dump(signum, frame):
        n = next(numbers)
        tracemalloc.take_snapshot().dump(str(out / f"{n}.snap"))
        types = collections.Counter(f"{type(o).__module__}.{type(o).__qualname__}" for o in gc.get_objects())
        (out / f"{n}.types.json").write_text(json.dumps(dict(types)))
        (out / f"{n}.done").touch()

    signal.signal(signal.SIGUSR1, dump)
    from uvicorn.main import main as uvicorn

    sys.argv = ["uvicorn", *sys.argv[1:]]
    uvicorn()


if __name__ == "__main__":
    main()
