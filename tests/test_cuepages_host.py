"""The share link, its QR code and the pages' policy against a forged Host header.

Real workers over real HTTP; each request names the Host it claims to be for.
"""
import html
import re
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from tests.servers import ROOT

PUBLIC = "http://192.168.1.20:8080"


def get(worker, path, host=None):
    """(status, headers, body) of a GET, with ``host`` as the Host header when given."""
    request = urllib.request.Request(worker.http + path, headers={"Host": host} if host else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.headers, error.read()


def encoded_link(svg):
    """The link a QR code stands for, as its SVG title names it."""
    return html.unescape(re.search(rb"<title>Sender link: (.*?)</title>", svg).group(1).decode())


def vary(headers):
    return {part.strip().lower() for part in (headers.get("Vary") or "").split(",")}


@pytest.fixture(scope="module")
def any_host():
    from tests.conftest import TEST_ENV
    from tests.servers import Database, Worker

    worker = Worker(Database(), {**TEST_ENV, "DJANGO_ALLOWED_HOSTS": "*"})
    yield worker
    worker.stop()
    worker.database.drop()


def test_with_any_host_allowed_a_host_derived_qr_code_is_private_to_who_asked(any_host):
    status, headers, svg = get(any_host, "/send-link.svg?id=abc", host="evil.example")
    assert status == 200 and encoded_link(svg) == "http://evil.example/send?id=abc"
    # A shared cache must not keep it (nor hand it out for another Host).
    cache = headers["Cache-Control"]
    assert "private" in cache and "public" not in cache
    assert "host" in vary(headers)
    # The real host's QR code is the real host's link.
    _, _, own = get(any_host, "/send-link.svg?id=abc")
    assert encoded_link(own) == f"{any_host.http}/send?id=abc"


def test_pages_whose_policy_names_the_host_are_private_to_who_asked(any_host):
    for path in ("/receive", "/send", "/"):
        status, headers, _ = get(any_host, path, host="evil.example")
        assert status == 200
        assert "ws://evil.example" in headers["Content-Security-Policy"]  # that client's own socket
        assert "private" in headers["Cache-Control"] and "host" in vary(headers), path


def test_with_a_public_url_the_qr_code_is_the_same_whatever_the_host(make_server):
    worker = make_server({"DJANGO_ALLOWED_HOSTS": "*", "CUEPAGES_PUBLIC_URL": PUBLIC})
    status, headers, forged = get(worker, "/send-link.svg?id=abc", host="evil.example")
    assert status == 200 and encoded_link(forged) == f"{PUBLIC}/send?id=abc"
    assert get(worker, "/send-link.svg?id=abc")[2] == forged
    assert headers["Cache-Control"] == "public, max-age=3600"


def test_with_the_default_hosts_a_foreign_host_is_refused(server):
    for path in ("/send-link.svg?id=abc", "/receive"):
        status, _, body = get(server, path, host="evil.example")
        assert status == 400 and b"evil.example" not in body


@pytest.mark.parametrize(
    "receiver_id, status",
    [
        ("abc", 200),
        ("stage%20left-2", 200),
        ("abc%0A", 400),  # a trailing newline: "$" alone would let it through
        ("abc%0Adef", 400),
        ("-abc", 400),
        ("abc%20", 400),
        ("a" * 255, 200),
        ("a" * 256, 400),  # longer than PEERJS_ID_MAX_LENGTH
        ("", 400),
    ],
)
def test_the_qr_code_is_drawn_only_for_a_whole_valid_id(server, receiver_id, status):
    assert get(server, f"/send-link.svg?id={receiver_id}")[0] == status


def test_any_host_without_a_public_url_is_flagged_by_the_system_checks(server):
    def check(**env):
        return subprocess.run(
            [sys.executable, "manage.py", "check"], cwd=ROOT, env={**server.env, **env},
            capture_output=True, text=True, check=True,
        )

    flagged = check(DJANGO_ALLOWED_HOSTS="*")
    assert "cuepages.W001" in flagged.stderr and "CUEPAGES_PUBLIC_URL" in flagged.stderr
    assert "cuepages.W001" not in check(DJANGO_ALLOWED_HOSTS="*", CUEPAGES_PUBLIC_URL=PUBLIC).stderr
    assert "cuepages.W001" not in check().stderr
