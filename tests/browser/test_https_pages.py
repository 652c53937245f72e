"""The cue pages over HTTPS: the way browsers on a LAN get camera and microphone.

One uvicorn worker serves HTTPS and WSS itself (deploy/worker-entrypoint.sh
with ASGI_TLS_CERT/ASGI_TLS_KEY, DJANGO_HTTPS on), with a certificate from the
test's own CA, which Chromium is told to accept (ignore_https_errors), as a
browser accepts one mkcert installed. A cue crosses from sender to receiver,
whose PeerJS clients signal over wss://.
"""
import pytest

from tests.browser.test_cue_pages import connect, expect_lit, open_receiver, open_sender
from tests.conftest import TEST_ENV
from tests.servers import Certificates, Worker

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def https_server(tmp_path_factory):
    certificates = Certificates(tmp_path_factory.mktemp("tls"))
    env = {**TEST_ENV, "DJANGO_HTTPS": "1", "PEERJS_PROXIED": "0"}
    worker = Worker(env=env, server="uvicorn", tls=certificates, name="https-pages")
    yield worker
    worker.stop()


def test_a_cue_crosses_over_https_and_wss(https_server, machines):
    sockets = []
    receiver_machine = machines("receiver", ignore_https_errors=True)
    sender_machine = machines("sender", ignore_https_errors=True)
    for machine in (receiver_machine, sender_machine):
        machine.page.on("websocket", lambda ws: sockets.append(ws.url))
    receiver, receiver_id = open_receiver(receiver_machine, https_server)
    sender = open_sender(sender_machine, https_server)
    assert receiver.url.startswith("https://") and receiver.evaluate("window.isSecureContext")
    connect(sender, receiver_id)
    sender.click("#cue-go")
    expect_lit(receiver, "go")
    # Both pages signalled over TLS, and nothing else.
    assert len(sockets) >= 2 and all(url.startswith("wss://") for url in sockets), sockets
