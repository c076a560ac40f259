"""Amounts in Australian dollars, written as every page writes them (``core.quotas.format_aud``)."""

from __future__ import annotations

from decimal import Decimal

from django import template

from core.quotas import format_aud

register = template.Library()


@register.filter
def aud(value) -> str:
    """``A$1,234.50`` from dollars (Decimal, int or float); empty for None."""
    return format_aud(value)


@register.filter
def cents_aud(value) -> str:
    """``A$1,234.50`` from whole cents (Stripe's amounts)."""
    return "" if value is None else format_aud(Decimal(value) / 100)


@register.filter
def per_million(per_1k) -> str:
    """A per-1,000-token price as the price of a million tokens, to the cent or finer when it is smaller."""
    value = Decimal(per_1k) * 1000
    return f"A${value.normalize():,f}" if value != value.quantize(Decimal("0.01")) else format_aud(value)


@register.filter
def aud_per_million(per_1m) -> str:
    """A price per million tokens (a resolved price's micro-A$ per token), to the cent or finer when it is
    smaller (plan prices carry four decimals); empty for None."""
    if per_1m is None:
        return ""
    value = Decimal(per_1m)
    return f"A${value.normalize():,f}" if value != value.quantize(Decimal("0.01")) else format_aud(value)
