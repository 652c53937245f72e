"""Database operations on the registry, one function per question.

Plain synchronous functions: the hub calls them through
``database_sync_to_async`` on connect, disconnect and in its sweeps, never
while relaying.
"""
import dataclasses
import datetime
import functools
import hashlib

from django.db import connection, transaction
from django.db.models import Count, Sum
from django.utils import timezone

from signaling import protocol
from signaling.models import Peer, QueuedMessage, Worker

CLAIMED = "claimed"  # a new registration
REPLACED = "replaced"  # same id and token: this socket took over from an older one
TAKEN = "taken"  # the id belongs to a peer with another token
FULL = "full"  # the cluster is at its concurrent limit


@dataclasses.dataclass(frozen=True)
class Claim:
    outcome: str
    previous_worker: str = ""
    previous_connection: str = ""


@dataclasses.dataclass(frozen=True)
class Location:
    worker: str
    connection: str
    worker_alive: bool


def hash_token(token):
    return hashlib.sha256(token.encode()).hexdigest()


def _sql(model, statement):
    """``statement`` with {table} and {column} names quoted for this database."""
    return _quoted(model, statement, connection.vendor)


@functools.cache
def _quoted(model, statement, vendor):
    quote = connection.ops.quote_name
    names = {"table": quote(model._meta.db_table)}
    names.update({field.column: quote(field.column) for field in model._meta.concrete_fields})
    return statement.format(**names)


def _now():
    return connection.ops.adapt_datetimefield_value(timezone.now())


# Opening and closing sockets are the registry's busiest work, so these
# statements are written out: the ORM spent more time building them than the
# database spent running them.
_CLAIM = """
    INSERT INTO {table} ({peer_id}, {key}, {token_hash}, {worker}, {connection},
                         {address}, {connected_at}, {last_seen})
    SELECT %s, %s, %s, %s, %s, %s, %s, %s
    WHERE (SELECT COUNT(*) FROM {table}) < %s
    ON CONFLICT ({peer_id}) DO NOTHING
"""
_HOLDER = "SELECT {token_hash}, {worker}, {connection} FROM {table} WHERE {peer_id} = %s"
_TAKE_OVER = """
    UPDATE {table} SET {key} = %s, {worker} = %s, {connection} = %s, {address} = %s,
                       {connected_at} = %s, {last_seen} = %s
    WHERE {peer_id} = %s AND {connection} = %s
"""
_RELEASE = "DELETE FROM {table} WHERE {peer_id} = %s AND {connection} = %s"


def claim(peer_id, key, token, worker, connection_id, address, limit):
    """Register ``peer_id`` for this socket, or say why not.

    The primary key decides races: of two sockets inserting the same id at
    once, exactly one insert succeeds and the other sees the winner's row.
    (Two new peers racing for the last place may both get in: the limit is
    a guard against overload, not an exact count.)
    """
    token_hash = hash_token(token)
    for _attempt in range(5):
        now = _now()
        with connection.cursor() as cursor:
            cursor.execute(
                _sql(Peer, _CLAIM),
                [peer_id, key, token_hash, worker, connection_id, address, now, now, limit],
            )
            if cursor.rowcount == 1:
                return Claim(CLAIMED)
            cursor.execute(_sql(Peer, _HOLDER), [peer_id])
            row = cursor.fetchone()
            if row is None:
                if Peer.objects.count() >= limit:
                    return Claim(FULL)
                continue  # the holder left a moment ago: try again
            held_hash, held_worker, held_connection = row
            if held_hash != token_hash:
                return Claim(TAKEN)
            # The same client reconnecting while its old socket lingers: take
            # over, unless another socket changed the row since we read it.
            cursor.execute(
                _sql(Peer, _TAKE_OVER),
                [key, worker, connection_id, address, now, now, peer_id, held_connection],
            )
            if cursor.rowcount == 1:
                return Claim(REPLACED, held_worker, held_connection)
    return Claim(TAKEN)


def release(peer_id, connection_id):
    """Remove the registration of this socket; a newer owner's row is never touched."""
    with connection.cursor() as cursor:
        cursor.execute(_sql(Peer, _RELEASE), [peer_id, connection_id])
        return cursor.rowcount == 1


