"""Real server processes for the tests: daphne workers, redis-server, databases."""
import atexit
import contextlib
import glob
import os
import random
import re
import resource
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
import weakref
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BASE = "/peerjs/myapp"
# Long and random-looking enough for the settings' check (see p2psite/settings.py).
TEST_SECRET_KEY = "tests-only-secret-key-5f0d8e2b9c4a7163e8d2f0b1a9c6e4d7"


def _port_range():
    """The ports this test process gives the servers it starts.

    Below the kernel's ephemeral range: every outgoing connection takes its
    source port from that range, and on a busy machine one took a port chosen
    there before the server that was to listen on it had started. Split among
    pytest-xdist's processes, so that no two choose the same port; each
    starts at a random place in its share, so that two suites side by side
    rarely meet.
    """
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    floor = 10_000
    processes = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    index = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
    size = (low - floor) // max(processes, 1)
    if size < 200:  # an ephemeral range that starts low: the kernel's choice it is
        return None
    start = floor + index * size
    ports = list(range(start, start + size))
    shift = random.randrange(size)
    return iter(ports[shift:] + ports[:shift] + ports[shift:] + ports[:shift])


_PORTS = _port_range()


def _bindable(port, kind=socket.SOCK_STREAM):
    with socket.socket(socket.AF_INET, kind) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(count=1):
    """A free port p (with p+1 .. p+count-1 free too) for a server a test starts."""
    if _PORTS is None:
        while True:
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                port = sock.getsockname()[1]
            if all(_bindable(port + n) for n in range(1, count)):
                return port
    for port in _PORTS:
        if all(_bindable(port + n) for n in range(count)):
            for _ in range(count - 1):
                next(_PORTS, None)  # the others are taken too
            return port
    raise RuntimeError("no free port left in this test process's range")


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None  # the redirect itself is the answer a test looks at


def http_get(url, headers=None, context=None, timeout=10):
    """(status, headers, body text) of a GET; redirects and error statuses are returned, not followed or raised."""
    opener = urllib.request.build_opener(_NoRedirects, urllib.request.HTTPSHandler(context=context))
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with opener.open(request, timeout=timeout) as response:
            return response.status, response.headers, response.read().decode()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.headers, error.read().decode()


