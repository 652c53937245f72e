"""Database operations on the registry, one function per question.

Plain synchronous functions: the hub calls them through
``database_sync_to_async`` on connect, disconnect and in its sweeps, never
while relaying.
"""
import collections
import dataclasses
import datetime
import functools
import hashlib

from django.db import DEFAULT_DB_ALIAS, connection, connections, transaction
from django.db.models import Count, Sum
from django.utils import timezone

from signaling import protocol
from signaling.conf import options
from signaling.http import client_group
from signaling.models import Peer, PeerCount, QueuedMessage, Worker

CLAIMED = "claimed"  # a new registration
REPLACED = "replaced"  # same id and token: this socket took over from an older one
TAKEN = "taken"  # the id belongs to a peer with another token
KEPT = "kept"  # same id and token from another address, and the app refuses that takeover
FULL = "full"  # the cluster is at its concurrent limit


@dataclasses.dataclass(frozen=True)
class Claim:
    outcome: str
    # With REPLACED and KEPT: the socket that held the id, and its client's address.
    previous_worker: str = ""
    previous_connection: str = ""
    previous_address: str | None = None


@dataclasses.dataclass(frozen=True)
class Location:
    worker: str
    connection: str
    worker_alive: bool


def hash_token(token):
    return hashlib.sha256(token.encode()).hexdigest()


def _db():
    """This thread's connection to the database.

    ``django.db.connection`` is a proxy that looks the connection up in
    asgiref's thread-local storage on every attribute: a few µs each, a
    tenth of a claim's CPU in all. The busiest functions here look it up
    once.
    """
    return connections[DEFAULT_DB_ALIAS]


def _sql(db, model, statement):
    """``statement`` with {table} and {column} names quoted for database ``db``."""
    return _quoted(model, statement, db.vendor)


@functools.cache
def _quoted(model, statement, vendor):
    quote = connection.ops.quote_name
    names = {"table": quote(model._meta.db_table)}
    names.update({field.column: quote(field.column) for field in model._meta.concrete_fields})
    return statement.format(**names)


def _now(db):
    return db.ops.adapt_datetimefield_value(timezone.now())


# Opening and closing sockets are the registry's busiest work, so these
# statements are written out: the ORM spent more time building them than the
# database spent running them.
# The claims' insert: of one row (_INSERT), or of a key's new ids together (_INSERT_MANY).
_INSERT_INTO = """
    INSERT INTO {table} ({key}, {peer_id}, {token_hash}, {worker}, {connection},
                         {address}, {connected_at}, {last_seen})
    VALUES {{rows}}
    ON CONFLICT ({key}, {peer_id}) DO NOTHING
"""
_ROW = "(%s, %s, %s, %s, %s, %s, %s, %s)"
_INSERT = _INSERT_INTO.replace("{{rows}}", _ROW)
# A key's new ids, inserted together: the rows that come back are the ids it got.
_INSERT_MANY = _INSERT_INTO + "    RETURNING {peer_id}\n"
# Rows per statement: 8 parameters each, under SQLite's limit of 999 a statement.
ROWS_PER_STATEMENT = 100
_HOLDER = "SELECT {token_hash}, {worker}, {connection}, {address} FROM {table} WHERE {key} = %s AND {peer_id} = %s"
_HOLDERS = (  # {ids} is a placeholder per id
    "SELECT {peer_id}, {token_hash}, {worker}, {connection}, {address} FROM {table}"
    " WHERE {key} = %s AND {peer_id} IN ({{ids}})"
)
_COUNT = "SELECT {peers} FROM {table} WHERE {key} = %s"  # on PeerCount: kept by triggers
_TAKE_OVER = """
    UPDATE {table} SET {worker} = %s, {connection} = %s, {address} = %s,
                       {connected_at} = %s, {last_seen} = %s
    WHERE {key} = %s AND {peer_id} = %s AND {connection} = %s
"""
_RELEASE_MANY = (  # {pairs}: a (%s, %s) per (id, connection id)
    "DELETE FROM {table} WHERE {key} = %s AND ({peer_id}, {connection}) IN (VALUES {{pairs}})"
    " RETURNING {peer_id}, {connection}"
)
# The keys' turns, taken in one order (of the lock ids) by every worker, so
# that two batches never wait for each other's locks.
_LOCK_KEYS = """
    SELECT pg_advisory_xact_lock(lock_id)
    FROM (SELECT DISTINCT hashtext(k) AS lock_id FROM unnest(%s::text[]) AS k ORDER BY lock_id) AS turns
"""


