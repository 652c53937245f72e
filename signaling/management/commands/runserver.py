"""``manage.py runserver``: daphne's development server, as signaling.servers.daphne adapts it.

It takes the place of daphne's own command when ``signaling`` comes before
``daphne`` in INSTALLED_APPS.
"""
# First: without daphne at its tested version (the app's "daphne" extra) it
# stops with a line that says so, not an ImportError from the next import.
from signaling.servers.daphne import PeerServer

from daphne.management.commands.runserver import Command as DaphneRunserver  # noqa: E402,I001


class Command(DaphneRunserver):
    server_cls = PeerServer