def terminate(proc, timeout=15):
    """SIGTERM, and SIGKILL if it is not gone within ``timeout`` s (a drain takes a few)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_until(predicate, timeout, what, interval=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


def _admin_sql(admin_url, sql):
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql)


def _drop_quietly(admin_url, name):
    """Drop a database at exit, if its server is still there (a private one is gone by then)."""
    with contextlib.suppress(Exception):
        _admin_sql(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _migrate(url):
    env = {**os.environ, "DATABASE_URL": url, "DJANGO_SECRET_KEY": TEST_SECRET_KEY}
    subprocess.run([sys.executable, "manage.py", "migrate", "--noinput", "-v0"], cwd=ROOT, env=env, check=True)


class Database:
    """A private, migrated database for server processes: a SQLite file or a fresh PostgreSQL database.

    Made from a template migrated once per test process (a file copy, or
    PostgreSQL's ``CREATE DATABASE ... TEMPLATE``): running the migrations
    for every database cost a second each.
    """

    _templates = {}  # admin URL (None: SQLite) -> the migrated template (a file path, or a database name)

    def __init__(self, admin_url=None):
        # The suite's database server (scripts/test.sh's PostgreSQL pass), unless one is named.
        admin_url = admin_url or os.environ.get("PEERJS_TEST_DATABASE_URL") or None
        self.admin_url = admin_url
        self.tmp = tempfile.mkdtemp(prefix="peerjs-db-")
        template = self._template(admin_url)
        if admin_url:
            self.name = f"peerjs_test_{uuid.uuid4().hex[:10]}"
            self.url = admin_url.rsplit("/", 1)[0] + "/" + self.name
            self._psql(f'CREATE DATABASE "{self.name}" TEMPLATE "{template}"')
        else:
            self.url = f"sqlite:///{self.tmp}/peers.sqlite3"
            shutil.copyfile(template, f"{self.tmp}/peers.sqlite3")

    @classmethod
    def _template(cls, admin_url):
        template = cls._templates.get(admin_url)
        if template is not None:
            return template
        if admin_url:
            template = f"peerjs_template_{uuid.uuid4().hex[:10]}"
            url = admin_url.rsplit("/", 1)[0] + "/" + template
            _admin_sql(admin_url, f'CREATE DATABASE "{template}"')
            atexit.register(_drop_quietly, admin_url, template)
        else:
            directory = tempfile.mkdtemp(prefix="peerjs-db-template-")
            atexit.register(shutil.rmtree, directory, ignore_errors=True)
            template = f"{directory}/template.sqlite3"
            url = f"sqlite:///{template}"
        _migrate(url)
        if not admin_url:
            # One file, no write-ahead log beside it: what a copy must hold.
            import sqlite3

            with contextlib.closing(sqlite3.connect(template)) as conn:
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                conn.execute("PRAGMA journal_mode=DELETE")
        cls._templates[admin_url] = template
        return template

    def _psql(self, sql):
        _admin_sql(self.admin_url, sql)

    def peer_row(self, peer_id, key="peerjs"):
        """The registry row id of a connected peer (what the admin's actions select)."""
        rows = self.query("SELECT id FROM signaling_peer WHERE key = ? AND peer_id = ?", (key, peer_id))
        assert len(rows) == 1, f"{peer_id} is not registered"
        return str(rows[0][0])

    def query(self, sql, params=()):
        """Rows of a query against this database, from the test process."""
        if self.admin_url:
            import psycopg

            with psycopg.connect(self.url) as conn:
                cursor = conn.execute(sql.replace("?", "%s"), params)
                return cursor.fetchall() if cursor.description else []
        import sqlite3

        with contextlib.closing(sqlite3.connect(self.url.removeprefix("sqlite:///"), timeout=20)) as conn:
            rows = conn.execute(sql, params).fetchall()
            conn.commit()
            return rows

    def drop(self):
        if self.admin_url:
            self._psql(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        shutil.rmtree(self.tmp, ignore_errors=True)


class SharedTestDatabase:
    """The test process's own database (pytest-django's), for server processes to share.

    For tests that check in-process what a worker wrote (or the other way
    round): the worker gets this URL, the test its ORM. pytest-django made
    and migrated it, and drops it; use it with ``django_db(transaction=True)``
    so that each side sees what the other committed.
    """

    def __init__(self, settings_dict):
        self.tmp = tempfile.mkdtemp(prefix="peerjs-db-")
        if settings_dict["ENGINE"].endswith("sqlite3"):
            self.url = f"sqlite:///{settings_dict['NAME']}"
        else:
            quote = urllib.parse.quote
            password = f":{quote(settings_dict['PASSWORD'])}" if settings_dict.get("PASSWORD") else ""
            self.url = (
                f"postgres://{quote(settings_dict['USER'])}{password}@{settings_dict['HOST'] or '127.0.0.1'}"
                f":{settings_dict['PORT'] or 5432}/{settings_dict['NAME']}"
            )

    def drop(self):
        shutil.rmtree(self.tmp, ignore_errors=True)


class Certificates:
    """A throwaway certificate authority, and a server certificate it signed
    for localhost and 127.0.0.1, made with the openssl command.

    ``cert``/``key`` are what a server is given; clients trust ``ca`` (see
    :meth:`client_context`), as a browser trusts a CA that mkcert installed.
    """

    def __init__(self, directory):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ca, ca_key = self.dir / "ca.pem", self.dir / "ca-key.pem"
        self.cert, self.key = self.dir / "cert.pem", self.dir / "key.pem"
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        self._openssl(
            "req", "-x509", *ec, "-keyout", ca_key, "-out", self.ca, "-days", "2",
            "-subj", "/CN=PeerServer tests CA",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        )
        request = self.dir / "server.csr"
        self._openssl("req", *ec, "-keyout", self.key, "-out", request, "-subj", "/CN=localhost")
        extensions = self.dir / "server.ext"
        extensions.write_text(
            "subjectAltName=DNS:localhost,IP:127.0.0.1\n"
            "basicConstraints=CA:FALSE\n"
            "keyUsage=critical,digitalSignature\n"
            "extendedKeyUsage=serverAuth\n"
        )
        self._openssl(
            "x509", "-req", "-in", request, "-CA", self.ca, "-CAkey", ca_key, "-CAcreateserial",
            "-out", self.cert, "-days", "2", "-extfile", extensions,
        )
        # nginx's workers run as "nobody" but read certificates as root at
        # start-up; the key stays private to root.
        self.key.chmod(0o600)

    def _openssl(self, *args):
        result = subprocess.run(["openssl", *map(str, args)], capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            raise RuntimeError(f"openssl {args[0]} failed:\n{result.stderr}")

    def client_context(self):
        """An SSL context that trusts this CA only (and checks host names)."""
        return ssl.create_default_context(cafile=str(self.ca))


class PrivatePostgres:
    """A PostgreSQL server of the tests' own, on a free port; stop and start it to simulate outages.

    The machine's shared server (127.0.0.1:5432) must never be stopped, so an
    outage test needs its own. One per test session is enough (initdb takes
    about a second): make databases on it with ``Database(pg.admin_url)``.
    The server runs as the ``postgres`` user, as PostgreSQL requires when the
    tests run as root.
    """

    def __init__(self):
        initdbs = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_version_key)
        if not initdbs:
            raise RuntimeError("PostgreSQL's server binaries are missing: run ./scripts/setup.sh --test")
        self.bin = Path(initdbs[-1]).parent
        self.port = free_port()
        self.admin_url = f"postgres://postgres@127.0.0.1:{self.port}/postgres"
        self.dir = tempfile.mkdtemp(prefix="peerjs-pg-")
        shutil.chown(self.dir, "postgres")
        self._as_postgres("initdb", "-D", f"{self.dir}/data", "-A", "trust", "-U", "postgres", "--no-sync")
        self.start()

    def _as_postgres(self, program, *args):
        result = subprocess.run(
            [str(self.bin / program), *args],
            user="postgres",
            cwd=self.dir,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if result.returncode != 0:
            raise RuntimeError(f"{program} failed:\n{result.stdout}{result.stderr}")

    def start(self):
        # The socket directory is private too, so nothing clashes with the
        # machine's server or with another test session.
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.dir} -c fsync=off"
        self._as_postgres("pg_ctl", "-D", f"{self.dir}/data", "-o", options, "-l", f"{self.dir}/log", "-w", "start")

    def stop(self):
        self._as_postgres("pg_ctl", "-D", f"{self.dir}/data", "-m", "fast", "-w", "stop")

    def destroy(self):
        with contextlib.suppress(RuntimeError):
            self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def _version_key(path):
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path)]


class RedisServer:
    """A throwaway redis-server on a free port; stop and start it to simulate outages."""

    def __init__(self, extra=(), tls=None):
        self.port = free_port()
        self.tls = tls  # a Certificates: TLS only (rediss://), no plain port
        self.url = f"{'rediss' if tls else 'redis'}://127.0.0.1:{self.port}/0"
        self.extra = list(extra)  # more redis-server options, e.g. output buffer limits
        if tls:
            self.extra += [
                "--tls-port", str(self.port), "--tls-cert-file", str(tls.cert), "--tls-key-file", str(tls.key),
                "--tls-ca-cert-file", str(tls.ca), "--tls-auth-clients", "no",
            ]
        self.log_path = Path(tempfile.mkdtemp(prefix="peerjs-redis-")) / "redis.log"
        self.proc = None
        self.start()

    def start(self):
        plain_port = "0" if self.tls else str(self.port)
        self.proc = subprocess.Popen(
            ["redis-server", "--port", plain_port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--logfile", str(self.log_path), *self.extra],
            stdout=subprocess.DEVNULL,
        )
        wait_until(self._answers, 10, f"redis-server on {self.port}")

    def _connect(self, timeout):
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=timeout)
        if self.tls:
            return self.tls.client_context().wrap_socket(sock, server_hostname="127.0.0.1")
        return sock

    def _answers(self):
        try:
            with self._connect(0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def cli(self, *command):
        """``redis-cli`` on this server: its answer, stripped."""
        tls = ["--tls", "--cacert", str(self.tls.ca)] if self.tls else []
        result = subprocess.run(
            ["redis-cli", "-p", str(self.port), *tls, *command], capture_output=True, text=True, timeout=10
        )
        return result.stdout.strip()

    def client_ports(self):
        """The local ports of the clients connected to this redis-server."""
        with self._connect(2) as sock:
            sock.sendall(b"CLIENT LIST\r\n")
            header = b""
            while not header.endswith(b"\r\n"):
                header += sock.recv(1)
            size = int(header[1:-2]) + 2
            data = b""
            while len(data) < size:
                data += sock.recv(size - len(data))
        return {int(port) for port in re.findall(rb" addr=[^ ]*:(\d+) ", data)}

    def ports_of(self, pid):
        """The local ports of process ``pid``'s connections to this redis-server."""
        inodes = set()
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
        ports = set()
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            fields = line.split()
            local_port, remote_port, inode = int(fields[1].split(":")[1], 16), int(fields[2].split(":")[1], 16), fields[9]
            if remote_port == self.port and inode in inodes:
                ports.add(local_port)
        return ports

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


class Forwarder:
    """A TCP path to 127.0.0.1:``target`` through tests/forwarder.py, a process of its own.

    Give one worker its database or Redis through it (:meth:`through`), and
    :meth:`kill` (SIGKILL) makes an outage that worker alone sees: its
    connections break at once and new ones are refused. :meth:`start` brings
    the path back on the same port.
    """

    def __init__(self, target):
        self.target = target
        self.port = free_port()
        self.proc = None
        self.start()

    def start(self):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.forwarder", str(self.port), str(self.target)],
            cwd=ROOT, stdout=subprocess.PIPE, text=True,
        )
        said = self.proc.stdout.readline().strip()  # "listening", or nothing if it died
        if said != "listening":
            self.kill()
            raise RuntimeError(f"the forwarder to port {self.target} did not start (exit {self.proc.returncode})")

    def through(self, url):
        """``url`` (of the server on ``target``) by way of this forwarder."""
        assert f":{self.target}/" in url, url
        return url.replace(f":{self.target}/", f":{self.port}/")

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.proc.stdout.close()


class LoopbackServer:
    """A server the tests start on 127.0.0.1:``self.port``: its addresses, and whether it answers yet.

    A subclass sets ``port`` and ``proc`` (its process), and says what its
    log holds (``output``) for the error when it exits before answering.
    """

    tls = None  # a Certificates when it speaks TLS

    @property
    def ssl_context(self):
        return self.tls.client_context() if self.tls else None

    @property
    def http(self):
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def ws(self):
        return f"{'wss' if self.tls else 'ws'}://127.0.0.1:{self.port}"

    def output(self):
        raise NotImplementedError

    def answers(self, path):
        """Whether a GET of ``path`` gets 200 now; RuntimeError if the process has exited."""
        if self.proc.poll() is not None:
            raise RuntimeError(f"exited with {self.proc.returncode}")
        try:
            return http_get(f"{self.http}{path}", context=self.ssl_context, timeout=2)[0] == 200
        except OSError:
            return False

    def wait_answering(self, path, timeout, what):
        """Return once ``path`` answers 200; else stop the server and raise RuntimeError with its log."""
        try:
            wait_until(lambda: self.answers(path), timeout, what)
        except (TimeoutError, RuntimeError) as error:
            output = self.output()
            self.stop()
            raise RuntimeError(f"{what} did not start ({error}):\n{output}") from None


NGINX = "/usr/sbin/nginx"


class Nginx(LoopbackServer):
    """Debian's nginx with the deployment's template in front of ``workers``.

    Rendered as `make cluster` renders it (scripts/cluster.sh --render-nginx),
    with the upstream list docker-compose.yml gives: each worker taken out for
    5 s after a failed request. Plain HTTP on ``port``.
    """

    def __init__(self, workers):
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="peerjs-nginx-"))
        upstreams = " ".join(f"server 127.0.0.1:{worker.port} max_fails=1 fail_timeout=5s;" for worker in workers)
        env = {name: value for name, value in os.environ.items() if name not in {"TLS_CERT", "TLS_KEY", "ACCESS_LOG"}}
        subprocess.run(
            [str(ROOT / "scripts" / "cluster.sh"), "--render-nginx", str(self.dir)],
            env={**env, "PORT": str(self.port), "UPSTREAMS": upstreams},
            check=True, timeout=30,
        )
        self.stderr = open(self.dir / "logs" / "stderr.log", "wb")
        self.proc = subprocess.Popen(
            [NGINX, "-e", "stderr", "-p", str(self.dir), "-c", str(self.dir / "nginx.conf"), "-g", "daemon off;"],
            stdout=subprocess.DEVNULL, stderr=self.stderr,
        )
        self.wait_answering(f"{BASE}/", 15, f"nginx on port {self.port}")

    def output(self):
        return self.log("stderr.log")

    def get(self, path, headers=None):
        """(status, headers, body text) of a GET through nginx; error statuses are returned too."""
        return http_get(f"{self.http}{path}", headers)

    def log(self, name):
        """One of nginx's logs: access.log, error.log, stderr.log."""
        return (self.dir / "logs" / name).read_text(errors="replace")

    def stop(self):
        terminate(self.proc)
        self.stderr.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def free_udp_and_tcp_port():
    """A port free for both UDP and TCP on loopback (a TURN server listens on both)."""
    while True:
        port = free_port()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            try:
                udp.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port


