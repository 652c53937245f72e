"""How a worker starts, or refuses to: the servers' versions and the project's configuration.

Real processes, started as production starts them (deploy/worker-entrypoint.sh
under each server) and as a developer does (manage.py). What the adapted
servers do with clients: tests/test_socket_edges.py, tests/test_hostile_clients.py.
"""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from signaling.servers import TESTED
from tests.servers import ROOT, TEST_SECRET_KEY, free_port

LAUNCHERS = ["uvicorn", "daphne", "runserver"]


def start(launcher, env, timeout=60):
    """Run a worker (or ``manage.py runserver``) that is expected to stop at once; its exit code and output."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "PEERJS_", "ASGI_"))},
        "DJANGO_SECRET_KEY": TEST_SECRET_KEY,
        "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}",
        **env,
    }
    port = str(free_port())
    if launcher == "runserver":
        command = [sys.executable, "manage.py", "runserver", f"127.0.0.1:{port}"]
    else:
        command = [str(ROOT / "deploy" / "worker-entrypoint.sh")]
        env.update(ASGI_SERVER=launcher, ASGI_HOST="127.0.0.1", ASGI_PORT=port)
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    return done.returncode, done.stdout + done.stderr


def test_requirements_pin_what_the_servers_were_tested_with():
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        found = re.match(r"([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?==([^\s#]+)", line)
        if found:
            pins[found[1].lower()] = found[2]
    assert {name: pins.get(name) for name in TESTED} == TESTED


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_a_worker_refuses_versions_it_was_not_tested_with(launcher, tmp_path):
    """A distribution of another version ahead on the path: the worker stops with one line."""
    adapted, extra = ("h11", "uvicorn") if launcher == "uvicorn" else ("autobahn", "daphne")
    info = tmp_path / f"{adapted}-0.0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {adapted}\nVersion: 0.0.1\n")
    code, output = start(launcher, {"PYTHONPATH": str(tmp_path), "DJANGO_DEBUG": "1"})
    assert code != 0
    assert output.strip().splitlines() == [
        f"error: signaling.servers adapts {'uvicorn, h11, websockets' if launcher == 'uvicorn' else 'daphne, twisted, autobahn'}"
        f" at the versions it was tested with, and finds {adapted} 0.0.1 (tested: {TESTED[adapted]}):"
        f" install requirements.txt's pins (or the app's extra: pip install 'django-peerjs-signaling[{extra}]')."
    ], output


CONFIGURATION_ERRORS = {
    # Django's settings: debug off and no secret.
    "secret": ({"DJANGO_DEBUG": "0", "DJANGO_SECRET_KEY": ""}, "error: DJANGO_SECRET_KEY is required when DJANGO_DEBUG is off"),
    # A PEERJS_* value the settings refuse, and one the app's ready() refuses.
    "value": ({"PEERJS_FLOOD_LIMIT": "many"}, "error: PEERJS_FLOOD_LIMIT='many' is not an integer."),
    "combination": (
        {"PEERJS_MAX_MESSAGE_BYTES": "1000"},
        "error: PEERJS['MAX_MESSAGE_BYTES'] (PEERJS_MAX_MESSAGE_BYTES) must be at least PEERJS_MAX_FRAME_BYTES.",
    ),
}


@pytest.mark.parametrize("error", CONFIGURATION_ERRORS)
@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_a_configuration_error_stops_a_worker_with_its_message_alone(launcher, error):
    env, message = CONFIGURATION_ERRORS[error]
    code, output = start(launcher, env)
    assert code != 0
    lines = output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), output


@pytest.mark.parametrize("error", CONFIGURATION_ERRORS)
def test_a_configuration_error_stops_a_command_with_its_message_alone(error):
    env, message = CONFIGURATION_ERRORS[error]
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "PEERJS_"))}, "DJANGO_SECRET_KEY": TEST_SECRET_KEY, **env}
    done = subprocess.run(
        [sys.executable, "manage.py", "migrate", "--check"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode != 0
    lines = (done.stdout + done.stderr).strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), done.stdout + done.stderr


@pytest.mark.db
@pytest.mark.parametrize("server", ["uvicorn", "daphne"])
def test_a_worker_raises_its_limit_of_open_files_to_the_hard_limit_and_says_so(make_server, server):
    worker = make_server(server=server, nofile=(256, 512))
    limits = (Path("/proc") / str(worker.proc.pid) / "limits").read_text()
    assert re.search(r"^Max open files\s+512\s+512\s+files", limits, re.M), limits
    assert "open files: raised the limit from 256 to 512 (the hard limit)" in worker.read_log()


def test_under_daphne_a_frame_for_a_client_that_has_gone_raises_instead_of_vanishing():
    """daphne drops a send to a disconnected socket silently; the consumer must learn it (its frames go to the queue)."""
    probe = r'''
import asyncio, django, os
os.environ["DJANGO_SETTINGS_MODULE"] = "p2psite.settings"
django.setup()
from signaling.servers.daphne import ClientGone, PeerServer
server = PeerServer(application=None, endpoints=["tcp:port=0:interface=127.0.0.1"])  # made, not run
gone, open_ = object(), object()
server.connections = {gone: {"disconnected": 1.0}}
async def main():
    try:
        await server.handle_reply(gone, {"type": "websocket.send", "text": "{}"})
    except ClientGone:
        print("raised")
    await server.handle_reply(gone, {"type": "websocket.close"})  # a close to a gone client stays quiet
    await server.handle_reply(open_, {"type": "http.response.body"})  # not a socket: daphne's own silence
    print("quiet")
asyncio.run(main())
'''
    env = {**os.environ, "DJANGO_SECRET_KEY": TEST_SECRET_KEY}
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.stdout.split() == ["raised", "quiet"], result.stderr
