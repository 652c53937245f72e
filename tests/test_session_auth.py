"""The site-session mode: a socket's handshake is a logged-in user of this site, or nobody.

A real worker serves the admin; a user logs in there over real HTTP, as in a
browser, and the session cookie that login set is handed to
signaling.auth.session_user in an ASGI scope, as a WebSocket handshake from
that browser would carry it. Worker and test share one database.
"""

import pytest
from asgiref.sync import async_to_sync
from django.contrib.auth import get_user_model

from signaling.auth import session_user
from tests.admin_http import AdminSession
from tests.conftest import TEST_ENV
from tests.servers import SharedTestDatabase, Worker

pytestmark = [pytest.mark.db, pytest.mark.django_db(transaction=True)]

PASSWORD = "a-long-enough-password-1"


@pytest.fixture(scope="module")
def site(django_db_setup):
    from django.db import connection

    database = SharedTestDatabase(connection.settings_dict)
    worker = Worker(database, TEST_ENV, name="site")
    yield worker
    worker.stop()
    database.drop()


@pytest.fixture
def alice():
    return get_user_model().objects.create_user("alice", "alice@example.com", PASSWORD, is_staff=True)


def cookie(session, name):
    found = [c.value for c in session.jar if c.name == name]
    return found[0] if found else None


def handshake(*cookie_lines):
    """The scope of a WebSocket handshake carrying these Cookie header lines."""
    return {
        "type": "websocket",
        "path": "/peerjs/myapp/peerjs",
        "headers": [(b"host", b"127.0.0.1"), *((b"cookie", line.encode()) for line in cookie_lines)],
    }


def user_of(scope):
    return async_to_sync(session_user)(scope)


def logged_in(site, username):
    session = AdminSession(site)
    assert session.login(username, PASSWORD).status == 200 and session.logged_in
    return session


def test_a_browser_logged_in_to_the_site_is_its_user(site, alice):
    session = logged_in(site, "alice")
    sessionid = cookie(session, "sessionid")
    user = user_of(handshake(f"csrftoken={cookie(session, 'csrftoken')}; sessionid={sessionid}"))
    assert user is not None and user.pk == alice.pk and user.username == "alice"
    # Cookies may come on several header lines.
    assert user_of(handshake("theme=dark", f"sessionid={sessionid}")).pk == alice.pk


def test_no_cookie_or_a_made_up_one_is_nobody(site, alice):
    assert user_of(handshake()) is None
    assert user_of(handshake("csrftoken=abc")) is None
    assert user_of(handshake("sessionid=0123456789abcdefghijklmnopqrstuv")) is None


def test_after_logging_out_the_cookie_is_nobody(site, alice):
    session = logged_in(site, "alice")
    sessionid = cookie(session, "sessionid")
    # The admin's logout is a POST with the CSRF token, as the browser's button sends it.
    answer = session.request(
        "/admin/logout/",
        f"csrfmiddlewaretoken={cookie(session, 'csrftoken')}".encode(),
        headers={"Referer": f"{site.http}/admin/"},
    )
    assert answer.status == 200 and not session.logged_in
    assert user_of(handshake(f"sessionid={sessionid}")) is None


def test_a_password_change_ends_the_users_sessions_here_too(site, alice):
    sessionid = cookie(logged_in(site, "alice"), "sessionid")
    assert user_of(handshake(f"sessionid={sessionid}")).pk == alice.pk
    alice.set_password("another-long-password-2")
    alice.save()
    assert user_of(handshake(f"sessionid={sessionid}")) is None


def test_a_deactivated_user_is_nobody(site, alice):
    sessionid = cookie(logged_in(site, "alice"), "sessionid")
    get_user_model().objects.filter(pk=alice.pk).update(is_active=False)
    assert user_of(handshake(f"sessionid={sessionid}")) is None