def locate(peer_id, worker_timeout_ms):
    """Where ``peer_id`` is connected, or None."""
    row = Peer.objects.filter(pk=peer_id).values_list("worker", "connection").first()
    if row is None:
        return None
    cutoff = timezone.now() - datetime.timedelta(milliseconds=worker_timeout_ms)
    alive = Worker.objects.filter(name=row[0], last_beat__gte=cutoff).exists()
    return Location(row[0], row[1], alive)


def connected_ids(key):
    return list(Peer.objects.filter(key=key).order_by("peer_id").values_list("peer_id", flat=True))


def is_connected(peer_id):
    return Peer.objects.filter(pk=peer_id).exists()


def touch(peer_ids, worker):
    """Record that these peers of ``worker`` were heard from just now."""
    now = timezone.now()
    peer_ids = list(peer_ids)
    for start in range(0, len(peer_ids), 500):
        Peer.objects.filter(pk__in=peer_ids[start : start + 500], worker=worker).update(last_seen=now)


# The queue of messages for peers that are not connected.


def enqueue(dst, src, frame, expire_timeout_ms, max_messages, max_bytes):
    """Queue a frame for ``dst``; False when its queue is full (count or bytes)."""
    size = len(frame.encode())
    now = timezone.now()
    with transaction.atomic():
        held = QueuedMessage.objects.filter(dst=dst).aggregate(count=Count("id"), size=Sum("size"))
        if held["count"] + 1 > max_messages or (held["size"] or 0) + size > max_bytes:
            return False
        QueuedMessage.objects.create(
            dst=dst,
            src=src,
            frame=frame,
            size=size,
            queued_at=now,
            expires_at=now + datetime.timedelta(milliseconds=expire_timeout_ms),
        )
    return True


def _delete_returning(where, params, columns):
    """DELETE the matching queued rows and return them.

    DELETE ... RETURNING (PostgreSQL, SQLite >= 3.35) hands each row to
    exactly one caller, so two workers sweeping at once never both deliver
    or both expire the same message.
    """
    table = connection.ops.quote_name(QueuedMessage._meta.db_table)
    sql = f"DELETE FROM {table} WHERE {where} RETURNING {', '.join(columns)}"
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


def take_queued(dst):
    """Remove and return the frames queued for ``dst``, oldest first.

    Each as (frame, src, kind); only OFFER, ANSWER and CANDIDATE are queued,
    and they are alike for what the caller does with ``kind``.
    """
    rows = _delete_returning("dst = %s", [dst], ["id", "frame", "src"])
    return [(frame, src, protocol.OFFER) for _id, frame, src in sorted(rows)]


def take_expired():
    """Remove expired messages; return the distinct (src, dst) pairs they were between.

    The rest of a pair's queue goes with its first expired message: the
    sender is told EXPIRE once, and its client gives up on that peer, so the
    later messages would only earn it a second EXPIRE a moment later.
    """
    table = connection.ops.quote_name(QueuedMessage._meta.db_table)
    rows = _delete_returning(
        f"(src, dst) IN (SELECT src, dst FROM {table} WHERE expires_at <= %s)",
        [timezone.now()],
        ["src", "dst"],
    )
    return sorted(set(rows))


# Workers announce they are alive; the rows of silent ones are reaped.


def worker_beat(name, host, pid, started_at):
    """Record that worker ``name`` is alive. False if its row had been reaped."""
    now = timezone.now()
    if Worker.objects.filter(name=name).update(last_beat=now):
        return True
    Worker.objects.create(name=name, host=host, pid=pid, started_at=started_at, last_beat=now)
    return False


def reap(worker_timeout_ms):
    """Delete silent workers and every peer row not held by a live worker.

    Returns the names of the workers reaped and the number of peer rows freed.
    """
    cutoff = timezone.now() - datetime.timedelta(milliseconds=worker_timeout_ms)
    dead = []
    for name in Worker.objects.filter(last_beat__lt=cutoff).values_list("name", flat=True):
        # Of several workers reaping at once, the one whose delete succeeds
        # owns the dead worker's leftovers (its inbox).
        if Worker.objects.filter(name=name, last_beat__lt=cutoff).delete()[0]:
            dead.append(name)
    freed, _ = Peer.objects.exclude(worker__in=Worker.objects.values("name")).delete()
    return dead, freed


def worker_gone(name):
    """A worker that stops cleanly removes itself and its peers at once."""
    Peer.objects.filter(worker=name).delete()
    Worker.objects.filter(name=name).delete()