class TurnServer:
    """A real coturn on loopback, checking credentials in the TURN REST API scheme.

    ``--use-auth-secret --static-auth-secret=SECRET``: it accepts a username
    ``EXPIRY:NAME`` whose credential is base64(HMAC-SHA1(SECRET, username))
    until EXPIRY, as signaling.turn makes them. Relays on 127.0.0.1 and
    ``--allow-loopback-peers``, since both peers are on this machine.
    """

    def __init__(self, secret, realm="test"):
        self.secret = secret
        self.port = free_udp_and_tcp_port()
        self.dir = Path(tempfile.mkdtemp(prefix="peerjs-turn-"))
        # A relay port range of its own, away from the ephemeral ports other
        # servers of the tests bind to.
        low = random.randrange(40000, 50000, 100)
        self.relay_ports = range(low, low + 100)  # where its relayed candidates live
        self.log_path = self.dir / "turnserver.log"
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [
                "turnserver", "-n", "--listening-ip=127.0.0.1", "--relay-ip=127.0.0.1",
                f"--listening-port={self.port}", f"--min-port={low}", f"--max-port={low + 99}",
                "--use-auth-secret", f"--static-auth-secret={secret}", f"--realm={realm}",
                "--allow-loopback-peers", "--no-cli", "--no-tls", "--no-dtls",
                "--log-file=stdout", "--simple-log",
                f"--pidfile={self.dir / 'turnserver.pid'}", f"--db={self.dir / 'turndb'}",
            ],
            stdout=self.log, stderr=subprocess.STDOUT,
        )
        wait_until(self._answers, 15, f"turnserver on {self.port}")

    def _answers(self):
        if self.proc.poll() is not None:
            raise RuntimeError(f"turnserver exited with {self.proc.returncode}:\n{self.read_log()}")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def url(self, transport="udp"):
        return f"turn:127.0.0.1:{self.port}?transport={transport}"

    def allocate(self, username, credential, tcp=False):
        """Run turnutils_uclient: two clients allocate relays and talk through them. Exit 0 means it worked."""
        command = ["turnutils_uclient", "-n", "1", "-u", username, "-w", credential, "-p", str(self.port), "-y"]
        if tcp:
            command.append("-t")
        return subprocess.run([*command, "127.0.0.1"], capture_output=True, text=True, timeout=60)

    def read_log(self):
        if not self.log.closed:
            self.log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self):
        terminate(self.proc)
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


