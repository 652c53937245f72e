"""The Content-Security-Policy of the cue pages.

Peer text never reaches the DOM as HTML (the scripts only make text nodes);
this policy is the second line: no inline script, no script from anywhere but
this server, so even a slip in the scripts cannot run code a peer sent.
"""
import functools

from django.utils.cache import patch_cache_control, patch_vary_headers


def policy(request):
    # request.get_host(): checked against ALLOWED_HOSTS, and always against
    # the syntax of a host (no ";" or space can reach the policy).
    host = request.get_host()
    return "; ".join(
        [
            "default-src 'self'",
            "script-src 'self'",
            "style-src 'self'",
            "img-src 'self'",
            # The signaling socket; 'self' alone does not cover ws: in every browser.
            f"connect-src 'self' ws://{host} wss://{host}",
            "object-src 'none'",
            "base-uri 'none'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        ]
    )


def content_security_policy(view):
    @functools.wraps(view)
    def wrapped(request, *args, **kwargs):
        response = view(request, *args, **kwargs)
        response.setdefault("Content-Security-Policy", policy(request))
        # The policy names the Host the page was asked by: the page is that
        # client's alone, never a shared cache's to hand to another host.
        patch_vary_headers(response, ["Host"])
        patch_cache_control(response, private=True, no_cache=True)
        response.setdefault("Referrer-Policy", "same-origin")
        response.setdefault("X-Content-Type-Options", "nosniff")
        return response

    return wrapped