@dataclasses.dataclass(frozen=True)
class ClaimRequest:
    key: str
    peer_id: str
    token: str
    worker: str
    connection: str
    address: str
    limit: int  # the app's concurrent limit
    # The app's choice (App.takeover_same_address): a takeover only from the
    # holder's own address (signaling.http.client_group).
    takeover_same_address: bool = False


def claim(key, peer_id, token, worker, connection_id, address, limit, takeover_same_address=False):
    """Register ``peer_id`` of app ``key`` for this socket, or say why not (see :func:`claim_all`)."""
    request = ClaimRequest(key, peer_id, token, worker, connection_id, address, limit, takeover_same_address)
    return claim_all([request])[0]


def claim_all(requests):
    """Claim each request's id for its socket, or say why not; the outcomes, in order.

    The unique constraint on (key, id) decides races: of two sockets
    inserting the same id at once, exactly one insert succeeds and the
    other sees the winner's row. The concurrent limit is exact too: the
    claims of one key take turns (SQLite's write lock, a PostgreSQL
    advisory lock per key), so two new peers never both take the last place.

    One transaction for them all: a reconnect storm brings a worker
    thousands of claims within seconds, and with one turn, one count of the
    key's peers and one commit per claim they queued behind each other's
    commits (40 s for 5 000 peers on PostgreSQL, profiled). The rows the
    batch's ids already have are read in one query per key, so a claim
    costs at most one statement (the take-over of its own row), not three:
    in a storm every id is held, by the worker that died. The ids nobody
    holds go in one insert per key (:func:`_insert_new`): a statement per
    claim cost the worker more than the database's work on it, and on
    PostgreSQL a round trip each. Requests later in the list see what
    earlier ones claimed.

    The key's count is one row of PeerCount, which the inserts' trigger
    updates: the claims go key after key, in the order of the keys, as every
    bulk delete's trigger counts them, so that no two transactions wait for
    each other's counts.
    """
    outcomes = [None] * len(requests)
    in_key_order = sorted(range(len(requests)), key=lambda i: requests[i].key)  # stable: a key's own order kept
    db = _db()
    # No savepoint within a caller's transaction (hub._claim_and_take_queues):
    # its two statements cost a claim made alone a fifth of its CPU, and a
    # failure here fails the caller's transaction anyway.
    with transaction.atomic(savepoint=False), db.cursor() as cursor:
        if db.vendor == "postgresql":
            cursor.execute(_LOCK_KEYS, [sorted({request.key for request in requests})])
        counts, holders = {}, {}  # key -> its peers now; (key, id) -> its row, read once the key has its turn
        for index in in_key_order:
            request = requests[index]
            if request.key not in counts:
                cursor.execute(_sql(db, PeerCount, _COUNT), [request.key])
                row = cursor.fetchone()
                counts[request.key] = row[0] if row else 0
                ids = sorted({r.peer_id for r in requests if r.key == request.key})
                cursor.execute(_sql(db, Peer, _HOLDERS).format(ids=", ".join(["%s"] * len(ids))), [request.key, *ids])
                holders.update(((request.key, peer_id), row) for peer_id, *row in cursor.fetchall())
                _insert_new(db, cursor, requests, [i for i in in_key_order if requests[i].key == request.key],
                            counts, holders, outcomes)
            if outcomes[index] is not None:
                continue  # claimed by the key's insert
            outcome = _claim(db, cursor, request, counts, holders)
            if outcome.outcome == CLAIMED:
                counts[request.key] += 1
            outcomes[index] = outcome
    return outcomes


