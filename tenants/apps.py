from django.apps import AppConfig


class TenantsConfig(AppConfig):
    name = "tenants"
    verbose_name = "Tenants and accounts"

    def ready(self) -> None:
        from django.contrib import admin

        from tenants import receivers  # noqa: F401  (connects the audit receivers)
        from tenants.admin import make_read_only

        # django.contrib.admin comes first in INSTALLED_APPS, so every app's admin module is loaded by now.
        make_read_only(admin.site)
