"""Read typed values from the environment.

The app's options (signaling.conf.from_environ) are read with these, and a
site may read its own settings with them too (p2psite.settings does).
Every helper raises ImproperlyConfigured naming the variable, so a bad value
stops start-up with a message an operator can act on instead of a traceback
from deep inside the server.
"""
import os

from django.core.exceptions import ImproperlyConfigured

TRUE = {"1", "true", "yes", "on"}
FALSE = {"0", "false", "no", "off", ""}


def _raw(name, environ):
    """NAME's value; or, when only NAME_FILE is set, that file's contents (the
    Docker convention for secrets: docker-compose.yml's workers read theirs so)."""
    environ = os.environ if environ is None else environ
    value = environ.get(name)
    path = environ.get(f"{name}_FILE")
    if value is None and path:
        try:
            with open(path, encoding="utf-8") as file:
                return file.read().rstrip("\n")
        except OSError as error:
            raise ImproperlyConfigured(f"{name}_FILE={path!r} cannot be read: {error.strerror}.") from None
    return value


def string(name, default, environ=None):
    value = _raw(name, environ)
    return default if value is None else value


def boolean(name, default, environ=None):
    value = _raw(name, environ)
    if value is None:
        return default
    lowered = value.strip().lower()
    if lowered in TRUE:
        return True
    if lowered in FALSE:
        return False
    raise ImproperlyConfigured(
        f"{name}={value!r} is not a boolean: use one of 1/0, true/false, yes/no, on/off."
    )


def integer(name, default, environ=None, minimum=None):
    value = _raw(name, environ)
    if value is None:
        return default
    try:
        number = int(value.strip())
    except ValueError:
        raise ImproperlyConfigured(f"{name}={value!r} is not an integer.") from None
    if minimum is not None and number < minimum:
        raise ImproperlyConfigured(f"{name}={value!r} must be at least {minimum}.")
    return number


def string_list(name, default, environ=None):
    """A comma-separated list; blanks around items are ignored."""
    value = _raw(name, environ)
    if value is None:
        return list(default)
    return [item.strip() for item in value.split(",") if item.strip()]
