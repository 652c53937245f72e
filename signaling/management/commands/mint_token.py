"""manage.py mint_token --key K --id ID [--ttl SECONDS]: print a connect token.

For trying an app out, and for backends that would rather run a command
than sign a JWT themselves. The token is what the browser passes as
PeerJS's ``token`` option: ``new Peer(ID, {key: K, token})``.
"""
from django.core.management.base import BaseCommand, CommandError

from signaling import conf, tokens
from signaling.applications import get_app


class Command(BaseCommand):
    help = "Print a signed connect token that lets peer ID connect with key K."

    def add_arguments(self, parser):
        parser.add_argument("--key", required=True, help="the app's PeerJS key")
        parser.add_argument("--id", required=True, dest="peer_id", help="the peer id the token is for")
        parser.add_argument(
            "--ttl", type=int, default=tokens.DEFAULT_TTL,
            help=f"seconds the token is valid (default {tokens.DEFAULT_TTL})",
        )

    def handle(self, *args, key, peer_id, ttl, **options):
        app = get_app(key)
        if app is None:
            raise CommandError(f"No app with key {key!r}: add one in the admin (Apps), or use PEERJS_KEY.")
        if app.auth != conf.AUTH_TOKEN:
            self.stderr.write(f"Note: the app {key!r} does not ask for tokens (authentication: {app.auth}).")
        try:
            token = tokens.mint(app, peer_id, ttl)
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(token)
