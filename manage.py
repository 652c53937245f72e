#!/usr/bin/env python
"""Django's command-line utility for administrative tasks."""
import os
import sys


def main():
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "p2psite.settings")
    import django
    from django.core.exceptions import ImproperlyConfigured
    from django.core.management import execute_from_command_line

    try:
        # Set up before the command runs, so that a configuration error stops
        # every command the same way (runserver's reloader would print a
        # traceback and wait for a file to change).
        django.setup()
        execute_from_command_line(sys.argv)
    except ImproperlyConfigured as exc:
        # A missing secret, a bad PEERJS_* value: the message says what to set.
        sys.exit(f"error: {exc}")


if __name__ == "__main__":
    main()
