"""An app for the site's own users, in real browsers: a login is what lets a PeerJS page connect.

One worker (daphne, as `manage.py runserver`) serves the admin and the page
the Peers run in, so the session cookie its login sets goes with the Peer's
socket as it goes with any request to the site. The app is made in the
admin (real HTTP) with *Site session* authentication and the site's own
origin as its only allowed origin. Each browser context is a machine of its
own: two log in through the admin's login page, one does not.
"""
import os
import uuid

import pytest

from tests.admin_http import AdminSession, Apps, create_superuser
from tests.browser.test_peerjs_apps import assert_chatter_both_ways, incoming, load, peer, wait_conn_open
from tests.conftest import TEST_ENV
from tests.servers import Database, Worker

pytestmark = [pytest.mark.browser, pytest.mark.db]

PASSWORD = "a-long-enough-password-1"


@pytest.fixture(scope="module")
def site():
    database = Database()
    worker = Worker(database, TEST_ENV, name="site")
    yield worker, database
    worker.stop()
    database.drop()


@pytest.fixture(scope="module")
def members(site):
    """The key of an app made in the admin for the site's logged-in users, on the site's own origin."""
    worker, database = site
    operator = AdminSession(worker)
    assert operator.login(create_superuser(worker, PASSWORD), PASSWORD).status == 200
    return Apps(operator, database).add(
        f"members-{uuid.uuid4().hex[:6]}", auth="session", allowed_origins=worker.http
    ).key


def logged_in_page(machines, worker, name):
    """A machine whose user logged in through the admin's login page, then opened a page of the site."""
    user = create_superuser(worker, PASSWORD)
    machine = machines(name, bypass_csp=True)
    page = machine.page
    page.goto(f"{worker.http}/admin/login/?next=/admin/")
    page.fill("#id_username", user)
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_url(f"{worker.http}/admin/")
    assert page.get_by_role("button", name="Log out").is_visible()
    return machine, load(page, worker)


def wait_error(page, name):
    page.wait_for_function(f"() => record.peers.{name}.errors.length > 0")
    return page.evaluate(f"record.peers.{name}")


def test_logged_in_browsers_connect_and_an_anonymous_one_is_told_to_log_in(machines, site, members):
    worker, _ = site
    _, alice = logged_in_page(machines, worker, "alice")
    alice_id = peer(alice, "p", f"alice-{uuid.uuid4().hex[:8]}", {"key": members})
    _, bob = logged_in_page(machines, worker, "bob")
    bob_id = peer(bob, "p", f"bob-{uuid.uuid4().hex[:8]}", {"key": members})
    bob.evaluate("(dst) => openConnection('p', 'out', dst)", alice_id)
    wait_conn_open(bob, "out")
    assert_chatter_both_ways(bob, "out", alice, incoming(alice, "p", bob_id), count=10)

    anonymous = load(machines("anonymous", bypass_csp=True).page, worker)
    anonymous.evaluate("(key) => makePeer('p', null, {key})", members)
    rec = wait_error(anonymous, "p")
    assert rec["errors"] == [{"type": "server-error", "message": "Login required"}]
    assert not rec["open"] and rec["serverFrames"] == ["ERROR"]


def test_a_users_second_tab_takes_over_its_id_and_another_user_cannot(machines, site, members):
    worker, _ = site
    alice_machine, alice = logged_in_page(machines, worker, "alice")
    alice_id = peer(alice, "p", f"alice-{uuid.uuid4().hex[:8]}", {"key": members})

    # The same user in a second tab, with the same id (PeerJS makes up a new token there).
    second_tab = load(alice_machine.new_page(), worker)
    assert peer(second_tab, "p", alice_id, {"key": members}) == alice_id
    alice.wait_for_function("() => record.peers.p.disconnected")

    _, bob = logged_in_page(machines, worker, "bob")
    bob.evaluate("([id, key]) => makePeer('p', id, {key})", [alice_id, members])
    assert [e["type"] for e in wait_error(bob, "p")["errors"]] == ["unavailable-id"]

    # The id is the second tab's: a connection to it reaches that tab.
    _, carol = logged_in_page(machines, worker, "carol")
    carol_id = peer(carol, "p", f"carol-{uuid.uuid4().hex[:8]}", {"key": members})
    carol.evaluate("(dst) => openConnection('p', 'out', dst)", alice_id)
    wait_conn_open(carol, "out")
    assert_chatter_both_ways(carol, "out", second_tab, incoming(second_tab, "p", carol_id), count=5)
