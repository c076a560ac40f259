from django.apps import AppConfig


class BillingConfig(AppConfig):
    name = "billing"
    verbose_name = "Billing and usage"

    def ready(self) -> None:
        from billing import personal_data, receivers  # noqa: F401 (connects the receivers)
        from billing.limits import tenant_limits
        from billing.selectors import key_last_used
        from tenants import hooks

        # Tenants imports nothing from billing but enforces and shows two of its numbers (see tenants.hooks).
        hooks.install(tenant_limits=tenant_limits, keys_last_used=key_last_used)
        personal_data.register_holder()  # the access records, for individuals' requests