def _insert_new(db, cursor, requests, indexes, counts, holders, outcomes):
    """Insert, together, the rows of the key's requests whose id nobody holds, up to the concurrent limit.

    Each claimed one gets its outcome; the others (an id held, or past the
    limit) are left to :func:`_claim`, one by one, and the outcomes are
    those of claims made one by one in order: a claim of a held id never
    takes a place. Unless an id nobody holds is asked for twice (a
    reconnect overtaking its own socket within the batch): the first of
    those would take a place in its turn, so then every claim of the key
    goes one by one.
    """
    key = requests[indexes[0]].key
    asked = collections.Counter(requests[i].peer_id for i in indexes)
    if any(n > 1 and (key, peer_id) not in holders for peer_id, n in asked.items()):
        return
    fresh = []
    for i in indexes:
        request = requests[i]
        if (key, request.peer_id) not in holders and counts[key] + len(fresh) < request.limit:
            fresh.append(i)
    now = _now(db)
    for start in range(0, len(fresh), ROWS_PER_STATEMENT):
        chunk = fresh[start : start + ROWS_PER_STATEMENT]
        rows = {}
        for i in chunk:
            r = requests[i]
            rows[i] = (hash_token(r.token), r.worker, r.connection, r.address)
        params = [value for i in chunk for value in (key, requests[i].peer_id, *rows[i], now, now)]
        cursor.execute(_sql(db, Peer, _INSERT_MANY).format(rows=", ".join([_ROW] * len(chunk))), params)
        inserted = {peer_id for (peer_id,) in cursor.fetchall()}
        for i in chunk:
            # An id not inserted was claimed since the key's rows were read:
            # _claim reads it again.
            if requests[i].peer_id in inserted:
                holders[key, requests[i].peer_id] = rows[i]
                counts[key] += 1
                outcomes[i] = Claim(CLAIMED)


def _claim(db, cursor, request, counts, holders):
    """One claim; ``holders`` is the batch's knowledge of the rows, kept up to date.

    What it read may be stale by now (a socket elsewhere released its id,
    or claimed one of an older batch's ids): a statement that changes no row
    means exactly that, and the claim then asks the database again.
    """
    key, peer_id = request.key, request.peer_id
    token_hash = hash_token(request.token)
    row = holders.get((key, peer_id))
    for _attempt in range(5):
        now = _now(db)
        if row is None:
            if counts[key] >= request.limit:
                # Counted at the start of the turn: a peer that left since
                # may have made room, but this never lets in one too many.
                return Claim(FULL)
            cursor.execute(
                _sql(db, Peer, _INSERT),
                [key, peer_id, token_hash, request.worker, request.connection, request.address, now, now],
            )
            if cursor.rowcount == 1:
                holders[key, peer_id] = (token_hash, request.worker, request.connection, request.address)
                return Claim(CLAIMED)
        else:
            held_hash, held_worker, held_connection, held_address = row
            if held_hash != token_hash:
                return Claim(TAKEN)
            held_address = None if held_address is None else str(held_address)  # PostgreSQL's inet, SQLite's text
            if request.takeover_same_address and not _same_client(held_address, request.address):
                return Claim(KEPT, held_worker, held_connection, held_address)
            # The same client reconnecting while its old socket lingers (or
            # its worker died): take over, unless another socket changed the
            # row since it was read.
            cursor.execute(
                _sql(db, Peer, _TAKE_OVER),
                [request.worker, request.connection, request.address, now, now, key, peer_id, held_connection],
            )
            if cursor.rowcount == 1:
                holders[key, peer_id] = (token_hash, request.worker, request.connection, request.address)
                return Claim(REPLACED, held_worker, held_connection, held_address)
        cursor.execute(_sql(db, Peer, _HOLDER), [key, peer_id])
        row = cursor.fetchone()
    return Claim(TAKEN)


