"""Settings of the cue pages, parsed from the environment.

``p2psite.settings`` calls these in its "Cue pages" block; each raises
ImproperlyConfigured naming the variable, so a typo in a JSON list of ICE
servers stops start-up instead of silently leaving every browser without
STUN/TURN on show night.
"""
import json
import os
from urllib.parse import urlsplit

from django.core.exceptions import ImproperlyConfigured

ICE_URL_SCHEMES = ("stun:", "stuns:", "turn:", "turns:")


def ice_servers(name, default=(), environ=None):
    """A JSON list of RTCIceServer dicts: ``[{"urls": "stun:host:3478"}, ...]``."""
    environ = os.environ if environ is None else environ
    raw = environ.get(name)
    if raw is None or not raw.strip():
        return list(default)
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name} is not valid JSON ({exc}): {raw!r}") from None
    if not isinstance(value, list):
        raise ImproperlyConfigured(f"{name} must be a JSON list of ICE servers, got {raw!r}")
    for index, server in enumerate(value):
        where = f"{name}[{index}]"
        if not isinstance(server, dict) or "urls" not in server:
            raise ImproperlyConfigured(f'{where} must be an object with "urls", got {server!r}')
        urls = server["urls"] if isinstance(server["urls"], list) else [server["urls"]]
        if not urls or not all(isinstance(url, str) and url.startswith(ICE_URL_SCHEMES) for url in urls):
            raise ImproperlyConfigured(
                f"{where}.urls must be stun:/stuns:/turn:/turns: URLs, got {server['urls']!r}"
            )
        for field in ("username", "credential"):
            if field in server and not isinstance(server[field], str):
                raise ImproperlyConfigured(f"{where}.{field} must be a string")
    return value


def public_url(name, default="", environ=None):
    """Base URL for the receiver's share link (``http://192.168.1.20:8080``), or ""."""
    environ = os.environ if environ is None else environ
    raw = (environ.get(name) or default).strip()
    if not raw:
        return ""
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise ImproperlyConfigured(
            f"{name} must be an http(s) base URL such as http://192.168.1.20:8080, got {raw!r}"
        )
    return raw.rstrip("/")
