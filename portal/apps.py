from django.apps import AppConfig


class PortalConfig(AppConfig):
    name = "portal"
    verbose_name = "Portal"

    def ready(self) -> None:
        from django.conf import settings

        from core import redis

        redis.configure(settings)  # core is Django-free: it reads the Redis settings from here on
