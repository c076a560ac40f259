"""How the quota pages write amounts, sources and reset times; and a key's quota section, for tenants' key page
(tenants imports nothing from billing, so its templates ask billing for the section)."""

from __future__ import annotations

from django import template
from django.utils import timezone

from billing.quota_reads import quota_report
from core.quotas import format_aud

register = template.Library()

_SOURCES = {
    "plan": "Plan",
    "override": "Set for this organisation",
    "key": "This key",
    "capped": "The organisation's (the key's own is higher)",
}


@register.filter
def quota_amount(value, is_money: bool = False) -> str:
    """600 → "600", 1234567 → "1,234,567", spend → "A$12.34"; nothing → "No limit"."""
    if value is None:
        return "No limit"
    if is_money:
        return format_aud(value)
    return f"{int(value):,}"


@register.filter
def quota_source(source: str, plan=None) -> str:
    if not source:
        return "—"
    if source == "plan" and plan is not None:
        return f"Plan ({plan.name})"
    return _SOURCES.get(source, source)


@register.filter
def quota_reset(meter) -> str:
    """When the meter's window ends, in Sydney time: the time of day for per-minute windows, the date for days
    and months; a concurrency slot frees when its request ends."""
    if meter.resets_at is None:
        return "As requests finish"
    local = timezone.localtime(meter.resets_at)
    if meter.kind in ("rpm", "tpm"):
        return local.strftime("%H:%M:%S %Z")
    return f"{local.day} {local.strftime('%b %Y %H:%M %Z')}"


@register.inclusion_tag("billing/partials/key_quota.html")
def key_quota(tenant, api_key) -> dict:
    """``{% key_quota tenant api_key %}``: the key's own limits beside its organisation's, and what the key has
    used in the current windows, as the limiter counted it."""
    return {"key_quota": quota_report(tenant=tenant, api_keys=[api_key]).keys[0]}
