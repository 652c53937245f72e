"""WSGI entry point, for the admin and pages alone (signaling needs ASGI)."""
import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "p2psite.settings")
application = get_wsgi_application()
