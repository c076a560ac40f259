"""Two numbers tenants uses but does not own, asked of the app that owns them through functions it installs.

Billing builds on tenants (its plans, overrides and usage events point at ``Tenant``), so tenants imports
nothing from billing. Yet tenants needs two of billing's numbers:

- when each key last served a request (from billing's usage events), which the key pages, the staff console
  and the management API's key endpoints all show;
- the organisation's effective limits (billing's plans and overrides), above which a tenant may not set a
  key's own limits (``services.api_key_create`` / ``api_key_set_limits``), and which the key forms quote.

Billing installs one function for each from its ``AppConfig.ready()``. A function rather than a template tag,
because the management API's JSON needs "last used" as much as the pages do, and the ceiling is a rule of the
services, not of a page; and rather than reaching billing's models through the app registry, which would only
hide the dependency from the import check while keeping it. Nothing installed is a configuration error, raised
loudly: a ceiling check that silently passed would let a key promise a limit the data plane never applies.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING

from django.core.exceptions import ImproperlyConfigured

if TYPE_CHECKING:
    from tenants.models import Tenant

TenantLimits = Callable[["Tenant"], Mapping[str, int | Decimal | None]]
KeysLastUsed = Callable[..., Mapping[str, datetime]]  # (*, tenant, key_ids) -> {key_id: when}

_tenant_limits: TenantLimits | None = None
_keys_last_used: KeysLastUsed | None = None


def install(*, tenant_limits: TenantLimits, keys_last_used: KeysLastUsed) -> None:
    """Called once, by the app that owns the numbers, when Django is ready."""
    global _tenant_limits, _keys_last_used
    _tenant_limits, _keys_last_used = tenant_limits, keys_last_used


def _installed(function, name: str):
    if function is None:
        raise ImproperlyConfigured(f"tenants.hooks.{name} is not installed: is billing in INSTALLED_APPS?")
    return function


def tenant_limits(tenant: Tenant) -> Mapping[str, int | Decimal | None]:
    """The tenant's effective limits by field name (``None``: no limit of that kind)."""
    return _installed(_tenant_limits, "tenant_limits")(tenant)


def keys_last_used(*, tenant: Tenant, key_ids: list[str]) -> Mapping[str, datetime]:
    """When each of the tenant's keys last served a request; keys never used are absent."""
    return _installed(_keys_last_used, "keys_last_used")(tenant=tenant, key_ids=key_ids)
