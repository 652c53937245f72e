"""The Django admin of a real worker, driven over real HTTP as a browser would.

A session keeps its cookies, sends the CSRF token back with each form, and
can come from a chosen loopback address (127.0.0.2, ...) or with extra
headers (X-Forwarded-For), so tests can play several clients.
"""
import datetime
import functools
import http.client
import http.cookiejar
import re
import urllib.error
import urllib.parse
import urllib.request
import uuid



def create_superuser(worker, password, username=None):
    """A superuser in the worker's database; its name.

    Written straight into the database (``manage.py createsuperuser`` booted
    Django for each of the suite's operators: a second apiece), with the
    password hashed as Django hashes it, once per password.
    """
    username = username or f"op{uuid.uuid4().hex[:8]}"
    query = getattr(worker.database, "query", None)
    if query is None:  # the test process's own database (SharedTestDatabase): its ORM
        from django.contrib.auth.models import User

        User.objects.create_superuser(username, f"{username}@example.com", password)
        return username
    now = datetime.datetime.now(datetime.UTC)
    query(
        "INSERT INTO auth_user (password, is_superuser, username, first_name, last_name, email, is_staff,"
        " is_active, date_joined) VALUES (?, ?, ?, '', '', ?, ?, ?, ?)",
        (_hashed(password), True, username, f"{username}@example.com", True, True, now),
    )
    return username


@functools.cache
def _hashed(password):
    from django.contrib.auth.hashers import make_password

    return make_password(password)


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


class AppRecord:
    """An app an operator made in the admin: its row's id, its key, what the form holds, its token secret."""

    def __init__(self, pk, key, fields, token_secret):
        self.pk, self.key, self.fields, self.token_secret = pk, key, fields, token_secret


class Apps:
    """Apps added and edited through the admin's forms, as an operator does, over real HTTP.

    ``operator`` is a logged-in AdminSession; ``database`` the worker's
    (tests.servers.Database), read for what the admin does not show back
    (the row's id, the generated token secret).
    """

    PATH = "/admin/signaling/app/"

    def __init__(self, operator, database):
        self.operator = operator
        self.database = database

    @staticmethod
    def form(key, **fields):
        """The add/change form's fields: a checkbox is sent when on, left out when off."""
        values = {
            "key": key, "name": key.capitalize(), "allowed_origins": "", "concurrent_limit": "",
            "allow_discovery": False, "auth": "none", "turn_urls": "", "turn_secret": "", "turn_ttl": "86400",
            "webhook_url": "", "webhook_secret": "", **fields,
        }
        return values

    @staticmethod
    def _posted(fields):
        posted = {name: value for name, value in fields.items() if not isinstance(value, bool)}
        posted.update({name: "on" for name, value in fields.items() if value is True})
        return posted

    def add(self, key, **fields):
        form = self.form(key, **fields)
        answer = self.operator.post(self.PATH + "add/", self._posted(form))
        assert answer.status == 200 and "was added successfully" in answer.body, answer.body[-3000:]
        (pk, secret), = self.database.query("SELECT id, token_secret FROM signaling_app WHERE key = ?", (key,))
        return AppRecord(pk, key, form, secret)

    def edit(self, app, **changes):
        """Save the app's change form with ``changes``; ``rotate_token_secret=True`` rotates its secret."""
        app.fields.update({name: value for name, value in changes.items() if name != "rotate_token_secret"})
        fields = {**app.fields, **({"rotate_token_secret": True} if changes.get("rotate_token_secret") else {})}
        answer = self.operator.post(f"{self.PATH}{app.pk}/change/", self._posted(fields))
        assert answer.status == 200 and "was changed successfully" in answer.body, answer.body[-3000:]
        (app.token_secret,), = self.database.query("SELECT token_secret FROM signaling_app WHERE id = ?", (app.pk,))
        return app
