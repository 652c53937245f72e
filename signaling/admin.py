from django.conf import settings
from django.contrib import admin, messages
from django.db.models import Count, IntegerField, OuterRef, Subquery
from django.db.models.constants import LOOKUP_SEP
from django.utils import timezone

from signaling import hub
from signaling.conf import options
from signaling.http import request_address
from signaling.models import Peer, QueuedMessage, Worker

# Down to the second, in the site's zone (named in the column headers).
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"


def moment(value):
    """``2026-11-29 03:41:07``: the changelist's default "2 a.m." hides what an operator compares."""
    return timezone.localtime(value).strftime(TIME_FORMAT) if value else "-"


def duration(seconds):
    """``3 min 12 s``, ``2 h 05 min``, ``3 d 4 h``: how long, at a glance."""
    seconds = max(0, int(seconds))
    minutes, s = divmod(seconds, 60)
    hours, m = divmod(minutes, 60)
    days, h = divmod(hours, 24)
    if days:
        return f"{days} d {h} h"
    if hours:
        return f"{hours} h {m:02d} min"
    if minutes:
        return f"{minutes} min {s} s"
    return f"{s} s"


def login_client_address(request):
    """The address django-axes counts an admin login's failures by (AXES_CLIENT_IP_CALLABLE).

    The same address the signaling server records for a socket, by the same
    rule (signaling.http.client_address, which follows PEERJS_PROXIED): so
    behind our proxy it is the address the proxy saw, and a client cannot
    earn fresh tries by writing its own X-Forwarded-For.
    """
    return request_address(request, options().proxied)


class ReadOnlyAdmin(admin.ModelAdmin):
    """The registry is written by the signaling server alone; operators look."""

    def lookup_allowed(self, lookup, value, request=None):
        """No filtering on a field the admin hides.

        The changelist honours any lookup on a local field in its query string,
        so ``?token_hash__startswith=ab`` would let staff recover a hidden value
        a character at a time from which rows remain. Refused, the changelist
        answers 400 whatever the value, so nothing can be learnt from it.
        """
        if lookup.split(LOOKUP_SEP)[0] in (self.exclude or ()):
            return False
        return super().lookup_allowed(lookup, value, request)

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(Peer)
class PeerAdmin(ReadOnlyAdmin):
    list_display = ["peer_id", "worker", "address", "connected", "connected_for", "seen", "key"]
    list_filter = ["key", "worker", "connected_at"]
    search_fields = ["peer_id"]
    # The token hash is never shown nor filtered on: it identifies a client's
    # reconnections (see ReadOnlyAdmin.lookup_allowed).
    exclude = ["token_hash"]
    date_hierarchy = "connected_at"
    actions = ["disconnect"]

    class Media:
        css = {"all": ["signaling/admin.css"]}

    def changelist_view(self, request, extra_context=None):
        # The list has eight columns beside the filters: the navigation
        # sidebar would leave them half of a 1280 px window. Every other
        # admin page keeps it.
        return super().changelist_view(request, {"is_nav_sidebar_enabled": False, **(extra_context or {})})

    @admin.display(description=f"connected at ({settings.TIME_ZONE})", ordering="connected_at")
    def connected(self, peer):
        return moment(peer.connected_at)

    @admin.display(description="connected for", ordering="-connected_at")
    def connected_for(self, peer):
        return duration((timezone.now() - peer.connected_at).total_seconds())

    @admin.display(description=f"last seen ({settings.TIME_ZONE})", ordering="last_seen")
    def seen(self, peer):
        return moment(peer.last_seen)

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