def _same_client(a, b):
    o = options()
    return client_group(a, o) == client_group(b, o)


def release(key, peer_id, connection_id):
    """Remove the registration of this socket; a newer owner's row is never touched."""
    return release_all([(key, peer_id, connection_id)])[0]


def release_all(releases):
    """:func:`release` for many (key, id, connection id) in one transaction; whether each removed its row, in order.

    A worker's sockets close by the thousand (a page reloaded by every
    viewer, a load generator's round), and one commit each cost more than
    the deletes (bench/perpeer.py). Key after key, each key's turn taken
    first on PostgreSQL as :func:`claim_all` takes it: a batch of releases
    and a batch of claims never wait for each other's rows or counts.
    """
    gone = set()  # (key, id, connection id) whose row was removed
    db = _db()
    with transaction.atomic(), db.cursor() as cursor:
        keys = sorted({key for key, _id, _connection in releases})
        if db.vendor == "postgresql":
            cursor.execute(_LOCK_KEYS, [keys])
        for key in keys:
            pairs = sorted({(peer_id, connection_id) for k, peer_id, connection_id in releases if k == key})
            for start in range(0, len(pairs), ROWS_PER_STATEMENT):
                chunk = pairs[start : start + ROWS_PER_STATEMENT]
                statement = _sql(db, Peer, _RELEASE_MANY).format(pairs=", ".join(["(%s, %s)"] * len(chunk)))
                cursor.execute(statement, [key, *(value for pair in chunk for value in pair)])
                gone.update((key, peer_id, connection_id) for peer_id, connection_id in cursor.fetchall())
    return [tuple(release) in gone for release in releases]


def release_connections(connection_ids):
    """Remove the registrations of these sockets (releases that failed while the database was away)."""
    connection_ids = list(connection_ids)
    freed = 0
    for start in range(0, len(connection_ids), 500):
        freed += Peer.objects.filter(connection__in=connection_ids[start : start + 500]).delete()[0]
    return freed


def locate(key, peer_id, worker_timeout_ms):
    """Where ``peer_id`` of ``key`` is connected, or None."""
    row = Peer.objects.filter(key=key, peer_id=peer_id).values_list("worker", "connection").first()
    if row is None:
        return None
    cutoff = timezone.now() - datetime.timedelta(milliseconds=worker_timeout_ms)
    alive = Worker.objects.filter(name=row[0], last_beat__gte=cutoff).exists()
    return Location(row[0], row[1], alive)


_LOCATIONS = "SELECT {key}, {peer_id}, {worker}, {id} FROM {table} WHERE {id} > %s"
_SINCE = " AND {connected_at} >= %s"
_PAGE = " ORDER BY {id} LIMIT %s"


def locations(since=None, after=0, limit=1_000_000_000):
    """Registered peers as (key, id, worker, row id), in row order: all of them, or those registered (or taken over) at ``since`` or later.

    A page at a time: the rows after row id ``after``, at most ``limit``
    (the next page starts after the last row's id). A plain cursor: with
    100 000 peers the ORM's rows took 170-250 ms of the worker's CPU
    (bench/scale.py).
    """
    db = _db()
    with db.cursor() as cursor:
        if since is None:
            cursor.execute(_sql(db, Peer, _LOCATIONS + _PAGE), [after, limit])
        else:
            since = db.ops.adapt_datetimefield_value(since)
            cursor.execute(_sql(db, Peer, _LOCATIONS + _SINCE + _PAGE), [after, since, limit])
        return cursor.fetchall()


def connected_ids(key):
    return list(Peer.objects.filter(key=key).order_by("peer_id").values_list("peer_id", flat=True))


