from django.contrib import admin, messages
from django.db.models import Count, IntegerField, OuterRef, Subquery

from signaling import hub
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
    actions = ["disconnect"]

    @admin.action(description="Disconnect the selected peers", permissions=["disconnect"])
    def disconnect(self, request, queryset):
        """Close the peers' sockets on whichever worker holds them; their rows go as they close."""
        peers = list(queryset)
        for peer in peers:
            hub.request_disconnect(peer)
        self.message_user(request, f"Asked to disconnect {len(peers)} peer(s).", messages.SUCCESS)

    def has_disconnect_permission(self, request):
        return request.user.has_perm("signaling.delete_peer")


@admin.register(Worker)
class WorkerAdmin(ReadOnlyAdmin):
    list_display = ["name", "host", "pid", "peers", "started_at", "last_beat"]

    def get_queryset(self, request):
        counts = (
            Peer.objects.filter(worker=OuterRef("name"))
            .order_by()
            .values("worker")
            .annotate(n=Count("*"))
            .values("n")
        )
        return super().get_queryset(request).annotate(
            peer_count=Subquery(counts, output_field=IntegerField())
        )

    @admin.display(description="peers", ordering="peer_count")
    def peers(self, worker):
        return worker.peer_count or 0


@admin.register(QueuedMessage)
class QueuedMessageAdmin(ReadOnlyAdmin):
    list_display = ["src", "dst", "size", "queued_at", "expires_at"]
    search_fields = ["src", "dst"]
    exclude = ["frame"]  # signaling payloads (SDP, candidates) are the peers' business
