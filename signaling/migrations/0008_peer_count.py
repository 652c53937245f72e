"""Each app's number of registered peers, kept by triggers (signaling.models.PeerCount)."""
from django.db import migrations, models

# PostgreSQL: one trigger per statement, over its transition table, so that a
# worker's bulk delete (a reap of 20 000 rows) changes each key's count once.
# Keys are counted in their sorted order, as the claims take their keys'
# turns, so that two transactions never wait for each other's counts.
POSTGRESQL = """
CREATE FUNCTION signaling_peer_counted_in() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO signaling_peercount (key, peers)
        SELECT key, COUNT(*) FROM signaling_new_peers GROUP BY key ORDER BY key
    ON CONFLICT (key) DO UPDATE SET peers = signaling_peercount.peers + EXCLUDED.peers;
    RETURN NULL;
END $$;
CREATE FUNCTION signaling_peer_counted_out() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    gone record;
BEGIN
    FOR gone IN SELECT key, COUNT(*) AS n FROM signaling_old_peers GROUP BY key ORDER BY key LOOP
        UPDATE signaling_peercount SET peers = peers - gone.n WHERE key = gone.key;
    END LOOP;
    RETURN NULL;
END $$;
LOCK TABLE signaling_peer IN SHARE ROW EXCLUSIVE MODE;
INSERT INTO signaling_peercount (key, peers) SELECT key, COUNT(*) FROM signaling_peer GROUP BY key;
CREATE TRIGGER signaling_peer_counted_in AFTER INSERT ON signaling_peer
    REFERENCING NEW TABLE AS signaling_new_peers FOR EACH STATEMENT EXECUTE FUNCTION signaling_peer_counted_in();
CREATE TRIGGER signaling_peer_counted_out AFTER DELETE ON signaling_peer
    REFERENCING OLD TABLE AS signaling_old_peers FOR EACH STATEMENT EXECUTE FUNCTION signaling_peer_counted_out();
"""
POSTGRESQL_UNDO = """
DROP TRIGGER signaling_peer_counted_in ON signaling_peer;
DROP TRIGGER signaling_peer_counted_out ON signaling_peer;
DROP FUNCTION signaling_peer_counted_in();
DROP FUNCTION signaling_peer_counted_out();
"""
# SQLite has triggers per row only.
SQLITE = [
    "INSERT INTO signaling_peercount (key, peers) SELECT key, COUNT(*) FROM signaling_peer GROUP BY key",
    """CREATE TRIGGER signaling_peer_counted_in AFTER INSERT ON signaling_peer BEGIN
        INSERT INTO signaling_peercount (key, peers) VALUES (NEW.key, 1)
        ON CONFLICT (key) DO UPDATE SET peers = peers + 1;
    END""",
    """CREATE TRIGGER signaling_peer_counted_out AFTER DELETE ON signaling_peer BEGIN
        UPDATE signaling_peercount SET peers = peers - 1 WHERE key = OLD.key;
    END""",
]
SQLITE_UNDO = ["DROP TRIGGER signaling_peer_counted_in", "DROP TRIGGER signaling_peer_counted_out"]


def _run(schema_editor, statements):
    vendor = schema_editor.connection.vendor
    if vendor not in statements:
        raise NotImplementedError(f"signaling keeps its peer counts with triggers on PostgreSQL and SQLite, not {vendor}")
    for statement in statements[vendor]:
        schema_editor.execute(statement, params=None)


def create_triggers(apps, schema_editor):
    _run(schema_editor, {"postgresql": [POSTGRESQL], "sqlite": SQLITE})


def drop_triggers(apps, schema_editor):
    _run(schema_editor, {"postgresql": [POSTGRESQL_UNDO], "sqlite": SQLITE_UNDO})


class Migration(migrations.Migration):

    dependencies = [
        ("signaling", "0007_overview"),
    ]

    operations = [
        migrations.CreateModel(
            name="PeerCount",
            fields=[
                ("key", models.CharField(max_length=255, primary_key=True, serialize=False)),
                ("peers", models.IntegerField(default=0)),
            ],
        ),
        migrations.RunPython(create_triggers, drop_triggers),
    ]