class Worker(LoopbackServer):
    """One server process (daphne by default) serving p2psite.asgi:application, on ``database`` (default: its own).

    It starts as production does, through deploy/worker-entrypoint.sh
    (ASGI_SERVER picks ``server``); ``tls`` is a TestCertificates whose
    server certificate the worker then serves HTTPS and WSS with. It listens
    on ``host``; None leaves ASGI_HOST unset, as production does: every
    address of both families (reach it over 127.0.0.1 or ::1). With ``hosts``
    (a file in /etc/hosts' format) it runs in a mount namespace of its own
    whose /etc/hosts is that file: its names resolve as the test writes them
    there, whenever it rewrites the file (in place), and nobody else's do.
    ``nofile``: its (soft, hard) limits of open files.
    """

    running = weakref.WeakSet()  # every worker not stopped yet: tests/conftest.py shows their logs on failure

    def __init__(self, database=None, env=None, server="daphne", name="worker", tls=None, host="127.0.0.1", hosts=None,
                 nofile=None):
        self.port = free_port()
        # None: a database of its own, dropped when it stops. Workers without
        # Redis must not share one: each would sweep the other's queue.
        self.owns_database = database is None
        self.database = database = database or Database()
        self.tls = tls
        self.log_path = Path(database.tmp) / f"{name}-{self.port}.log"
        self.env = {
            **os.environ,
            "DJANGO_SECRET_KEY": TEST_SECRET_KEY,
            "DJANGO_DEBUG": "0",
            "DATABASE_URL": database.url,
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        # Started as production starts it: deploy/worker-entrypoint.sh, with
        # the servers of this virtualenv on PATH, as the image has them.
        command = [str(ROOT / "deploy" / "worker-entrypoint.sh")]
        if hosts is not None:
            mount = 'mount --bind "$0" /etc/hosts && exec "$1"'
            command = ["unshare", "--mount", "--propagation", "private", "sh", "-c", mount, str(hosts), *command]
        self.env.update(
            ASGI_SERVER=server,
            ASGI_PORT=str(self.port),
            PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        )
        if host is None:
            self.env.pop("ASGI_HOST", None)
        else:
            self.env["ASGI_HOST"] = host
        if tls:
            self.env.update(ASGI_TLS_CERT=str(tls.cert), ASGI_TLS_KEY=str(tls.key))
        self.log = open(self.log_path, "wb")
        Worker.running.add(self)
        # nofile: (soft, hard) limits of open files to start it with, as a machine might.
        limit = (lambda: resource.setrlimit(resource.RLIMIT_NOFILE, nofile)) if nofile else None
        self.proc = subprocess.Popen(
            command, cwd=ROOT, env=self.env, stdout=self.log, stderr=subprocess.STDOUT, preexec_fn=limit,
        )
        # Generous: on a busy machine (the suite's parallel processes) a start can take a while.
        self.wait_answering(f"{BASE}/", 60, f"{server} on port {self.port}")

    def output(self):
        return self.read_log()

    def get(self, path, headers=None):
        """(status, headers, body text) of a GET to this worker; error statuses are returned too."""
        return http_get(f"{self.http}{path}", headers, context=self.ssl_context)

    def read_log(self, since=0):
        """The worker's log, from offset ``since`` (a :meth:`log_mark`) on: a shared worker's log holds other tests' lines."""
        if not self.log.closed:
            self.log.flush()
        with open(self.log_path, "rb") as log:
            log.seek(since)
            return log.read().decode(errors="replace")

    def log_mark(self):
        """Where the log ends now: read_log(since=mark) is what the worker logged after this."""
        if not self.log.closed:
            self.log.flush()
        return self.log_path.stat().st_size

    def signal(self, signum):
        self.proc.send_signal(signum)

    def stop(self):
        terminate(self.proc)
        self.log.close()
        Worker.running.discard(self)
        if self.owns_database:
            self.database.drop()
            self.owns_database = False


class RedisCluster:
    """A Redis Cluster of three masters on loopback ports (no replicas), for the session."""

    def __init__(self, masters=3):
        self.dir = Path(tempfile.mkdtemp(prefix="peerjs-redis-cluster-"))
        self.ports = [free_port() for _ in range(masters)]
        self.procs = []
        for port in self.ports:
            node_dir = self.dir / str(port)
            node_dir.mkdir()
            # The bus port named, from this process's range too: by default
            # it is the port + 10000, in the ephemeral range.
            self.procs.append(
                subprocess.Popen(
                    ["redis-server", "--port", str(port), "--cluster-port", str(free_port()),
                     "--bind", "127.0.0.1", "--cluster-enabled", "yes",
                     "--cluster-config-file", str(node_dir / "nodes.conf"), "--dir", str(node_dir),
                     "--save", "", "--appendonly", "no", "--logfile", str(node_dir / "redis.log")],
                    stdout=subprocess.DEVNULL,
                )
            )
        for port, proc in zip(self.ports, self.procs):
            def up(p=port, proc=proc):
                if proc.poll() is not None:
                    raise RuntimeError(f"redis-server on {p} exited: {(self.dir / str(p) / 'redis.log').read_text()[-2000:]}")
                return self._cli(p, "PING", check=False).strip() == "PONG"
            wait_until(up, 30, f"redis-server on {port}")
        subprocess.run(
            ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports),
             "--cluster-replicas", "0", "--cluster-yes"],
            check=True, capture_output=True, timeout=60,
        )
        wait_until(lambda: all("cluster_state:ok" in self._cli(p, "CLUSTER", "INFO") for p in self.ports), 20, "cluster_state:ok")
        self.url = f"redis://127.0.0.1:{self.ports[0]}/0"

    def _cli(self, port, *command, check=True):
        result = subprocess.run(["redis-cli", "-p", str(port), *command], capture_output=True, text=True, timeout=10)
        if check and result.returncode:
            raise RuntimeError(result.stderr)
        return result.stdout

    def port_of_slot(self, slot):
        """The port of the master that owns ``slot``."""
        for port in self.ports:
            for line in self._cli(port, "CLUSTER", "NODES").splitlines():
                fields = line.split()
                if "myself" not in fields[2]:
                    continue
                for ranges in fields[8:]:
                    first, _, last = ranges.partition("-")
                    if int(first) <= slot <= int(last or first):
                        return port
        raise AssertionError(f"no master owns slot {slot}")

    def shard_of(self, channel):
        """The port of the master whose shard holds the sharded pub/sub channel ``channel``."""
        return self.port_of_slot(int(self._cli(self.ports[0], "CLUSTER", "KEYSLOT", channel)))

    def subscribers(self, port, channel):
        """How many clients of master ``port`` are subscribed to the shard channel ``channel``."""
        lines = self._cli(port, "PUBSUB", "SHARDNUMSUB", channel).split()
        return int(lines[1])

    def stop(self):
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