def is_connected(key, peer_id):
    return Peer.objects.filter(key=key, peer_id=peer_id).exists()


# On PostgreSQL the sockets' ids go as one array: the ORM's IN list of 500
# placeholders cost about 300 µs of the worker's CPU per row (psycopg quoting
# each one into the statement's text), the most of a worker's idle time with
# 16 000 peers (bench/scale.py, profiled).
_TOUCH_ALL = "UPDATE {table} SET {last_seen} = %s WHERE {connection} = ANY(%s)"
_TOUCH_SOME = "UPDATE {table} SET {last_seen} = %s WHERE {connection} IN ({{ids}})"  # {ids}: a placeholder per id


def touch(connection_ids):
    """Record that the peers on these sockets were heard from just now."""
    db = _db()
    now = _now(db)
    connection_ids = list(connection_ids)
    with db.cursor() as cursor:
        if db.vendor == "postgresql":
            cursor.execute(_sql(db, Peer, _TOUCH_ALL), [now, connection_ids])
            return
        for start in range(0, len(connection_ids), 500):
            some = connection_ids[start : start + 500]
            cursor.execute(_sql(db, Peer, _TOUCH_SOME).format(ids=", ".join(["%s"] * len(some))), [now, *some])


# The queue of messages for peers that are not connected.


@dataclasses.dataclass(frozen=True)
class Limits:
    """What the queue may hold: per destination, and in all."""

    expire_ms: int
    per_peer_messages: int
    per_peer_bytes: int
    total_messages: int
    total_bytes: int


@dataclasses.dataclass(frozen=True)
class Entry:
    key: str
    dst: str
    src: str
    frame: str


def enqueue(entries, limits):
    """Queue frames for offline peers in one transaction.

    Returns the indexes of the entries refused (a destination's queue or the
    whole queue full) and the (key, dst, worker) of destinations that are
    registered after all: they connected while their frames were on their
    way into the queue, so whoever holds them must drain it again.
    """
    now = timezone.now()
    expires = now + datetime.timedelta(milliseconds=limits.expire_ms)
    refused, rows = [], []
    with transaction.atomic():
        if connection.vendor == "postgresql":
            # The keys' turns, as claims take them: a claim that takes a
            # destination's queue either commits before these frames are
            # queued (and the read of the peers below sees it) or reads the
            # queue after they are. Without them, a claim could read the queue
            # before these committed and commit after that read: neither
            # would see the other, and the frames would wait unseen until
            # they expired. (SQLite's write lock gives the same order.)
            with connection.cursor() as cursor:
                cursor.execute(_LOCK_KEYS, [sorted({entry.key for entry in entries})])
        total = QueuedMessage.objects.aggregate(count=Count("id"), size=Sum("size"))
        total_count, total_size = total["count"], total["size"] or 0
        held = {}
        for key in {e.key for e in entries}:
            dsts = {e.dst for e in entries if e.key == key}
            for dst, count, size in (
                QueuedMessage.objects.filter(key=key, dst__in=dsts)
                .values("dst")
                .order_by()
                .annotate(count=Count("id"), size=Sum("size"))
                .values_list("dst", "count", "size")
            ):
                held[key, dst] = [count, size]
        for index, entry in enumerate(entries):
            size = len(entry.frame.encode())
            count, used = held.setdefault((entry.key, entry.dst), [0, 0])
            if (
                count + 1 > limits.per_peer_messages
                or used + size > limits.per_peer_bytes
                or total_count + 1 > limits.total_messages
                or total_size + size > limits.total_bytes
            ):
                refused.append(index)
                continue
            held[entry.key, entry.dst] = [count + 1, used + size]
            total_count, total_size = total_count + 1, total_size + size
            rows.append(
                QueuedMessage(
                    key=entry.key, dst=entry.dst, src=entry.src, frame=entry.frame,
                    size=size, queued_at=now, expires_at=expires,
                )
            )
        QueuedMessage.objects.bulk_create(rows)
    registered = []
    for key in {row.key for row in rows}:
        dsts = {row.dst for row in rows if row.key == key}
        registered += Peer.objects.filter(key=key, peer_id__in=dsts).values_list("key", "peer_id", "worker")
    return refused, registered


