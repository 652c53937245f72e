"""The seed's three pages, plus the QR code of a receiver's share link.

The pages get everything they need to reach the PeerServer from here (path,
key, ICE servers) rather than hard-coding it: host and port are the page's
own, so the same pages work on a laptop, on a theatre LAN and behind the
cluster's load balancer.

The share link is CUEPAGES_PUBLIC_URL's when set, else the request's host as
Django validated it against ALLOWED_HOSTS. A host-derived answer is only
ever the asking client's: it is marked private and varies by Host, so no
shared cache hands a forged Host's QR code to anyone else.
"""
import io

import segno
from django.conf import settings
from django.db import DatabaseError
from django.http import HttpResponse, HttpResponseBadRequest
from django.shortcuts import render
from django.urls import reverse
from django.utils.cache import patch_cache_control, patch_vary_headers
from django.utils.http import urlencode
from django.views.decorators.http import require_safe

from cuepages.csp import content_security_policy
from signaling.applications import get_app
from signaling.conf import options
from signaling.protocol import check_id


def ice_servers_url(key):
    """Where the pages fetch fresh TURN credentials, when the default app hands them out; else None.

    The pages then use CUEPAGES_ICE_SERVERS, as they do when the fetch fails.
    """
    try:
        app = get_app(key)
    except DatabaseError:
        return None  # the pages still work on a LAN without STUN/TURN
    if app is None or not app.has_ice_servers:
        return None
    return reverse("peerjs-ice-servers", kwargs={"key": key})


def client_config():
    """What the pages' PeerJS clients need besides the page's own host and port."""
    peerjs = options()
    return {
        "path": peerjs.path or "/",
        "key": peerjs.key,
        "iceServers": getattr(settings, "CUEPAGES_ICE_SERVERS", []),
        "iceServersUrl": ice_servers_url(peerjs.key),
        "idMaxLength": peerjs.id_max_length,
    }


def public_url():
    return getattr(settings, "CUEPAGES_PUBLIC_URL", "")


def share_url(request, receiver_id):
    """The sender link for a receiver, absolute, as a phone scanning the QR code needs it."""
    relative = f"{reverse('send')}?{urlencode({'id': receiver_id})}"
    base = public_url()
    # build_absolute_uri goes through request.get_host(): an ALLOWED_HOSTS check.
    return f"{base}{relative}" if base else request.build_absolute_uri(relative)


def page(template):
    @require_safe
    @content_security_policy
    def view(request):
        config = {
            **client_config(),
            # Where the receiver's share link and its QR code point.
            "sendUrl": reverse("send"),
            "qrUrl": reverse("share-qr"),
            "publicUrl": public_url(),
        }
        return render(request, template, {"client_config": config})

    return view


index = page("cuepages/index.html")
receive = page("cuepages/receive.html")
send = page("cuepages/send.html")


@require_safe
def share_qr(request):
    """An SVG QR code of the sender link for ``?id=``, drawn on the server (segno)."""
    receiver_id = request.GET.get("id", "")
    if not receiver_id or check_id(receiver_id, options().id_max_length):
        return HttpResponseBadRequest("id must be a valid peer id\n", content_type="text/plain")
    link = share_url(request, receiver_id)
    qr = segno.make(link, error="m")
    svg = io.BytesIO()
    # The title names the link, for whoever opens the image on its own.
    qr.save(svg, kind="svg", scale=8, border=2, xmldecl=False, title=f"Sender link: {link}", dark="#000", light="#fff")
    response = HttpResponse(svg.getvalue(), content_type="image/svg+xml")
    if public_url():
        response["Cache-Control"] = "public, max-age=3600"
    else:
        patch_cache_control(response, private=True, max_age=3600)
        patch_vary_headers(response, ["Host"])
    response["X-Content-Type-Options"] = "nosniff"
    return response
