from django.contrib import admin

from signaling.models import Peer, QueuedMessage, Worker


class ReadOnlyAdmin(admin.ModelAdmin):
    """The registry is written by the signaling server alone; operators look."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(Peer)
class PeerAdmin(ReadOnlyAdmin):
    list_display = ["peer_id", "key", "worker", "address", "connected_at", "last_seen"]
    list_filter = ["key", "worker", "connected_at"]
    search_fields = ["peer_id"]
    # The token hash is never shown: it identifies a client's reconnections.
    exclude = ["token_hash"]
    date_hierarchy = "connected_at"


@admin.register(Worker)
class WorkerAdmin(ReadOnlyAdmin):
    list_display = ["name", "host", "pid", "started_at", "last_beat"]


@admin.register(QueuedMessage)
class QueuedMessageAdmin(ReadOnlyAdmin):
    list_display = ["src", "dst", "size", "queued_at", "expires_at"]
    search_fields = ["src", "dst"]
    exclude = ["frame"]  # signaling payloads (SDP, candidates) are the peers' business
