"""Real server processes for the tests: daphne workers, redis-server, databases."""
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BASE = "/peerjs/myapp"


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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
        env = {**os.environ, "DATABASE_URL": self.url, "DJANGO_SECRET_KEY": "t"}
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


class RedisServer:
    """A throwaway redis-server on a free port; stop and start it to simulate outages."""

    def __init__(self):
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc = None
        self.start()

    def start(self):
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
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


class Worker:
    """One server process (daphne by default) serving p2psite.asgi:application."""

    def __init__(self, database, env=None, server="daphne", name="worker"):
        self.port = free_port()
        self.database = database
        self.log_path = Path(database.tmp) / f"{name}-{self.port}.log"
        self.env = {
            **os.environ,
            "DJANGO_SECRET_KEY": "tests-only-secret",
            "DJANGO_DEBUG": "0",
            "DATABASE_URL": database.url,
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        if server == "daphne":
            command = [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(self.port), "p2psite.asgi:application"]
        else:
            command = [
                sys.executable, "-m", "uvicorn", "p2psite.asgi:application",
                "--host", "127.0.0.1", "--port", str(self.port), "--lifespan", "on",
                # as deploy/worker-entrypoint.sh runs it
                "--ws", "websockets-sansio", "--ws-per-message-deflate", "false", "--no-access-log", "--log-level", "warning",
            ]
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(command, cwd=ROOT, env=self.env, stdout=self.log, stderr=subprocess.STDOUT)
        try:
            wait_until(self._answers, 30, f"{server} on port {self.port}")
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"server did not start:\n{self.read_log()}") from None

    @property
    def http(self):
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self):
        return f"ws://127.0.0.1:{self.port}"

    def _answers(self):
        if self.proc.poll() is not None:
            raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.read_log()}")
        try:
            with urllib.request.urlopen(f"{self.http}{BASE}/", timeout=1) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def read_log(self):
        if not self.log.closed:
            self.log.flush()
        return self.log_path.read_text(errors="replace")

    def signal(self, signum):
        self.proc.send_signal(signum)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
