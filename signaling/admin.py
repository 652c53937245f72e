from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.db.models import Count, IntegerField, OuterRef, Subquery
from django.db.models.constants import LOOKUP_SEP
from django.utils import timezone

from signaling import hub
from signaling.conf import options
from signaling.http import request_address
from signaling.models import App, Peer, QueuedMessage, Worker, new_token_secret

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


class WriteOnlySecret(forms.CharField):
    """A secret the admin never sends back to the browser: blank keeps the current one."""

    def __init__(self, **kwargs):
        super().__init__(required=False, strip=True, widget=forms.PasswordInput(render_value=False), **kwargs)


class AppForm(forms.ModelForm):
    # The TURN and webhook secrets are typed in once, never shown again: they
    # are shared with another server (coturn, the webhook's receiver), which
    # is where an operator looks them up. The token secret, which the app's
    # backend needs, stays readable (see AppAdmin.readonly_fields).
    turn_secret = WriteOnlySecret(label="TURN shared secret")
    webhook_secret = WriteOnlySecret()
    # A URL typed without a scheme is https (Django 6's default, said now).
    webhook_url = App._meta.get_field("webhook_url").formfield(assume_scheme="https")
    rotate_token_secret = forms.BooleanField(
        required=False,
        label="Rotate the token secret",
        help_text="Generate a new token secret on save. Tokens signed with the current one stop "
        "working at once: give the new one to the app's backend first.",
    )

    class Meta:
        model = App
        fields = "__all__"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for name in ("turn_secret", "webhook_secret"):
            field = self.fields[name]
            is_set = bool(getattr(self.instance, name))
            field.help_text = (
                ("<b>Set.</b> Type a new one to replace it; leave blank to keep it. " if is_set else "<b>Not set.</b> ")
                + App._meta.get_field(name).help_text
            )

    def _kept(self, name):
        return self.cleaned_data.get(name) or getattr(self.instance, name)

    def clean_turn_secret(self):
        return self._kept("turn_secret")

    def clean_webhook_secret(self):
        return self._kept("webhook_secret")


@admin.register(App)
class AppAdmin(admin.ModelAdmin):
    form = AppForm
    list_display = ["key", "name", "auth", "allow_discovery", "limit", "ice", "webhook", "updated_at"]
    list_filter = ["auth", "allow_discovery"]
    search_fields = ["key", "name"]
    readonly_fields = ["token_secret", "created_at", "updated_at"]
    fieldsets = [
        (None, {"fields": ["key", "name"]}),
        ("Who may connect", {"fields": ["allowed_origins", "concurrent_limit", "allow_discovery"]}),
        (
            "Authentication",
            {
                "fields": ["auth", "token_secret", "rotate_token_secret"],
                "description": "With <b>Signed token</b>, the app's backend gives each browser a token for "
                "its peer id, signed with the token secret (<code>manage.py mint_token</code>, or any JWT "
                "library with HS256: see the README, \"Apps, tokens and TURN\"). With <b>Site session</b>, "
                "only browsers logged in to this site connect.",
            },
        ),
        (
            "ICE servers (STUN/TURN)",
            {
                "fields": ["turn_urls", "turn_secret", "turn_ttl"],
                "description": "Handed out by <code>GET {base}/KEY/ice-servers</code>, with TURN credentials "
                "made from the shared secret (coturn: <code>--use-auth-secret --static-auth-secret</code>).",
            },
        ),
        ("Webhook", {"fields": ["webhook_url", "webhook_secret"]}),
        ("History", {"fields": ["created_at", "updated_at"]}),
    ]

    @admin.display(description="concurrent limit", ordering="concurrent_limit")
    def limit(self, app):
        return app.concurrent_limit or f"{options().concurrent_limit} (default)"

    @admin.display(description="ICE servers", boolean=True)
    def ice(self, app):
        return bool(app.ice_urls)

    @admin.display(description="webhook", boolean=True)
    def webhook(self, app):
        return bool(app.webhook_url)

    def save_model(self, request, obj, form, change):
        if form.cleaned_data.get("rotate_token_secret"):
            obj.token_secret = new_token_secret()
            messages.warning(
                request,
                f"The token secret of {obj.key} was rotated: tokens signed with the old one are refused "
                f"within {options().app_cache / 1000:g} s.",
            )
        super().save_model(request, obj, form, change)
