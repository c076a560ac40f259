"""Effective limits from the database: plan defaults → tenant override (staff) → key override (never above the
tenant's), by the one rule of ``core.quotas.resolve``.

The control plane publishes them with the tenant and key records; the data plane enforces them atomically in
Redis (``inference.gateway.limits``).
"""

from __future__ import annotations

from decimal import Decimal

from billing.models import Plan, TenantQuota
from core import quotas
from core.quotas import FIELDS as LIMIT_FIELDS
from core.quotas import aud_to_micro, for_data_plane

__all__ = ["LIMIT_FIELDS", "aud_to_micro", "default_plan", "for_data_plane", "key_limits", "row_limits",
           "tenant_limits", "tenant_limits_resolved"]


def default_plan() -> Plan | None:
    return Plan.objects.filter(is_default=True).first()


def row_limits(row) -> dict[str, Decimal | int | None] | None:
    """The limit fields of a plan, an override or a key, by field name (None for no row)."""
    return None if row is None else {name: getattr(row, name) for name in LIMIT_FIELDS}


def tenant_limits_resolved(quota: TenantQuota | None, default: Plan | None) -> tuple[quotas.Resolved, Plan | None]:
    """The tenant's effective limits from rows already fetched, and the plan they come from."""
    plan = quota.plan if quota is not None and quota.plan is not None else default
    return quotas.resolve(row_limits(plan), row_limits(quota)), plan


def tenant_limits(tenant) -> dict[str, Decimal | int | None]:
    """The tenant's limits by field name: its override where staff set one, else its plan's."""
    quota = TenantQuota.objects.filter(tenant=tenant).select_related("plan").first()
    default = default_plan() if quota is None or quota.plan is None else None
    return tenant_limits_resolved(quota, default)[0].values


def key_limits(api_key, tenant_effective: dict) -> dict[str, Decimal | int | None]:
    """A key's own limits, capped at the tenant's (a key can only narrow what its tenant may do)."""
    return quotas.resolve_key(row_limits(api_key), tenant_effective)
