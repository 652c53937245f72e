"""System checks of the cue pages' settings (run by manage.py check, migrate, runserver)."""
from django.conf import settings
from django.core import checks


@checks.register(checks.Tags.security)
def share_link_host(app_configs, **kwargs):
    """With any Host allowed, the share link and QR code follow whatever Host a client sends.

    That is safe for the server (such answers are private to the client that
    asked), but the link a receiver shows is then only as good as the address
    it was opened by: a fixed CUEPAGES_PUBLIC_URL is the dependable choice.
    """
    if "*" in settings.ALLOWED_HOSTS and not getattr(settings, "CUEPAGES_PUBLIC_URL", ""):
        return [
            checks.Warning(
                "DJANGO_ALLOWED_HOSTS contains '*': the receivers' share links and QR codes "
                "are built from whatever Host header each request carries.",
                hint="Set CUEPAGES_PUBLIC_URL (e.g. http://192.168.1.20:8080) to the address "
                "the senders' devices should use, or list the host names in DJANGO_ALLOWED_HOSTS.",
                id="cuepages.W001",
            )
        ]
    return []