def _delete_returning(where, params, columns):
    """DELETE the matching queued rows and return ``columns`` of them.

    DELETE ... RETURNING (PostgreSQL, SQLite >= 3.35) hands each row to
    exactly one caller, so two workers sweeping at once never both deliver
    or both expire the same message. {table} and {column} names in ``where``
    are quoted for the database.
    """
    returning = ", ".join("{%s}" % column for column in columns)
    db = _db()
    with db.cursor() as cursor:
        cursor.execute(_sql(db, QueuedMessage, f"DELETE FROM {{table}} WHERE {where} RETURNING {returning}"), params)
        return cursor.fetchall()


def take_queued(key, dst):
    """Remove and return the frames queued for ``dst`` of ``key``, oldest first.

    Each as (frame, src, kind); only OFFER, ANSWER and CANDIDATE are queued,
    and they are alike for what the caller does with ``kind``.
    """
    return take_queued_for(key, [dst]).get(dst, [])


def take_queued_for(key, dsts):
    """:func:`take_queued` for several ids of ``key`` in one statement: {dst: frames} for those with any."""
    placeholders = ", ".join(["%s"] * len(dsts))
    rows = _delete_returning(f"{{key}} = %s AND {{dst}} IN ({placeholders})", [key, *dsts], ["id", "dst", "frame", "src"])
    taken = {}
    for _id, dst, frame, src in sorted(rows):
        taken.setdefault(dst, []).append((frame, src, protocol.OFFER))
    return taken


def take_expired():
    """Remove expired messages; return the distinct (key, src, dst) they were between.

    The rest of a pair's queue goes with its first expired message: the
    sender is told EXPIRE once, and its client gives up on that peer, so the
    later messages would only earn it a second EXPIRE a moment later.
    """
    rows = _delete_returning(
        "({key}, {src}, {dst}) IN (SELECT {key}, {src}, {dst} FROM {table} WHERE {expires_at} <= %s)",
        [_now(_db())],
        ["key", "src", "dst"],
    )
    return sorted(set(rows))


# Workers announce they are alive; the rows of silent ones are reaped.


def worker_beat(name, host, pid, started_at, stats):
    """Record that worker ``name`` is alive, with its ``stats``. False if its row had been reaped."""
    now = timezone.now()
    if Worker.objects.filter(name=name).update(last_beat=now, stats=stats):
        return True
    Worker.objects.create(name=name, host=host, pid=pid, started_at=started_at, last_beat=now, stats=stats)
    return False


def live_workers(worker_timeout_ms):
    """The names of the workers that beat within the timeout."""
    cutoff = timezone.now() - datetime.timedelta(milliseconds=worker_timeout_ms)
    return list(Worker.objects.filter(last_beat__gte=cutoff).values_list("name", flat=True))


def reap(worker_timeout_ms):
    """Delete silent workers and every peer row not held by a live worker.

    Returns the names of the workers reaped and the number of peer rows freed.
    """
    cutoff = timezone.now() - datetime.timedelta(milliseconds=worker_timeout_ms)
    dead = []
    for name in Worker.objects.filter(last_beat__lt=cutoff).values_list("name", flat=True):
        # Of several workers reaping at once, the one whose delete succeeds
        # reports it.
        if Worker.objects.filter(name=name, last_beat__lt=cutoff).delete()[0]:
            dead.append(name)
    freed, _ = Peer.objects.exclude(worker__in=Worker.objects.values("name")).delete()
    return dead, freed


def worker_gone(name):
    """A worker that stops cleanly removes itself and its peers at once."""
    Peer.objects.filter(worker=name).delete()
    Worker.objects.filter(name=name).delete()
