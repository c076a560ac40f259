"""How every page, email and human-facing export writes money: Australian dollars, ``A$1,234.50``.

One formatter, so the console never shows ``A$0.300000`` on one page and ``$0.3`` on another:

- ``format_aud``: an amount, to the cent (fees, bills, caps, usage totals).
- ``format_price``: a unit price per million tokens, ``A$0.30``: to the cent, with up to two more decimals only
  where the price has them (plan prices carry four; rounding ``A$0.0150`` to ``A$0.02`` would misquote it).
- ``format_unit_price``: the same with its unit, ``A$0.30 per 1M tokens``.
- ``format_cost``: one request's cost, which is usually a fraction of a cent: to the cent from a cent up, below
  that to six decimals (trailing zeros trimmed), so the request log tells a 20-token request from a 2,000-token
  one.

All of them round half up on the value as written (a float as it reads: 2.675 is A$2.68), put a minus sign
before the currency (``-A$2.50``, a credit) and only on what is not zero once rounded, and show NaN or infinity
as the caller's ``blank``, never as text or an error.

Machine-readable exports (CSV, JSON) keep exact values and don't go through here.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal, localcontext

CENT = Decimal("0.01")
_PRICE_PLACES = Decimal("0.0001")  # stored prices have at most four decimals of A$ per million tokens
_COST_PLACES = Decimal("0.000001")

Amount = Decimal | int | float | str


def _decimal(value: Amount) -> Decimal | None:
    """The value as a Decimal (a float as it reads: 2.675, not its binary 2.67499…); None for NaN or infinity,
    which are no amount."""
    amount = value if isinstance(value, Decimal) else Decimal(str(value))
    return amount if amount.is_finite() else None


def _written(amount: Decimal, places: Decimal) -> Decimal:
    # Wide enough a context that no amount is too long to round (the default 28 digits refuses 1e26 to the cent).
    with localcontext(prec=max(28, amount.adjusted() + 10)):
        return amount.quantize(places, rounding=ROUND_HALF_UP)


def _signed(text: str, amount: Decimal) -> str:
    """The sign before the currency (``-A$2.50``, as banks and Stripe write a credit); nothing that rounds to
    zero is negative (never ``A$-0.00``)."""
    return f"-A${text}" if amount < 0 else f"A${text}"


def format_aud(value: Amount | None, *, blank: str = "") -> str:
    """``A$1,234.50``, ``-A$2.50``; ``blank`` for None (and for NaN or infinity)."""
    amount = None if value is None else _decimal(value)
    if amount is None:
        return blank
    rounded = _written(amount, CENT)
    return _signed(f"{rounded.copy_abs():,}", rounded)


def _at_least_cents(value: Decimal, places: Decimal) -> str:
    exact = _written(value, places)
    if exact == exact.quantize(CENT):
        return format_aud(exact)
    return _signed(f"{exact.copy_abs().normalize():,f}", exact)


def format_price(per_1m: Amount | None, *, blank: str = "") -> str:
    """A price per million tokens: ``A$0.30``, ``A$0.015``; ``blank`` for None."""
    amount = None if per_1m is None else _decimal(per_1m)
    if amount is None:
        return blank
    return _at_least_cents(amount, _PRICE_PLACES)


def format_unit_price(per_1m: Amount | None, *, blank: str = "") -> str:
    """``A$0.30 per 1M tokens``; ``blank`` for None."""
    price = format_price(per_1m)
    return f"{price} per 1M tokens" if price else blank


def format_cost(value: Amount | None, *, blank: str = "") -> str:
    """One request's cost: ``A$1.25``, ``A$0.000324``, ``A$0.00`` for nothing; ``blank`` for None."""
    amount = None if value is None else _decimal(value)
    if amount is None:
        return blank
    if amount == 0 or abs(amount) >= CENT:
        return format_aud(amount)
    return _at_least_cents(amount, _COST_PLACES)
