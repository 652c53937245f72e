"""The registry's database operations, on the test database (SQLite or PostgreSQL)."""
import datetime
import threading

import pytest
from django.db import connection
from django.utils import timezone

from signaling import registry
from signaling.models import Peer, QueuedMessage, Worker

pytestmark = [pytest.mark.db, pytest.mark.django_db(transaction=True)]


def claim(peer_id, token="t", worker="w1", connection_id="c1", limit=100):
    return registry.claim(peer_id, "peerjs", token, worker, connection_id, "127.0.0.1", limit)


def test_claim_taken_replaced_full():
    assert claim("a").outcome == registry.CLAIMED
    assert claim("a", token="other", connection_id="c2").outcome == registry.TAKEN
    replaced = claim("a", worker="w2", connection_id="c3")
    assert (replaced.outcome, replaced.previous_worker, replaced.previous_connection) == (registry.REPLACED, "w1", "c1")
    assert claim("b", limit=1).outcome == registry.FULL
    assert claim("a", connection_id="c4", limit=1).outcome == registry.REPLACED  # the limit counts new peers only


def test_token_is_stored_hashed():
    claim("a", token="secret-token")
    assert "secret-token" not in Peer.objects.get(pk="a").token_hash


def test_release_only_removes_its_own_registration():
    claim("a", connection_id="old")
    claim("a", connection_id="new")
    assert registry.release("a", "old") is False
    assert Peer.objects.filter(pk="a", connection="new").exists()
    assert registry.release("a", "new") is True


def test_concurrent_claims_of_one_id_have_one_winner():
    outcomes = []
    barrier = threading.Barrier(4)

    def racer(n):
        barrier.wait()
        outcomes.append(claim("contested", token=f"t{n}", connection_id=f"c{n}").outcome)
        connection.close()

    threads = [threading.Thread(target=racer, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == [registry.CLAIMED] + [registry.TAKEN] * 3


def test_queue_is_taken_once_oldest_first():
    for n in range(3):
        assert registry.enqueue("b", "a", f"frame{n}", 5000, 10, 10_000)
    assert [frame for frame, _src, _kind in registry.take_queued("b")] == ["frame0", "frame1", "frame2"]
    assert registry.take_queued("b") == []


def test_queue_caps_count_and_bytes():
    assert registry.enqueue("b", "a", "x" * 60, 5000, 2, 100)
    assert not registry.enqueue("b", "a", "y" * 60, 5000, 2, 100)  # bytes
    assert registry.enqueue("b", "a", "z", 5000, 2, 100)
    assert not registry.enqueue("b", "a", "w", 5000, 2, 100)  # count


def test_expiry_reports_each_pair_once_and_takes_its_whole_queue():
    registry.enqueue("b", "a", "1", 5000, 10, 10_000)
    registry.enqueue("b", "a", "2", 5000, 10, 10_000)
    registry.enqueue("b", "c", "3", 60_000, 10, 10_000)
    QueuedMessage.objects.filter(frame="1").update(expires_at=timezone.now() - datetime.timedelta(seconds=1))
    assert registry.take_expired() == [("a", "b")]
    assert registry.take_expired() == []
    assert list(QueuedMessage.objects.values_list("frame", flat=True)) == ["3"]


def test_reaping_frees_the_ids_of_silent_workers_only():
    long_ago = timezone.now() - datetime.timedelta(minutes=5)
    registry.worker_beat("alive", "h", 1, timezone.now())
    Worker.objects.create(name="dead", host="h", pid=2, started_at=long_ago, last_beat=long_ago)
    claim("on-alive", worker="alive")
    claim("on-dead", worker="dead")
    claim("orphan", worker="never-announced")
    dead, freed = registry.reap(10_000)
    assert dead == ["dead"] and freed == 2
    assert list(Peer.objects.values_list("peer_id", flat=True)) == ["on-alive"]


def test_a_reaped_worker_learns_it_on_its_next_beat():
    started = timezone.now()
    assert registry.worker_beat("w", "h", 1, started) is False  # first beat: announced
    assert registry.worker_beat("w", "h", 1, started) is True
    Worker.objects.filter(name="w").delete()
    assert registry.worker_beat("w", "h", 1, started) is False
