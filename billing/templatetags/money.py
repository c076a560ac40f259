"""Money in templates, written as every page writes it (``core.money``: the one formatter)."""

from __future__ import annotations

from decimal import Decimal

from django import template

from core import money

register = template.Library()
_THOUSAND = Decimal(1000)


def _value(value):
    """A template's missing value (``""``, as Django renders an unknown variable) is no value."""
    return None if value is None or value == "" else value


@register.filter
def aud(value) -> str:
    """``A$1,234.50`` from dollars (Decimal, int or float); empty for None."""
    return money.format_aud(_value(value))


@register.filter
def cents_aud(value) -> str:
    """``A$1,234.50`` from whole cents (Stripe's amounts)."""
    return "" if _value(value) is None else money.format_aud(Decimal(value) / 100)


@register.filter
def per_million(per_1k) -> str:
    """A price stored per 1,000 tokens, as its price per million: ``A$0.30`` (where the column says the unit)."""
    return "" if _value(per_1k) is None else money.format_price(Decimal(per_1k) * _THOUSAND)


@register.filter
def aud_per_million(per_1m) -> str:
    """A price per million tokens (a resolved price's micro-A$ per token): ``A$0.30``; empty for None."""
    return money.format_price(_value(per_1m))


@register.filter
def unit_price(per_1m) -> str:
    """A price per million tokens with its unit: ``A$0.30 per 1M tokens``; empty for None."""
    return money.format_unit_price(_value(per_1m))


@register.filter
def unit_price_1k(per_1k) -> str:
    """A price stored per 1,000 tokens, with its unit: ``A$0.30 per 1M tokens``; empty for None."""
    return "" if _value(per_1k) is None else money.format_unit_price(Decimal(per_1k) * _THOUSAND)


@register.filter
def cost(value) -> str:
    """One request's cost: ``A$0.000324``, ``A$1.25``; empty for None."""
    return money.format_cost(_value(value))
