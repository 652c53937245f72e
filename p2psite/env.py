"""Read typed values from the environment.

Every helper raises ImproperlyConfigured naming the variable, so a bad value
stops start-up with a message an operator can act on instead of a traceback
from deep inside the server.
"""
import os

from django.core.exceptions import ImproperlyConfigured

TRUE = {"1", "true", "yes", "on"}
FALSE = {"0", "false", "no", "off", ""}


def _raw(name, environ):
    environ = os.environ if environ is None else environ
    return environ.get(name)


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
