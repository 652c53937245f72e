"""The registry: who is connected, on which worker, and what waits for whom.

The database is the registry of record for the whole cluster. The primary
key on ``Peer.peer_id`` is the lock that makes an id unique across workers;
relaying never reads these tables (workers keep their own peers in memory).
"""
from django.db import models


class Worker(models.Model):
    """A server process that holds sockets; it beats while alive."""

    name = models.CharField(max_length=100, primary_key=True)
    host = models.CharField(max_length=255)
    pid = models.PositiveIntegerField()
    started_at = models.DateTimeField()
    last_beat = models.DateTimeField(db_index=True)

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name


class Peer(models.Model):
    """One connected peer: a row per open, registered socket.

    Ids are unique per key, as in the reference's realm: two apps (keys) may
    each have a peer "stage".
    """

    key = models.CharField(max_length=255)
    peer_id = models.CharField("id", max_length=255)
    # SHA-256 of the client's token: enough to recognise a reconnecting
    # client, useless to anyone who reads the table.
    token_hash = models.CharField(max_length=64, editable=False)
    worker = models.CharField(max_length=100, db_index=True)
    # Identifies the socket within the cluster, so a stale socket can only
    # ever remove its own registration.
    connection = models.CharField(max_length=32, db_index=True)
    address = models.GenericIPAddressField("client address", null=True, blank=True, db_index=True)
    connected_at = models.DateTimeField(db_index=True)
    last_seen = models.DateTimeField()

    class Meta:
        ordering = ["-connected_at"]
        constraints = [models.UniqueConstraint(fields=["key", "peer_id"], name="signaling_peer_unique_per_key")]

    def __str__(self):
        return self.peer_id


class QueuedMessage(models.Model):
    """A relayed frame waiting for its destination to connect."""

    key = models.CharField(max_length=255)
    dst = models.CharField(max_length=255)
    src = models.CharField(max_length=255)
    frame = models.TextField()
    size = models.PositiveIntegerField()
    queued_at = models.DateTimeField()
    expires_at = models.DateTimeField(db_index=True)

    class Meta:
        ordering = ["id"]
        indexes = [
            models.Index(fields=["key", "dst"], name="signaling_queue_dst"),
            models.Index(fields=["key", "src"], name="signaling_queue_src"),
        ]

    def __str__(self):
        return f"{self.src} -> {self.dst}"
