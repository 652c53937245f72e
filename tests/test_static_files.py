"""Static files from a production worker: whole, with their headers, and a quiet log.

Django warned in every cluster worker's log ("StreamingHttpResponse must
consume synchronous iterators") on the first static file WhiteNoise served;
p2psite/streaming.py reads such files in WhiteNoise's thread instead.
"""
import re

import pytest

from tests.servers import ROOT, Worker

pytestmark = pytest.mark.db

PAGES = ["/", "/receive", "/send", "/admin/login/"]
WARNING = "StreamingHttpResponse must consume"


@pytest.fixture(scope="module", params=["uvicorn", "daphne"])
def worker(request):
    started = Worker(server=request.param, name=f"static-{request.param}")
    yield started
    started.stop()


def static_paths(page):
    """The scripts and styles a page links to, under /static/."""
    return re.findall(r'(?:src|href)="(/static/[^"]+)"', page)


def test_pages_and_their_files_are_served_whole_and_the_log_stays_quiet(worker):
    files = set()
    for path in PAGES:
        status, _, body = worker.get(path)
        assert status == 200, path
        files.update(static_paths(body))
    assert any(path.endswith(".js") for path in files) and any(path.endswith(".css") for path in files)
    for path in sorted(files):
        status, headers, body = worker.get(path)
        assert status == 200, path
        on_disk = (ROOT / "staticfiles" / path.removeprefix("/static/").split("?")[0]).read_text()
        assert body == on_disk, path
        assert int(headers["Content-Length"]) == len(on_disk.encode()), path
    assert WARNING not in worker.read_log()


def test_a_range_of_a_static_file_is_that_range(worker):
    status, headers, body = worker.get("/static/cuepages/common.js", headers={"Range": "bytes=0-9"})
    assert status == 206
    assert headers["Content-Range"].startswith("bytes 0-9/")
    assert body == (ROOT / "staticfiles" / "cuepages" / "common.js").read_text()[:10]
    assert WARNING not in worker.read_log()
