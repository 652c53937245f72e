"""The project's settings plus tests.signal_probe: for workers whose signals a test watches."""
from p2psite.settings import *  # noqa: F403
from p2psite.settings import INSTALLED_APPS

INSTALLED_APPS = [*INSTALLED_APPS, "tests.signal_probe.SignalProbeConfig"]
