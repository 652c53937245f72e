"""`make run` and scripts/setup.sh, as a newcomer runs them.

`make run` serves with the server's packages only (the tests' own are in
requirements-test.txt, installed by `setup.sh --test`), and a port another
program holds stops it at once with the way to choose another.
"""
import os
import re
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from tests.servers import free_port, http_get, wait_until

ROOT = Path(__file__).resolve().parent.parent
TEST_PACKAGES = {"pytest", "pytest-django", "pytest-asyncio", "pytest-timeout", "playwright", "pyyaml"}


def pinned(path):
    """{package name (lower case): version} of a requirements file."""
    found = {}
    for line in (ROOT / path).read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            found[re.sub(r"\[.*\]", "", name).lower()] = version
    return found


def test_the_server_s_requirements_hold_no_test_package():
    server, tests = pinned("requirements.txt"), pinned("requirements-test.txt")
    assert not TEST_PACKAGES & set(server)
    assert TEST_PACKAGES <= set(tests)
    assert not set(server) & set(tests)  # each pin in one place
    # uvicorn's --ws websockets-sansio (the production worker) needs it.
    assert "websockets" in server


@pytest.fixture
def recording_venv(tmp_path):
    """A virtualenv whose pip only records what it was asked to install, and whose python is the real one."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    log = tmp_path / "pip.log"
    (venv / "bin" / "pip").write_text(f'#!/bin/sh\necho "$@" >> {log}\n')
    (venv / "bin" / "python").write_text(f'#!/bin/sh\nexec {ROOT / ".venv" / "bin" / "python"} "$@"\n')
    for name in ("pip", "python"):
        (venv / "bin" / name).chmod(0o755)
    return venv, log


def setup(venv, *args):
    result = subprocess.run(
        [str(ROOT / "scripts" / "setup.sh"), *args], env={**os.environ, "VENV": str(venv)},
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result


def installed(log):
    """The requirements files pip was asked to install, in order (and the log emptied)."""
    if not log.exists():
        return []
    files = re.findall(r"-r (\S+)", log.read_text())
    log.unlink()
    return files


def test_setup_installs_the_test_packages_only_for_the_tests(recording_venv):
    venv, log = recording_venv
    setup(venv)
    assert installed(log) == ["requirements.txt"]
    # The tests' file on top, without the server's again; then nothing is left to do.
    setup(venv, "--test")
    assert installed(log) == ["requirements-test.txt"]
    setup(venv, "--test")
    setup(venv)
    assert installed(log) == []
    # A changed file is installed again, and only that one.
    (venv / ".requirements-test.sha").write_text("an older file's\n")
    setup(venv, "--test")
    assert installed(log) == ["requirements-test.txt"]


def make_run(port):
    return subprocess.Popen(
        ["make", "run", f"PORT={port}"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,  # runserver's autoreloader has a child: the test stops the group
    )


def test_make_run_stops_at_once_when_the_port_is_taken():
    with socket.socket() as holder:
        holder.bind(("0.0.0.0", 0))
        holder.listen()
        port = holder.getsockname()[1]
        proc = make_run(port)
        try:
            _, err = proc.communicate(timeout=20)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode != 0
    assert f"cannot listen on 0.0.0.0:{port}: Address already in use" in err
    assert f"make run PORT={port + 1}" in err


def test_make_run_serves_on_the_port_it_is_given():
    port = free_port()
    proc = make_run(port)
    try:
        def serves():
            assert proc.poll() is None, proc.communicate()
            try:
                return http_get(f"http://127.0.0.1:{port}/", timeout=2)[0] == 200
            except OSError:
                return False

        wait_until(serves, 90, f"make run PORT={port}", interval=0.2)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.communicate(timeout=30)
