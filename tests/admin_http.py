"""The Django admin of a real worker, driven over real HTTP as a browser would.

A session keeps its cookies, sends the CSRF token back with each form, and
can come from a chosen loopback address (127.0.0.2, ...) or with extra
headers (X-Forwarded-For), so tests can play several clients.
"""
import functools
import http.client
import http.cookiejar
import re
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
import uuid

from tests.servers import ROOT


def create_superuser(worker, password, username=None):
    """A superuser in the worker's database, made as an operator would; its name."""
    username = username or f"op{uuid.uuid4().hex[:8]}"
    env = {**worker.env, "DJANGO_SUPERUSER_PASSWORD": password}
    subprocess.run(
        [sys.executable, "manage.py", "createsuperuser", "--noinput", "--username", username, "--email", f"{username}@example.com"],
        cwd=ROOT, env=env, check=True, capture_output=True,
    )
    return username


class _FromAddress(urllib.request.HTTPHandler):
    """Connects from a given local address (any 127.x.y.z works on loopback)."""

    def __init__(self, source):
        super().__init__()
        self.source = source

    def http_open(self, req):
        return self.do_open(functools.partial(http.client.HTTPConnection, source_address=(self.source, 0)), req)


class Answer:
    def __init__(self, status, url, headers, body):
        self.status, self.url, self.headers, self.body = status, url, headers, body


class AdminSession:
    def __init__(self, worker, source="127.0.0.1", headers=None):
        self.base = worker.http
        self.headers = headers or {}
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(self.jar), _FromAddress(source)
        )

    def request(self, path, data=None, headers=None):
        """GET (or POST ``data`` bytes); follows redirects; any status is an Answer."""
        request = urllib.request.Request(self.base + path, data=data, headers={**self.headers, **(headers or {})})
        try:
            with self.opener.open(request, timeout=10) as response:
                return Answer(response.status, response.url, response.headers, response.read().decode())
        except urllib.error.HTTPError as error:
            with error:
                return Answer(error.code, error.url, error.headers, error.read().decode())

    def get(self, path):
        return self.request(path)

    def post(self, path, fields):
        """Submit the form at ``path`` with ``fields`` and its CSRF token, as a browser does."""
        page = self.get(path)
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.body).group(1)
        data = urllib.parse.urlencode({**fields, "csrfmiddlewaretoken": token}, doseq=True).encode()
        return self.request(path, data, headers={"Referer": self.base + path})

    def login(self, username, password):
        """Log in through the admin's login form; the Answer of the page it leads to."""
        return self.post("/admin/login/?next=/admin/", {"username": username, "password": password, "next": "/admin/"})

    @property
    def logged_in(self):
        return "Log out" in self.get("/admin/").body
