from django.apps import AppConfig


class CuepagesConfig(AppConfig):
    name = "cuepages"
    verbose_name = "Cue pages"
