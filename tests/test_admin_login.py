"""Admin login throttling (django-axes), over real HTTP against real workers.

Each client is a real connection from its own loopback address (127.0.0.x),
or, behind a proxy, a request whose X-Forwarded-For names it.
"""
import subprocess
import sys
import uuid

import pytest

from tests.admin_http import AdminSession, create_superuser
from tests.servers import ROOT

pytestmark = pytest.mark.db

PASSWORD = "the-right-password"
LIMIT = 5  # DJANGO_LOGIN_FAILURE_LIMIT's default
LOCKED = "Account locked: too many login attempts"


def fail_until_locked(session, username):
    """Wrong passwords up to the limit: each refused as a wrong password, the last one locks."""
    for attempt in range(1, LIMIT + 1):
        answer = session.login(username, f"wrong-{uuid.uuid4().hex[:6]}")
        if attempt < LIMIT:
            assert answer.status == 200 and "Please enter the correct username and password" in answer.body, attempt
    assert answer.status == 429 and LOCKED in answer.body


def test_after_the_limit_even_the_right_password_is_refused_from_that_address_only(server):
    username = create_superuser(server, PASSWORD)
    attacker = AdminSession(server, source="127.0.0.2")
    fail_until_locked(attacker, username)

    answer = attacker.login(username, PASSWORD)
    assert answer.status == 429 and LOCKED in answer.body
    assert not attacker.logged_in

    # The operator at another machine is not locked out by the attacker.
    operator = AdminSession(server, source="127.0.0.3")
    assert operator.login(username, PASSWORD).status == 200 and operator.logged_in

    # An admin lifts the lockout; the right password works again from there.
    subprocess.run(
        [sys.executable, "manage.py", "axes_reset_username", username],
        cwd=ROOT, env=server.env, check=True, capture_output=True,
    )
    assert attacker.login(username, PASSWORD).status == 200 and attacker.logged_in


def test_without_a_proxy_a_forged_forwarded_for_gives_no_fresh_tries(server):
    username = create_superuser(server, PASSWORD)
    forger = AdminSession(server, source="127.0.0.4")
    answers = []
    for n in range(LIMIT):  # a new "address" for each try
        forger.headers = {"X-Forwarded-For": f"198.51.100.{n + 1}"}
        answers.append(forger.login(username, "wrong").status)
    assert answers == [200] * (LIMIT - 1) + [429]
    forger.headers = {"X-Forwarded-For": "198.51.100.99"}
    assert forger.login(username, PASSWORD).status == 429


def test_behind_the_proxy_the_address_it_added_is_the_one_counted(make_server):
    worker = make_server({"PEERJS_PROXIED": "1"})
    username = create_superuser(worker, PASSWORD)
    # Our proxy appends the address it saw; what comes before is the client's to write.
    attacker = AdminSession(worker, headers={"X-Forwarded-For": "203.0.113.9"})
    fail_until_locked(attacker, username)
    for forged in ("198.51.100.1, 203.0.113.9", "10.0.0.1,203.0.113.9"):
        again = AdminSession(worker, headers={"X-Forwarded-For": forged})
        assert again.login(username, PASSWORD).status == 429

    # Another client behind the same proxy (the same TCP peer) logs in.
    operator = AdminSession(worker, headers={"X-Forwarded-For": "203.0.113.10"})
    assert operator.login(username, PASSWORD).status == 200 and operator.logged_in


def test_fresh_addresses_of_one_ipv6_network_bring_no_fresh_tries(make_server):
    worker = make_server({"PEERJS_PROXIED": "1"})
    username = create_superuser(worker, PASSWORD)
    answers = []
    for n in range(LIMIT):  # each try from another address of one /64, as its owner may
        attacker = AdminSession(worker, headers={"X-Forwarded-For": f"2001:db8:77:1::{n + 1:x}"})
        answers.append(attacker.login(username, "wrong").status)
    assert answers == [200] * (LIMIT - 1) + [429]
    again = AdminSession(worker, headers={"X-Forwarded-For": "2001:db8:77:1:ffff::1"})
    assert again.login(username, PASSWORD).status == 429
    # Another network is another client.
    operator = AdminSession(worker, headers={"X-Forwarded-For": "2001:db8:77:2::1"})
    assert operator.login(username, PASSWORD).status == 200 and operator.logged_in


def test_the_limit_and_cool_off_come_from_the_environment(make_server):
    worker = make_server({"DJANGO_LOGIN_FAILURE_LIMIT": "2", "DJANGO_LOGIN_COOLOFF_MINUTES": "1"})
    username = create_superuser(worker, PASSWORD)
    session = AdminSession(worker, source="127.0.0.5")
    assert [session.login(username, "wrong").status for _ in range(2)] == [200, 429]
    locked = session.login(username, PASSWORD)
    assert locked.status == 429 and LOCKED in locked.body
    # A bad value stops start-up naming the variable.
    for name, value in (("DJANGO_LOGIN_FAILURE_LIMIT", "0"), ("DJANGO_LOGIN_COOLOFF_MINUTES", "soon")):
        check = subprocess.run(
            [sys.executable, "manage.py", "check"], cwd=ROOT, env={**worker.env, name: value},
            capture_output=True, text=True,
        )
        assert check.returncode != 0 and name in check.stderr


def test_a_wsgi_request_is_counted_by_its_connection_address_too(rf):
    """p2psite.wsgi serves the admin too: there a request has META, no ASGI scope."""
    from signaling.admin import login_client_address

    request = rf.post("/admin/login/", REMOTE_ADDR="192.0.2.7", HTTP_X_FORWARDED_FOR="198.51.100.1")
    assert login_client_address(request) == "192.0.2.7"  # PEERJS_PROXIED is off in the tests
