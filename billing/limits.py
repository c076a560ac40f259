"""Effective limits: plan defaults → tenant override (staff) → key override (never above the tenant's).

The control plane resolves them here and publishes them with each key's record; the data plane enforces
them atomically in Redis (``inference.gateway.limits``).
"""

from __future__ import annotations

from decimal import ROUND_CEILING, Decimal

from billing.models import Plan, TenantQuota

LIMIT_FIELDS = (
    "rpm_limit", "tpm_limit", "max_concurrent", "daily_token_limit", "monthly_token_budget", "monthly_spend_cap_aud",
)
# The names the data plane uses; spend travels in micro-AUD so Redis counts integers.
SHORT_NAMES = {
    "rpm_limit": "rpm",
    "tpm_limit": "tpm",
    "max_concurrent": "concurrent",
    "daily_token_limit": "day_tokens",
    "monthly_token_budget": "month_tokens",
    "monthly_spend_cap_aud": "month_spend",
}
MICRO = Decimal(1_000_000)


def aud_to_micro(value: Decimal) -> int:
    return int((value * MICRO).to_integral_value(rounding=ROUND_CEILING))


def default_plan() -> Plan | None:
    return Plan.objects.filter(is_default=True).first()


def tenant_limits(tenant) -> dict[str, Decimal | int | None]:
    """The tenant's limits by field name: its override where staff set one, else its plan's."""
    quota = TenantQuota.objects.filter(tenant=tenant).select_related("plan").first()
    plan = quota.plan if quota and quota.plan else default_plan()
    limits = {}
    for name in LIMIT_FIELDS:
        override = getattr(quota, name) if quota else None
        limits[name] = override if override is not None else (getattr(plan, name) if plan else None)
    return limits


def key_limits(api_key, tenant_effective: dict) -> dict[str, Decimal | int | None]:
    """A key's own limits, capped at the tenant's (a key can only narrow what its tenant may do)."""
    limits = {}
    for name in LIMIT_FIELDS:
        own = getattr(api_key, name, None)
        ceiling = tenant_effective.get(name)
        if own is None:
            limits[name] = None  # the tenant-wide limit already covers this key
        elif ceiling is None:
            limits[name] = own
        else:
            limits[name] = min(own, ceiling)
    return limits


def for_data_plane(limits: dict) -> dict[str, int]:
    """Only the limits that are set, under the data plane's names, as integers."""
    published = {}
    for name, value in limits.items():
        if value is None:
            continue
        published[SHORT_NAMES[name]] = aud_to_micro(value) if name == "monthly_spend_cap_aud" else int(value)
    return published
