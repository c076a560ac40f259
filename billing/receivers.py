"""Billing's side of what tenants announces (``tenants.signals``)."""

from __future__ import annotations

from django.dispatch import receiver

from billing import snapshot
from tenants.signals import tenant_changed


@receiver(tenant_changed, dispatch_uid="billing.publish_changed_tenant")
def publish_changed_tenant(*, tenant, **_kwargs) -> None:
    snapshot.publish_tenant(tenant)
