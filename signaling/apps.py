from django.apps import AppConfig
from django.core.signals import setting_changed


def _forget_options(setting, **kwargs):
    if setting == "PEERJS":
        from signaling.applications import forget
        from signaling.conf import options

        options.cache_clear()
        forget()  # the default app is made of these options


class SignalingConfig(AppConfig):
    name = "signaling"
    verbose_name = "PeerJS signaling"

    def ready(self):
        from signaling.conf import options

        # Validate at start-up: a bad option stops the server, naming the variable.
        options()
        setting_changed.connect(_forget_options)

        from signaling import checks  # noqa: F401 (registers the channel layers' checks)

        from signaling import webhooks

        webhooks.connect_receivers()
