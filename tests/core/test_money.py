"""One money formatter (``core.money``) for every page: A$ with two decimals, unit prices as "A$0.30 per 1M
tokens", request costs below a cent to the micro-dollar; templates go through its filters, never by hand."""

from __future__ import annotations

import re
from decimal import Decimal
from pathlib import Path

import pytest
from django.template import Context, Template

from core import money, quotas


@pytest.mark.parametrize(("value", "shown"), [
    (Decimal("0.3"), "A$0.30"), (Decimal("1234.5"), "A$1,234.50"), (0, "A$0.00"), (99, "A$99.00"),
    (0.1 + 0.2, "A$0.30"), (Decimal("0.005"), "A$0.01"), (Decimal("-2.5"), "-A$2.50"), (None, ""),
])
def test_amounts_to_the_cent(value, shown):
    assert money.format_aud(value) == shown
    assert quotas.format_aud is money.format_aud  # the old name is the same function


@pytest.mark.parametrize(("per_1m", "shown"), [
    (Decimal("0.300000"), "A$0.30 per 1M tokens"), (Decimal("3"), "A$3.00 per 1M tokens"),
    (Decimal("0.0125"), "A$0.0125 per 1M tokens"), (Decimal("0.015"), "A$0.015 per 1M tokens"),
    (Decimal("1500"), "A$1,500.00 per 1M tokens"), (0, "A$0.00 per 1M tokens"),
])
def test_unit_prices_per_million_tokens(per_1m, shown):
    assert money.format_unit_price(per_1m) == shown
    assert money.format_price(per_1m) == shown.removesuffix(" per 1M tokens")


@pytest.mark.parametrize(("cost", "shown"), [
    (Decimal("0.000250"), "A$0.00025"), (Decimal("0.0000001"), "A$0.00"), (Decimal("0.0123"), "A$0.01"),
    (Decimal("12.345"), "A$12.35"), (Decimal(0), "A$0.00"), (None, ""),
])
def test_request_costs(cost, shown):
    assert money.format_cost(cost) == shown


@pytest.mark.parametrize(("value", "shown"), [
    (Decimal("-1234.5"), "-A$1,234.50"), (Decimal("-0.004"), "A$0.00"), (Decimal("-0"), "A$0.00"),
    (-0.001, "A$0.00"), (0.005, "A$0.01"), (1.005, "A$1.01"), (2.675, "A$2.68"),
    (Decimal("1e26"), "A$100,000,000,000,000,000,000,000,000.00"),
])
def test_amounts_sign_rounding_and_size(value, shown):
    """A credit reads -A$2.50 (the sign before the currency, as banks and Stripe write it), an amount that rounds
    to nothing is never "A$-0.00", a float is rounded as it reads (2.675 is A$2.68, not binary 2.67499…), and an
    amount too long for the default decimal precision is still written, not an InvalidOperation (a 500)."""
    assert money.format_aud(value) == shown


@pytest.mark.parametrize("value", [Decimal("NaN"), float("nan"), float("inf"), Decimal("-Infinity")])
def test_not_a_number_is_no_amount(value):
    """NaN or infinity is not money: shown as nothing (the pages' "no value"), never "A$NaN" or a server error."""
    assert money.format_aud(value) == "" and money.format_aud(value, blank="—") == "—"
    assert money.format_price(value) == "" and money.format_unit_price(value) == ""
    assert money.format_cost(value) == ""


@pytest.mark.parametrize(("value", "shown"), [
    (Decimal("-0.00025"), "-A$0.00025"), (Decimal("-0.0000001"), "A$0.00"), (Decimal("-12.345"), "-A$12.35"),
])
def test_negative_costs_and_prices(value, shown):
    assert money.format_cost(value) == shown


def test_template_filters_use_the_formatter():
    template = Template("{% load money %}{{ a|aud }}|{{ p|unit_price }}|{{ k|unit_price_1k }}|{{ k|per_million }}|"
                        "{{ c|cost }}|{{ missing|unit_price }}|{{ cents|cents_aud }}")
    rendered = template.render(Context({"a": Decimal("5"), "p": Decimal("0.3"), "k": Decimal("0.000300"),
                                        "c": Decimal("0.000324"), "cents": 12345}))
    assert rendered == "A$5.00|A$0.30 per 1M tokens|A$0.30 per 1M tokens|A$0.30|A$0.000324||A$123.45"


def test_no_template_formats_money_by_hand():
    """Money reaches a page only through the filters: no ``A${{ … }}`` and no ``floatformat`` on an amount."""
    root = Path(__file__).resolve().parents[2] / "templates"
    offending = []
    for path in root.rglob("*.html"):
        text = path.read_text()
        for pattern in (r"A\$\{\{", r"(aud|cost|price|fee|spend)\w*\s*\|\s*floatformat"):
            offending += [f"{path.relative_to(root)}: {m.group(0)}" for m in re.finditer(pattern, text)]
    assert offending == []
