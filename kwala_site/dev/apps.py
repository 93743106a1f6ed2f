from django.apps import AppConfig


class DevConfig(AppConfig):
    """Registered only so `manage.py dev` is found; it has no models."""

    name = "kwala_site.dev"
    label = "kwala_dev"
    verbose_name = "Development tooling"
