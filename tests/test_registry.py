"""The registry's database operations, on the test database (SQLite or PostgreSQL)."""
import datetime
import threading

import pytest
from django.db import connection, transaction
from django.utils import timezone

from signaling import registry
from signaling.hub import _claim_and_take_queues
from signaling.models import Peer, PeerCount, QueuedMessage, Worker

pytestmark = [pytest.mark.fast, pytest.mark.db, pytest.mark.django_db(transaction=True), pytest.mark.postgres]


def claim(peer_id, token="t", worker="w1", connection_id="c1", limit=100, key="peerjs", address="127.0.0.1", **rules):
    return registry.claim(key, peer_id, token, worker, connection_id, address, limit, **rules)


def race(count, attempt):
    """Run ``attempt(n)`` for n in range(count) on threads released at once; the outcomes, all in one list."""
    outcomes = []
    barrier = threading.Barrier(count)

    def racer(n):
        barrier.wait()
        outcomes.extend(attempt(n))
        connection.close()

    threads = [threading.Thread(target=racer, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes


LIMITS = registry.Limits(expire_ms=5000, per_peer_messages=10, per_peer_bytes=10_000, total_messages=1000, total_bytes=100_000)


def enqueue(dst, src, frame, limits=LIMITS, key="peerjs"):
    """Queue one frame; True if it was taken."""
    refused, _registered = registry.enqueue([registry.Entry(key, dst, src, frame)], limits)
    return not refused


def test_claim_taken_replaced_full():
    assert claim("a").outcome == registry.CLAIMED
    assert claim("a", token="other", connection_id="c2").outcome == registry.TAKEN
    replaced = claim("a", worker="w2", connection_id="c3")
    assert (replaced.outcome, replaced.previous_worker, replaced.previous_connection) == (registry.REPLACED, "w1", "c1")
    assert claim("b", limit=1).outcome == registry.FULL
    assert claim("a", connection_id="c4", limit=1).outcome == registry.REPLACED  # the limit counts new peers only


def test_token_is_stored_hashed():
    claim("a", token="secret-token")
    assert "secret-token" not in Peer.objects.get(peer_id="a").token_hash


def test_ids_are_unique_per_key_and_so_is_the_limit():
    assert claim("stage", key="theatre").outcome == registry.CLAIMED
    assert claim("stage", key="school", token="other", connection_id="c2").outcome == registry.CLAIMED
    assert claim("stage", key="school", token="third", connection_id="c3").outcome == registry.TAKEN
    assert claim("more", key="theatre", connection_id="c4", limit=1).outcome == registry.FULL
    assert claim("more", key="cinema", connection_id="c5", limit=1).outcome == registry.CLAIMED
    assert registry.connected_ids("school") == ["stage"]


def test_release_only_removes_its_own_registration():
    claim("a", connection_id="old")
    claim("a", connection_id="new")
    assert registry.release("peerjs", "a", "old") is False
    assert Peer.objects.filter(peer_id="a", connection="new").exists()
    assert registry.release("peerjs", "a", "new") is True


def test_concurrent_claims_for_the_last_place_have_one_winner():
    claim("first", limit=2)
    outcomes = race(6, lambda n: [claim(f"new{n}", token=f"t{n}", connection_id=f"c{n}", limit=2).outcome])
    assert sorted(outcomes) == [registry.CLAIMED] + [registry.FULL] * 5
    assert Peer.objects.count() == 2


def test_a_batch_of_claims_sees_its_own_earlier_claims():
    """What a reconnect storm sends the registry in one transaction: each claim as if it came alone, in order."""
    claim("held", key="theatre", token="theirs", connection_id="c0")

    def request(peer_id, token, connection_id, key="theatre", limit=3):
        return registry.ClaimRequest(key, peer_id, token, "w2", connection_id, "127.0.0.1", limit)

    outcomes = registry.claim_all([
        request("a", "t1", "c1"),
        request("a", "t1", "c2"),  # the same client again: takes over from c1
        request("a", "t2", "c3"),  # another client: a is taken
        request("held", "mine", "c4"),  # held before the batch
        request("b", "t4", "c5"),  # the third of theatre's three places
        request("c", "t5", "c6"),  # one too many
        request("c", "t5", "c7", key="school"),  # another key, its own places
    ])
    assert [o.outcome for o in outcomes] == [
        registry.CLAIMED, registry.REPLACED, registry.TAKEN, registry.TAKEN,
        registry.CLAIMED, registry.FULL, registry.CLAIMED,
    ]
    assert (outcomes[1].previous_worker, outcomes[1].previous_connection) == ("w2", "c1")
    assert Peer.objects.filter(key="theatre").count() == 3
    assert Peer.objects.get(key="theatre", peer_id="a").connection == "c2"


def test_a_batch_of_new_ids_is_claimed_in_order_up_to_the_limit_across_statements():
    # More new ids than one insert carries, and fewer places than ids: the
    # first ones in the batch's order get the places, as one by one.
    claim("held", key="hall", token="theirs", connection_id="c0")
    places, new = registry.ROWS_PER_STATEMENT + 20, registry.ROWS_PER_STATEMENT + 50
    requests = [
        registry.ClaimRequest("hall", f"p{n:04}", f"t{n}", "w2", f"c{n}", "127.0.0.1", places)
        for n in range(new)
    ]
    requests.insert(7, registry.ClaimRequest("hall", "held", "mine", "w2", "cx", "127.0.0.1", places))
    outcomes = [o.outcome for o in registry.claim_all(requests)]
    assert outcomes[7] == registry.TAKEN
    del outcomes[7]
    assert outcomes == [registry.CLAIMED] * (places - 1) + [registry.FULL] * (new - places + 1)
    assert PeerCount.objects.get(key="hall").peers == places
    assert Peer.objects.get(key="hall", peer_id="p0000").connection == "c0"
    assert not Peer.objects.filter(key="hall", peer_id=f"p{places - 1:04}").exists()


def test_an_id_claimed_since_the_batch_read_its_rows_is_asked_about_again():
    # What a claim elsewhere does between the batch's read of its ids' rows
    # and its insert: that id is not inserted, and its claim, made one by
    # one, finds the other socket's row.
    claim("late", token="theirs", connection_id="c0")
    requests = [
        registry.ClaimRequest("peerjs", peer_id, "mine", "w2", f"c-{peer_id}", "127.0.0.1", 100)
        for peer_id in ("early", "late", "after")
    ]
    outcomes = [None] * 3
    with connection.cursor() as cursor:
        registry._insert_new(connection, cursor, requests, [0, 1, 2], {"peerjs": 1}, {}, outcomes)  # {}: read before "late" was claimed
    assert [o and o.outcome for o in outcomes] == [registry.CLAIMED, None, registry.CLAIMED]
    assert registry.claim_all(requests[1:2])[0].outcome == registry.TAKEN


def test_concurrent_batches_for_the_last_places_never_overfill():
    claim("first", limit=4)

    def batch(n):
        requests = [
            registry.ClaimRequest("peerjs", f"new{n}-{i}", f"t{n}", "w1", f"c{n}-{i}", "127.0.0.1", 4)
            for i in range(3)
        ]
        return [o.outcome for o in registry.claim_all(requests)]

    outcomes = race(4, batch)
    assert sorted(outcomes) == [registry.CLAIMED] * 3 + [registry.FULL] * 9
    assert Peer.objects.count() == 4


def test_concurrent_claims_of_one_id_have_one_winner():
    outcomes = race(4, lambda n: [claim("contested", token=f"t{n}", connection_id=f"c{n}").outcome])
    assert sorted(outcomes) == [registry.CLAIMED] + [registry.TAKEN] * 3


def test_queue_is_taken_once_oldest_first_per_key():
    for n in range(3):
        assert enqueue("b", "a", f"frame{n}")
    assert enqueue("b", "a", "other app's", key="other")
    assert [frame for frame, _src, _kind in registry.take_queued("peerjs", "b")] == ["frame0", "frame1", "frame2"]
    assert registry.take_queued("peerjs", "b") == []
    assert [frame for frame, _src, _kind in registry.take_queued("other", "b")] == ["other app's"]


def test_a_batch_takes_the_queue_of_each_id_it_claims_and_the_last_claim_of_an_id_gets_it():
    """A reconnect storm's batch: held ids taken over, new ids claimed, each socket handed its own queue."""
    from signaling.hub import _claim_and_take_queues

    claim("held", token="mine", worker="dead", connection_id="old")
    for n in range(2):
        assert enqueue("held", "a", f"for held {n}")
    assert enqueue("new", "a", "for new")
    assert enqueue("dup", "a", "for dup")
    assert enqueue("stranger", "a", "for nobody in this batch")

    def request(peer_id, token, connection_id):
        return registry.ClaimRequest("peerjs", peer_id, token, "w2", connection_id, "127.0.0.1", 100)

    results = _claim_and_take_queues([
        request("held", "mine", "c1"),
        request("new", "t", "c2"),
        request("dup", "t", "c3"),
        request("held", "theirs", "c4"),  # another client: taken, no queue
        request("dup", "t", "c5"),  # the same client again: this socket holds dup now
    ])
    assert [claim.outcome for claim, _ in results] == [
        registry.REPLACED, registry.CLAIMED, registry.CLAIMED, registry.TAKEN, registry.REPLACED,
    ]
    assert (results[0][0].previous_worker, results[0][0].previous_connection) == ("dead", "old")
    assert [[frame for frame, _src, _kind in frames] for _, frames in results] == [
        ["for held 0", "for held 1"], ["for new"], [], [], ["for dup"],
    ]
    assert [m.frame for m in QueuedMessage.objects.all()] == ["for nobody in this batch"]
    assert dict(Peer.objects.values_list("peer_id", "connection")) == {"held": "c1", "new": "c2", "dup": "c5"}


def test_queue_caps_count_and_bytes_per_destination():
    limits = registry.Limits(5000, per_peer_messages=2, per_peer_bytes=100, total_messages=1000, total_bytes=100_000)
    assert enqueue("b", "a", "x" * 60, limits)
    assert not enqueue("b", "a", "y" * 60, limits)  # bytes
    assert enqueue("b", "a", "z", limits)
    assert not enqueue("b", "a", "w", limits)  # count
    assert enqueue("c", "a", "w", limits)  # another destination has room


def test_queue_caps_what_it_holds_in_all():
    limits = registry.Limits(5000, per_peer_messages=100, per_peer_bytes=100_000, total_messages=3, total_bytes=100)
    entries = [registry.Entry("peerjs", f"d{n}", "a", "f" * 10) for n in range(5)]
    refused, _ = registry.enqueue(entries, limits)
    assert refused == [3, 4]
    refused, _ = registry.enqueue([registry.Entry("peerjs", "big", "a", "f" * 95)], limits)
    assert refused == [0]


def test_enqueue_names_destinations_that_are_registered_after_all():
    claim("here", worker="w7")
    _refused, registered = registry.enqueue(
        [registry.Entry("peerjs", "here", "a", "1"), registry.Entry("peerjs", "away", "a", "2")], LIMITS
    )
    assert list(registered) == [("peerjs", "here", "w7")]


def test_expiry_reports_each_pair_once_and_takes_its_whole_queue():
    enqueue("b", "a", "1")
    enqueue("b", "a", "2")
    enqueue("b", "c", "3", registry.Limits(60_000, 10, 10_000, 1000, 100_000))
    QueuedMessage.objects.filter(frame="1").update(expires_at=timezone.now() - datetime.timedelta(seconds=1))
    assert registry.take_expired() == [("peerjs", "a", "b")]
    assert registry.take_expired() == []
    assert list(QueuedMessage.objects.values_list("frame", flat=True)) == ["3"]


def test_reaping_frees_the_ids_of_silent_workers_only():
    long_ago = timezone.now() - datetime.timedelta(minutes=5)
    registry.worker_beat("alive", "h", 1, timezone.now(), {})
    Worker.objects.create(name="dead", host="h", pid=2, started_at=long_ago, last_beat=long_ago)
    claim("on-alive", worker="alive")
    claim("on-dead", worker="dead")
    claim("orphan", worker="never-announced")
    dead, freed = registry.reap(10_000)
    assert dead == ["dead"] and freed == 2
    assert list(Peer.objects.values_list("peer_id", flat=True)) == ["on-alive"]


def counts():
    """Each key's count as the claims read it, beside its rows as counted."""
    kept = {c.key: c.peers for c in PeerCount.objects.all() if c.peers}
    actual = {}
    for key in Peer.objects.values_list("key", flat=True):
        actual[key] = actual.get(key, 0) + 1
    return kept, actual


def test_each_keys_count_follows_its_rows_however_they_come_and_go():
    long_ago = timezone.now() - datetime.timedelta(minutes=5)
    Worker.objects.create(name="dead", host="h", pid=2, started_at=long_ago, last_beat=long_ago)
    registry.worker_beat("w1", "h", 1, timezone.now(), {})
    for n in range(3):
        claim(f"a{n}", connection_id=f"a{n}")
        claim(f"t{n}", key="theatre", connection_id=f"t{n}", worker="dead")
    claim("a0", token="other", connection_id="x")  # taken: no row
    claim("a1", connection_id="a1-again")  # a takeover: the same row
    assert counts() == ({"peerjs": 3, "theatre": 3}, {"peerjs": 3, "theatre": 3})
    assert registry.release("peerjs", "a0", "a0")
    assert not registry.release("peerjs", "a1", "a1")  # no longer its socket: nothing removed
    claim("a3", connection_id="a3")
    # In one go, over both keys: each row removed only if it is still its socket's.
    assert registry.release_all([("peerjs", "a3", "a3"), ("theatre", "t9", "t9"), ("peerjs", "a1", "a1")]) == [True, False, False]
    registry.release_connections(["a2", "t0"])
    assert counts() == ({"peerjs": 1, "theatre": 2}, {"peerjs": 1, "theatre": 2})
    registry.reap(10_000)  # the dead worker's two
    with connection.cursor() as cursor:  # a row written by hand is counted too
        cursor.execute(
            "INSERT INTO signaling_peer (key, peer_id, token_hash, worker, connection, address, connected_at, last_seen)"
            " VALUES ('theatre', 'by-hand', 'h', 'w1', 'c', NULL, %s, %s)", [timezone.now(), timezone.now()],
        )
    assert counts() == ({"peerjs": 1, "theatre": 1}, {"peerjs": 1, "theatre": 1})
    Peer.objects.all().delete()
    assert counts() == ({}, {})


def test_the_count_stays_exact_under_concurrent_claims_and_releases_of_several_keys():
    # Batches over two keys (given in both orders) against releases, and a
    # bulk delete over both: nothing deadlocks, and the count is the rows'.
    def work(n):
        keys = ["one", "two"] if n % 2 else ["two", "one"]
        requests = [registry.ClaimRequest(keys[i % 2], f"p{n}-{i}", "t", "w1", f"c{n}-{i}", "127.0.0.1", 1000) for i in range(20)]
        outcomes = [o.outcome for o in registry.claim_all(requests)]
        # A worker's batch of releases over both keys, in either order, beside the others' claims.
        mine = [(keys[i % 2], f"p{n}-{i}", f"c{n}-{i}") for i in range(20) if i % 4 in (0, 3)]
        assert registry.release_all(mine if n % 2 else mine[::-1]) == [True] * 10
        registry.release_connections([f"c{n}-{i}" for i in range(1, 20, 4)])
        return outcomes

    outcomes = race(6, work)
    assert outcomes == [registry.CLAIMED] * 120
    kept, actual = counts()
    assert kept == actual and sum(actual.values()) == 6 * 5


def test_a_reaped_worker_learns_it_on_its_next_beat():
    started = timezone.now()
    assert registry.worker_beat("w", "h", 1, started, {}) is False  # first beat: announced
    assert registry.worker_beat("w", "h", 1, started, {}) is True
    Worker.objects.filter(name="w").delete()
    assert registry.worker_beat("w", "h", 1, started, {}) is False


def test_a_takeover_from_another_address_is_refused_only_where_the_app_asks():
    claim("a", address="203.0.113.10", connection_id="c1")
    kept = claim("a", address="198.51.100.66", connection_id="c2", takeover_same_address=True)
    assert kept == registry.Claim(registry.KEPT, "w1", "c1", "203.0.113.10")
    assert Peer.objects.get(peer_id="a").connection == "c1"  # still the holder's
    moved = claim("a", address="198.51.100.66", connection_id="c3")  # the default rule
    assert moved == registry.Claim(registry.REPLACED, "w1", "c1", "203.0.113.10")
    assert claim("a", address="198.51.100.66", connection_id="c4", takeover_same_address=True).outcome == registry.REPLACED
    # IPv6: an address of the holder's network is the same client.
    claim("b", address="2001:db8:1:2::1", connection_id="c5")
    assert claim("b", address="2001:db8:1:2::99", connection_id="c6", takeover_same_address=True).outcome == registry.REPLACED
    assert claim("b", address="2001:db8:1:3::1", connection_id="c7", takeover_same_address=True).outcome == registry.KEPT


def test_touch_writes_the_last_seen_time_of_the_given_sockets_only():
    for n in range(1200):  # more than one statement's worth on SQLite
        claim(f"p{n}", connection_id=f"c{n}", limit=10_000)
    long_ago = timezone.now() - datetime.timedelta(minutes=5)
    Peer.objects.update(last_seen=long_ago)
    registry.touch([f"c{n}" for n in range(0, 1200, 2)])
    recent = set(Peer.objects.filter(last_seen__gt=long_ago).values_list("connection", flat=True))
    assert recent == {f"c{n}" for n in range(0, 1200, 2)}


def test_locations_since_a_time_are_the_peers_registered_or_taken_over_since():
    claim("old", connection_id="c-old")
    claim("moved", connection_id="c-moved")
    Peer.objects.update(connected_at=timezone.now() - datetime.timedelta(minutes=5))
    since = timezone.now() - datetime.timedelta(seconds=1)
    claim("new", connection_id="c-new", worker="w2")
    claim("moved", connection_id="c-moved-2", worker="w3")  # the same client, reconnected elsewhere
    assert sorted(row[:3] for row in registry.locations(since)) == [("peerjs", "moved", "w3"), ("peerjs", "new", "w2")]
    assert sorted(row[1] for row in registry.locations()) == ["moved", "new", "old"]


def test_locations_come_a_page_at_a_time_each_row_once():
    for n in range(25):
        claim(f"p{n}", connection_id=f"c{n}")
    seen, after = [], 0
    while True:
        page = registry.locations(after=after, limit=10)
        seen += [row[1] for row in page]
        if len(page) < 10:
            break
        after = page[-1][3]
    assert sorted(seen) == sorted(f"p{n}" for n in range(25))


def test_a_frame_queued_while_its_peer_claims_is_taken_by_the_claim_or_drained_after_it():
    # The claim (another worker's) takes the queue in its transaction; the
    # enqueue reads the peers after its own commit. Were the two to overlap
    # -- the claim's queue read before the frame's commit, the enqueue's read
    # of the peers before the claim's -- neither would see the other and the
    # frame would wait unseen until it expired. They take the key's turn
    # (on SQLite, its write lock), so one sees the other.
    request = registry.ClaimRequest("peerjs", "late", "t", "w2", "c1", "127.0.0.1", 100)
    claimed, commit, outcomes, registered = threading.Event(), threading.Event(), [], []

    def claimer():
        with transaction.atomic():  # held open, uncommitted, while the frame is queued
            outcomes.extend(_claim_and_take_queues([request]))
            claimed.set()
            commit.wait(10)
        connection.close()

    def enqueuer():
        registered.extend(registry.enqueue([registry.Entry("peerjs", "late", "a", "the frame")], LIMITS)[1])
        connection.close()

    first = threading.Thread(target=claimer)
    first.start()
    assert claimed.wait(10)
    second = threading.Thread(target=enqueuer)
    second.start()
    second.join(1)  # with the key's turn it waits for the claim; without, it is done by now
    commit.set()
    first.join()
    second.join()
    (claim_result, taken), = outcomes
    assert claim_result.outcome == registry.CLAIMED
    # The frame is either the claim's or its enqueue knows where to drain it.
    assert taken or registered == [("peerjs", "late", "w2")], (taken, registered)