class RedisSentinelSet:
    """A master, a replica and one sentinel (quorum 1) on loopback ports: :meth:`kill_master`
    SIGKILLs the master of the moment, and the sentinel promotes the replica (about 4 s)."""

    NAME = "peerserver"  # the master set's

    def __init__(self, password=None, tls=None):
        self.dir = Path(tempfile.mkdtemp(prefix="peerjs-redis-sentinel-"))
        # password: every server's, the sentinel's too (Bitnami's chart with auth.sentinel)
        self.auth = ["--requirepass", password, "--masterauth", password] if password else []
        self.password = password
        # tls: a Certificates; every server and the sentinel speak TLS only, to
        # their clients and to each other (Bitnami's chart with tls.enabled).
        self.tls = tls
        self.tls_options = [
            ("tls-cert-file", tls.cert), ("tls-key-file", tls.key), ("tls-ca-cert-file", tls.ca),
            ("tls-auth-clients", "no"), ("tls-replication", "yes"),
        ] if tls else []
        self.procs = {}  # port -> the redis-server (master or replica) on it
        self.killed = []  # ports of servers killed since
        master, replica = free_port(), free_port()
        self._start(master)
        self._start(replica, "--replicaof", "127.0.0.1", str(master))
        self.sentinel_port = free_port()
        config = self.dir / "sentinel.conf"  # the sentinel rewrites it: this set's own
        ports = f"port 0\ntls-port {self.sentinel_port}\n" if tls else f"port {self.sentinel_port}\n"
        config.write_text(
            f"{ports}bind 127.0.0.1\ndir {self.dir}\nlogfile {self.dir / 'sentinel.log'}\n"
            + "".join(f"{name} {value}\n" for name, value in self.tls_options)
            + f"sentinel monitor {self.NAME} 127.0.0.1 {master} 1\n"
            f"sentinel down-after-milliseconds {self.NAME} 1000\n"
            f"sentinel failover-timeout {self.NAME} 3000\n"
            + (f"requirepass {password}\nsentinel auth-pass {self.NAME} {password}\n" if password else "")
        )
        self.sentinel = subprocess.Popen(["redis-server", str(config), "--sentinel"], stdout=subprocess.DEVNULL)
        self.sentinels = f"127.0.0.1:{self.sentinel_port}"  # PEERJS_REDIS_SENTINELS
        # REDIS_URL beside them: the master's database (and password); its host does not
        # resolve, so that nothing reaches Redis but through the sentinels.
        credentials = f":{urllib.parse.quote(password, safe='')}@" if password else ""
        self.url = f"{'rediss' if tls else 'redis'}://{credentials}master.invalid:6379/0"
        wait_until(lambda: self._replica_ready(master), 30, "the replica in sync and known to the sentinel")

    def _start(self, port, *extra):
        ports = ["--port", "0", "--tls-port", str(port)] if self.tls else ["--port", str(port)]
        tls = [str(part) for name, value in self.tls_options for part in (f"--{name}", value)]
        self.procs[port] = subprocess.Popen(
            ["redis-server", *ports, *tls, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.dir), "--logfile", str(self.dir / f"redis-{port}.log"),
             "--repl-diskless-sync-delay", "0", *self.auth, *extra],  # the replica syncs at once, not after 5 s
            stdout=subprocess.DEVNULL,
        )
        wait_until(lambda: self.cli(port, "PING", check=False).strip() == "PONG", 10, f"redis-server on {port}")

    def cli(self, port, *command, check=True):
        env = {**os.environ, "REDISCLI_AUTH": self.password} if self.password else None
        tls = ["--tls", "--cacert", str(self.tls.ca)] if self.tls else []
        result = subprocess.run(
            ["redis-cli", "-p", str(port), *tls, *command], capture_output=True, text=True, timeout=10, env=env
        )
        if check and result.returncode:
            raise RuntimeError(result.stderr)
        return result.stdout

    def master_port(self):
        """The master's port, as the sentinel says now."""
        return int(self.cli(self.sentinel_port, "SENTINEL", "get-master-addr-by-name", self.NAME).split()[1])

    def _replica_ready(self, master):
        replication = self.cli(master, "INFO", "replication", check=False)
        known = self.cli(self.sentinel_port, "SENTINEL", "REPLICAS", self.NAME, check=False)
        # Without the replica in its list (learnt from the master's INFO) the sentinel has nobody to promote.
        return "state=online" in replication and "slave" in known.split() and "s_down" not in known

    def kill_master(self):
        """SIGKILL the master of the moment; its port."""
        port = self.master_port()
        self.killed.append(port)
        proc = self.procs.pop(port)
        proc.kill()
        proc.wait()
        return port

    def replace_killed(self):
        """Start what was killed again, as a replica of the master of the moment, so that the set can fail over once more."""
        master = self.master_port()
        while self.killed:
            self._start(self.killed.pop(), "--replicaof", "127.0.0.1", str(master))
        wait_until(lambda: self._replica_ready(master), 30, "the replica in sync and known to the sentinel")

    def stop(self):
        for proc in [*self.procs.values(), self.sentinel]:
            if proc.poll() is None:
                proc.terminate()
        for proc in [*self.procs.values(), self.sentinel]:
            proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)
