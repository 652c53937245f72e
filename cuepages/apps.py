from django.apps import AppConfig


class CuepagesConfig(AppConfig):
    name = "cuepages"
    verbose_name = "Cue pages"

    def ready(self):
        from cuepages import checks  # noqa: F401  (registers the system checks)
