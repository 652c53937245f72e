"""Real server processes for the tests: daphne workers, redis-server, databases."""
import contextlib
import glob
import os
import random
import re
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
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BASE = "/peerjs/myapp"
# Long and random-looking enough for the settings' check (see p2psite/settings.py).
TEST_SECRET_KEY = "tests-only-secret-key-5f0d8e2b9c4a7163e8d2f0b1a9c6e4d7"


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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


class Database:
    """A private, migrated database for server processes: a SQLite file or a fresh PostgreSQL database."""

    def __init__(self, admin_url=None):
        self.admin_url = admin_url
        self.tmp = tempfile.mkdtemp(prefix="peerjs-db-")
        if admin_url:
            self.name = f"peerjs_test_{uuid.uuid4().hex[:10]}"
            self.url = admin_url.rsplit("/", 1)[0] + "/" + self.name
            self._psql(f'CREATE DATABASE "{self.name}"')
        else:
            self.url = f"sqlite:///{self.tmp}/peers.sqlite3"
        env = {**os.environ, "DATABASE_URL": self.url, "DJANGO_SECRET_KEY": TEST_SECRET_KEY}
        subprocess.run(
            [sys.executable, "manage.py", "migrate", "--noinput", "-v0"],
            cwd=ROOT,
            env=env,
            check=True,
        )

    def _psql(self, sql):
        import psycopg

        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(sql)

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

    def __init__(self, extra=()):
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.extra = list(extra)  # more redis-server options, e.g. output buffer limits
        self.log_path = Path(tempfile.mkdtemp(prefix="peerjs-redis-")) / "redis.log"
        self.proc = None
        self.start()

    def start(self):
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--logfile", str(self.log_path), *self.extra],
            stdout=subprocess.DEVNULL,
        )
        wait_until(self._answers, 10, f"redis-server on {self.port}")

    def _answers(self):
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def client_ports(self):
        """The local ports of the clients connected to this redis-server."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
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


NGINX = "/usr/sbin/nginx"


class Nginx:
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
        try:
            wait_until(self._answers, 15, f"nginx on port {self.port}")
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"nginx did not start:\n{self.log('stderr.log')}") from None

    @property
    def http(self):
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self):
        return f"ws://127.0.0.1:{self.port}"

    def _answers(self):
        if self.proc.poll() is not None:
            raise RuntimeError(f"nginx exited with {self.proc.returncode}:\n{self.log('stderr.log')}")
        try:
            return http_get(f"{self.http}{BASE}/", timeout=1)[0] == 200
        except OSError:
            return False

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


class Worker:
    """One server process (daphne by default) serving p2psite.asgi:application.

    It starts as production does, through deploy/worker-entrypoint.sh
    (ASGI_SERVER picks ``server``); ``tls`` is a TestCertificates whose
    server certificate the worker then serves HTTPS and WSS with.
    """

    def __init__(self, database, env=None, server="daphne", name="worker", tls=None):
        self.port = free_port()
        self.database = database
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
        self.env.update(
            ASGI_SERVER=server,
            ASGI_HOST="127.0.0.1",
            ASGI_PORT=str(self.port),
            PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        )
        if tls:
            self.env.update(ASGI_TLS_CERT=str(tls.cert), ASGI_TLS_KEY=str(tls.key))
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(command, cwd=ROOT, env=self.env, stdout=self.log, stderr=subprocess.STDOUT)
        try:
            wait_until(self._answers, 30, f"{server} on port {self.port}")
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"server did not start:\n{self.read_log()}") from None

    @property
    def ssl_context(self):
        return self.tls.client_context() if self.tls else None

    @property
    def http(self):
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def ws(self):
        return f"{'wss' if self.tls else 'ws'}://127.0.0.1:{self.port}"

    def _answers(self):
        if self.proc.poll() is not None:
            raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.read_log()}")
        try:
            with urllib.request.urlopen(f"{self.http}{BASE}/", timeout=1, context=self.ssl_context) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def get(self, path, headers=None):
        """(status, headers, body text) of a GET to this worker; error statuses are returned too."""
        return http_get(f"{self.http}{path}", headers, context=self.ssl_context)

    def read_log(self):
        if not self.log.closed:
            self.log.flush()
        return self.log_path.read_text(errors="replace")

    def signal(self, signum):
        self.proc.send_signal(signum)

    def stop(self):
        terminate(self.proc)
        self.log.close()


class RedisCluster:
    """A Redis Cluster of three masters on loopback ports (no replicas), for the session."""

    def __init__(self, masters=3):
        self.dir = Path(tempfile.mkdtemp(prefix="peerjs-redis-cluster-"))
        self.ports = [self._free_node_port() for _ in range(masters)]
        self.procs = []
        for port in self.ports:
            node_dir = self.dir / str(port)
            node_dir.mkdir()
            self.procs.append(
                subprocess.Popen(
                    ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
                     "--cluster-config-file", str(node_dir / "nodes.conf"), "--dir", str(node_dir),
                     "--save", "", "--appendonly", "no", "--logfile", str(node_dir / "redis.log")],
                    stdout=subprocess.DEVNULL,
                )
            )
        for port in self.ports:
            wait_until(lambda p=port: self._cli(p, "PING", check=False).strip() == "PONG", 30, f"redis-server on {port}")
        subprocess.run(
            ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports),
             "--cluster-replicas", "0", "--cluster-yes"],
            check=True, capture_output=True, timeout=60,
        )
        wait_until(lambda: all("cluster_state:ok" in self._cli(p, "CLUSTER", "INFO") for p in self.ports), 20, "cluster_state:ok")
        self.url = f"redis://127.0.0.1:{self.ports[0]}/0"

    @staticmethod
    def _free_node_port():
        """A free port whose cluster bus port (the port + 10000) is a port, and free too."""
        while True:
            port = free_port()
            if port + 10000 > 65535:
                continue
            with socket.socket() as bus:
                try:
                    bus.bind(("127.0.0.1", port + 10000))
                except OSError:
                    continue
            return port

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
