"""The site's ASGI entry: Django's application, wrapped by the PeerJS app's (its socket, the worker's lifespan).

Served by the subclasses of signaling/servers/ (deploy/worker-entrypoint.sh,
``manage.py runserver``).
"""
import os

from django.core.asgi import get_asgi_application
from django.core.exceptions import ImproperlyConfigured

import signaling.asgi

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "p2psite.settings")
# A configuration error (a missing secret, a bad PEERJS_* value) stops the
# worker with its message alone, under any server: a traceback through the
# server's loader would bury it.
try:
    application = signaling.asgi.wrap(get_asgi_application())
except ImproperlyConfigured as exc:
    raise SystemExit(f"error: {exc}") from None
