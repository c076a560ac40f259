"""Billing's usage sections on tenants' pages (tenants imports nothing from billing, so its templates ask)."""

from __future__ import annotations

from django import template

from billing.selectors import usage_recent

register = template.Library()


@register.inclusion_tag("billing/partials/recent_usage.html")
def recent_usage(tenant, limit: int = 10) -> dict:
    """``{% recent_usage tenant %}``: the tenant's latest requests. The page shows it only to the roles that
    may see usage."""
    return {"recent_usage": usage_recent(tenant=tenant, limit=limit)}
