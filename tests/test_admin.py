"""The Django admin's view of the registry."""
import pytest
from django.utils import timezone

from signaling import registry
from signaling.models import Peer

pytestmark = [pytest.mark.fast, pytest.mark.db, pytest.mark.django_db, pytest.mark.postgres]


@pytest.fixture
def peers():
    registry.worker_beat("worker-a", "host-a", 10, timezone.now(), {})
    registry.claim("peerjs", "stage-left", "tok-secret-1", "worker-a", "c1", "192.0.2.1", 100)
    registry.claim("peerjs", "stage-right", "tok-secret-2", "worker-a", "c2", "192.0.2.2", 100)


def test_operator_sees_connected_peers_without_tokens(admin_client, peers):
    page = admin_client.get("/admin/signaling/peer/").content.decode()
    assert "stage-left" in page and "stage-right" in page and "192.0.2.1" in page and "worker-a" in page
    for peer in Peer.objects.all():
        assert peer.token_hash not in page
    left = Peer.objects.get(peer_id="stage-left")
    detail = admin_client.get(f"/admin/signaling/peer/{left.pk}/change/").content.decode()
    assert "stage-left" in detail and left.token_hash not in detail
    assert "tok-secret-1" not in detail


def test_peer_list_is_searchable_by_id(admin_client, peers):
    page = admin_client.get("/admin/signaling/peer/", {"q": "left"}).content.decode()
    assert "stage-left" in page and "stage-right" not in page


def test_peer_list_filters_by_worker(admin_client, peers):
    page = admin_client.get("/admin/signaling/peer/", {"worker": "worker-a"}).content.decode()
    assert "stage-left" in page and "stage-right" in page


def test_the_registry_is_read_only_in_the_admin(admin_client, peers):
    assert admin_client.get("/admin/signaling/peer/add/").status_code == 403
    left = Peer.objects.get(peer_id="stage-left")
    response = admin_client.post(f"/admin/signaling/peer/{left.pk}/change/", {"worker": "forged"})
    assert response.status_code == 403
    assert Peer.objects.get(peer_id="stage-left").worker == "worker-a"


def test_workers_list_counts_their_peers(admin_client, peers):
    registry.worker_beat("worker-b", "host-b", 11, timezone.now(), {})
    registry.claim("peerjs", "booth", "t", "worker-b", "c3", None, 100)
    page = admin_client.get("/admin/signaling/worker/").content.decode()
    import re

    counts = dict(re.findall(r'<a href="[^"]*">(worker-[ab])</a></th>.*?<td class="field-peers">(\d+)</td>', page, re.S))
    assert counts == {"worker-a": "2", "worker-b": "1"}
