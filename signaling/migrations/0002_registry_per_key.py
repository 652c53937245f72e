"""Ids unique per key: the registry's rows are keyed by (key, id).

Peer rows stand for open sockets and queued messages live seconds, so both
tables are recreated rather than converted: when migrations run (before the
workers start, see docker-compose.yml) no socket is open and whatever the
tables held is stale.
"""
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ("signaling", "0001_initial"),
    ]

    operations = [
        migrations.DeleteModel(name="Peer"),
        migrations.DeleteModel(name="QueuedMessage"),
        migrations.CreateModel(
            name="Peer",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("key", models.CharField(max_length=255)),
                ("peer_id", models.CharField(max_length=255, verbose_name="id")),
                ("token_hash", models.CharField(editable=False, max_length=64)),
                ("worker", models.CharField(db_index=True, max_length=100)),
                ("connection", models.CharField(db_index=True, max_length=32)),
                ("address", models.GenericIPAddressField(blank=True, db_index=True, null=True, verbose_name="client address")),
                ("connected_at", models.DateTimeField(db_index=True)),
                ("last_seen", models.DateTimeField()),
            ],
            options={
                "ordering": ["-connected_at"],
                "constraints": [
                    models.UniqueConstraint(fields=("key", "peer_id"), name="signaling_peer_unique_per_key")
                ],
            },
        ),
        migrations.CreateModel(
            name="QueuedMessage",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("key", models.CharField(max_length=255)),
                ("dst", models.CharField(max_length=255)),
                ("src", models.CharField(max_length=255)),
                ("frame", models.TextField()),
                ("size", models.PositiveIntegerField()),
                ("queued_at", models.DateTimeField()),
                ("expires_at", models.DateTimeField(db_index=True)),
            ],
            options={
                "ordering": ["id"],
                "indexes": [
                    models.Index(fields=["key", "dst"], name="signaling_queue_dst"),
                    models.Index(fields=["key", "src"], name="signaling_queue_src"),
                ],
            },
        ),
    ]
