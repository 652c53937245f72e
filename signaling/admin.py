import datetime
import logging

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.db.models import Count, IntegerField, OuterRef, Q, Subquery
from django.db.models.constants import LOOKUP_SEP
from django.http import JsonResponse
from django.template.response import TemplateResponse
from django.urls import path
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from signaling import broadcasts, registry
from signaling.conf import options
from signaling.http import client_group, request_address
from signaling.models import App, Ban, Overview, Peer, QueuedMessage, Worker, new_token_secret

logger = logging.getLogger(__name__)

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
    earn fresh tries by writing its own X-Forwarded-For. An IPv6 client
    counts as its network (signaling.http.client_group), so that the other
    addresses of its /64 bring no fresh tries either.
    """
    o = options()
    return client_group(request_address(request, o), o)


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
    actions = ["disconnect", "disconnect_and_ban"]

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
        asked, missed = 0, []
        live = set(registry.live_workers(options().worker_timeout))
        for peer in queryset:
            if peer.worker not in live:
                # Its worker died: nobody would hear the request.
                missed.append(f"{peer.peer_id} (worker {peer.worker}: not alive)")
                continue
            try:
                broadcasts.request_disconnect(peer)
            except Exception as exc:
                # The channel layer is away: say so, rather than fail the whole page.
                missed.append(f"{peer.peer_id} (worker {peer.worker}: {type(exc).__name__})")
            else:
                asked += 1
        if asked:
            self.message_user(request, f"Asked to disconnect {asked} peer(s).", messages.SUCCESS)
        if missed:
            self.message_user(
                request,
                f"Could not reach the worker of {len(missed)} peer(s): {', '.join(missed)}. "
                "If that worker is dead, its rows are removed within PEERJS_WORKER_TIMEOUT "
                f"({options().worker_timeout / 1000:g} s); else try again once the channel layer (Redis) is back.",
                messages.WARNING,
            )

    def has_disconnect_permission(self, request):
        return request.user.has_perm("signaling.delete_peer")

    @admin.action(description="Disconnect and ban the selected peers", permissions=["ban"])
    def disconnect_and_ban(self, request, queryset):
        """Ban the peers' ids (and, if asked, their addresses) for a while; every worker closes their sockets.

        An intermediate page first, as the admin's delete confirmation: how
        long, whether the addresses too, and why.
        """
        peers = list(queryset)
        form = PeerBanForm(request.POST if "post" in request.POST else None)
        if form.is_valid():
            expires_at = form.expires_at()
            rows, addresses = [], set()
            for peer in peers:
                common = {"key": peer.key, "reason": form.cleaned_data["reason"], "expires_at": expires_at,
                          "created_by": request.user.get_username()}
                rows.append(Ban(peer_id=peer.peer_id, **common))
                if form.cleaned_data["ban_address"] and peer.address and (peer.key, peer.address) not in addresses:
                    addresses.add((peer.key, peer.address))
                    rows.append(Ban(address=peer.address, **common))
            Ban.objects.bulk_create(rows)
            until = moment(expires_at) + f" {settings.TIME_ZONE}" if expires_at else "it is lifted"
            self.message_user(
                request,
                f"Banned {len(peers)} peer(s)" + (f" and {len(addresses)} address(es)" if addresses else "")
                + f" until {until}; their sockets are being closed.",
                messages.SUCCESS,
            )
            announce_bans(request)
            return None  # back to the list
        context = {
            **self.admin_site.each_context(request),
            "title": "Disconnect and ban",
            "opts": self.model._meta,
            "peers": peers,
            "form": form,
            "media": self.media + form.media,
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
        }
        return TemplateResponse(request, "admin/signaling/peer/ban_confirmation.html", context)

    def has_ban_permission(self, request):
        return request.user.has_perm("signaling.add_ban")


DURATIONS = [
    (600, "10 minutes"),
    (3600, "1 hour"),
    (86400, "1 day"),
    (7 * 86400, "1 week"),
    (0, "Until lifted"),
]


class DurationField(forms.TypedChoiceField):
    def __init__(self, **kwargs):
        super().__init__(choices=DURATIONS, coerce=int, **kwargs)


def ends_after(seconds):
    """When a ban of ``seconds`` made now ends; None (0 seconds) until it is lifted."""
    return timezone.now() + datetime.timedelta(seconds=seconds) if seconds else None


class PeerBanForm(forms.Form):
    duration = DurationField(initial=3600, label="Ban for")
    ban_address = forms.BooleanField(
        required=False,
        label="Ban their client addresses too",
        help_text="Refuses everyone behind each address: behind a NAT (a school, a theatre), that is many people.",
    )
    reason = forms.CharField(max_length=200, required=False, help_text="Shown to the banned client.")

    def expires_at(self):
        return ends_after(self.cleaned_data["duration"])


def announce_bans(request):
    """Once the change is committed, have every live worker re-read the bans (and close what they now name)."""

    def announce():
        try:
            broadcasts.announce_bans()
        except Exception as exc:
            logger.warning("could not tell the workers about a change of bans: %r", exc)
            messages.warning(
                request,
                "The workers could not be told at once (Redis away?): they apply the change "
                f"within PEERJS_BAN_REFRESH ({options().ban_refresh / 1000:g} s).",
            )

    transaction.on_commit(announce)


class BanForm(forms.ModelForm):
    duration = DurationField(label="Ban for", initial=3600, required=False)

    class Meta:
        model = Ban
        fields = ["key", "peer_id", "address", "reason"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.instance.pk is None:
            self.fields["duration"].required = True  # shown when a ban is added, not when one is edited


class ActiveFilter(admin.SimpleListFilter):
    title = "in force"
    parameter_name = "active"

    def lookups(self, request, model_admin):
        return [("yes", "In force"), ("no", "Ended")]

    def queryset(self, request, queryset):
        current = Q(expires_at__isnull=True) | Q(expires_at__gt=timezone.now())
        if self.value() == "yes":
            return queryset.filter(current)
        if self.value() == "no":
            return queryset.exclude(current)
        return queryset


@admin.register(Ban)
class BanAdmin(admin.ModelAdmin):
    """Bans: listed, searchable by peer id and address, and lifted (deleted) here; every worker hears of it."""

    form = BanForm
    list_display = ["target", "key", "reason", "created", "until", "in_force", "created_by"]
    list_filter = [ActiveFilter, "key"]
    search_fields = ["peer_id", "address"]
    actions = ["lift"]

    class Media:
        css = {"all": ["signaling/admin.css"]}

    def get_fields(self, request, obj=None):
        fields = ["key", "peer_id", "address", "reason"]
        return fields + (["until", "created_by"] if obj else ["duration"])

    def get_readonly_fields(self, request, obj=None):
        # What a ban names is fixed once made: lift it and make another.
        return ["key", "peer_id", "address", "until", "created_by"] if obj else []

    @admin.display(description="banned")
    def target(self, ban):
        if ban.peer_id:
            return f"peer {ban.peer_id}"
        if ":" in ban.address:  # IPv6: the ban covers the address's network (signaling.bans.BanList)
            return f"address {ban.address} (its /{options().ipv6_prefix})"
        return f"address {ban.address}"

    @admin.display(description=f"created ({settings.TIME_ZONE})", ordering="created_at")
    def created(self, ban):
        return moment(ban.created_at)

    @admin.display(description=f"until ({settings.TIME_ZONE})", ordering="expires_at")
    def until(self, ban):
        return moment(ban.expires_at) if ban.expires_at else "lifted by hand"

    @admin.display(description="in force", boolean=True)
    def in_force(self, ban):
        return ban.active

    def save_model(self, request, obj, form, change):
        if not change:
            obj.created_by = request.user.get_username()
            obj.expires_at = ends_after(form.cleaned_data["duration"])
        super().save_model(request, obj, form, change)
        announce_bans(request)

    def delete_model(self, request, obj):
        super().delete_model(request, obj)
        announce_bans(request)

    def delete_queryset(self, request, queryset):
        super().delete_queryset(request, queryset)
        announce_bans(request)

    @admin.action(description="Lift the selected bans", permissions=["delete"])
    def lift(self, request, queryset):
        count, _ = queryset.delete()
        announce_bans(request)
        self.message_user(request, f"Lifted {count} ban(s).", messages.SUCCESS)


@admin.register(Worker)
class WorkerAdmin(ReadOnlyAdmin):
    list_display = ["name", "host", "pid", "peers", "started", "beat"]
    fields = ["name", "host", "pid", "peers", "started", "beat", "figures"]
    readonly_fields = fields

    class Media:
        css = {"all": ["signaling/admin.css"]}

    @admin.display(description=f"started ({settings.TIME_ZONE})", ordering="started_at")
    def started(self, worker):
        return moment(worker.started_at)

    @admin.display(description=f"last beat ({settings.TIME_ZONE})", ordering="last_beat")
    def beat(self, worker):
        return moment(worker.last_beat)

    @admin.display(description="as of its last beat")
    def figures(self, worker):
        """What the worker counted (its ``stats``), as the overview reads them: a table, not JSON."""
        from signaling.overview import stats_rows  # the overview imports this module

        return format_html(
            '<table class="worker-figures"><tbody>{}</tbody></table>',
            format_html_join("", '<tr><th scope="row">{}</th><td>{}</td></tr>', stats_rows(worker)),
        )

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


@admin.register(Overview)
class OverviewAdmin(ReadOnlyAdmin):
    """The cluster overview (signaling.overview), listed in the admin's index under the app.

    Its pages are the overview and the figures it refreshes from, nothing
    else; for those who may view the workers, through the admin's own gate
    (anyone else is sent to its login page).
    """

    def get_urls(self):
        names = f"{self.opts.app_label}_{self.opts.model_name}"
        return [
            path("", self.admin_site.admin_view(self.changelist_view), name=f"{names}_changelist"),
            path("data/", self.admin_site.admin_view(self.data_view), name=f"{names}_data"),
        ]

    def has_view_permission(self, request, obj=None):
        return request.user.has_perm("signaling.view_worker")

    def changelist_view(self, request, extra_context=None):
        from signaling.overview import figures  # the overview imports this module

        if not self.has_view_permission(request):
            raise PermissionDenied
        o = options()
        context = {
            **self.admin_site.each_context(request),
            "title": "Cluster overview",
            "opts": self.opts,
            "overview": figures(),
            "beat_seconds": o.worker_beat / 1000,
            "stale_seconds": o.worker_timeout / 1000,
            "time_zone": settings.TIME_ZONE,
            # The figures change at each beat; the beat ages by the second.
            "refresh_seconds": max(1000, o.worker_beat) / 1000,
            # Eleven columns: the navigation sidebar would squeeze them.
            "is_nav_sidebar_enabled": False,
            **(extra_context or {}),
        }
        return TemplateResponse(request, "admin/signaling/overview.html", context)

    def data_view(self, request):
        from signaling.overview import figures

        if not self.has_view_permission(request):
            raise PermissionDenied
        return JsonResponse(figures())


@admin.register(QueuedMessage)
class QueuedMessageAdmin(ReadOnlyAdmin):
    list_display = ["key", "src", "dst", "size", "queued_at", "expires_at"]
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
        ("Who may connect", {"fields": ["allowed_origins", "concurrent_limit", "allow_discovery", "takeover_same_address"]}),
        (
            "Authentication",
            {
                "fields": ["auth", "token_secret", "rotate_token_secret"],
                "description": "With <b>Signed token</b>, the app's backend gives each browser a token for "
                "its peer id, signed with the token secret (<code>manage.py mint_token</code>, or any JWT "
                "library with HS256: see docs/apps.md). With <b>Site session</b>, "
                "only browsers logged in to this site connect.",
            },
        ),
        (
            "ICE servers (STUN/TURN)",
            {
                "fields": ["turn_urls", "turn_secret", "turn_ttl"],
                "description": "Handed out by <code>GET {base}/KEY/ice-servers</code>, with TURN credentials "
                "made from the shared secret (coturn: <code>--use-auth-secret --static-auth-secret</code>). "
                "With authentication <b>None</b> anyone who finds the app's page gets them, so they last at "
                "most PEERJS_TURN_TTL_WITHOUT_AUTH seconds, whatever the lifetime below.",
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

    def get_fieldsets(self, request, obj=None):
        if obj is not None:
            return self.fieldsets
        # A new app's secret is made when it is saved: nothing to rotate yet.
        return [
            (name, {**options, "fields": [f for f in options["fields"] if f != "rotate_token_secret"]})
            for name, options in self.fieldsets
        ]

    def save_model(self, request, obj, form, change):
        if change and form.cleaned_data.get("rotate_token_secret"):
            obj.token_secret = new_token_secret()
            messages.warning(
                request,
                f"The token secret of {obj.key} was rotated: tokens signed with the old one are refused "
                f"within {options().app_cache / 1000:g} s.",
            )
        super().save_model(request, obj, form, change)
