"""The projected bill: pure arithmetic over a plan, prices and usage, so the rule is written (and tested) once.

The rule, as the billing page states it:

- the plan's monthly fee, once per period;
- for each model, input and output tokens are charged separately at the model's per-token prices, after the
  plan's ``included_tokens`` of each (the first N input tokens and the first N output tokens of every model are
  in the fee, as Stripe's per-meter prices include them);
- "to date" charges the tokens used so far; "projected" scales each model's input and output tokens linearly to
  the end of the period (tokens x period length / time elapsed, the elapsed time counted as at least one day so a
  busy first hour does not project a year's traffic), then applies the same rule.

Amounts are exact Decimals, GST exclusive; pages round to cents when they print them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal

THOUSAND = Decimal(1000)
MIN_ELAPSED = timedelta(days=1)


@dataclass(frozen=True)
class Rate:
    """A model's prices per 1,000 tokens (as ``ModelPrice`` stores them)."""

    input_per_1k: Decimal
    output_per_1k: Decimal


@dataclass(frozen=True)
class ChargeLine:
    model: str
    direction: str  # "input" or "output"
    tokens: int
    included: int
    per_1k: Decimal

    @property
    def billable(self) -> int:
        return max(self.tokens - self.included, 0)

    @property
    def per_1m(self) -> Decimal:
        return self.per_1k * THOUSAND

    @property
    def amount(self) -> Decimal:
        return Decimal(self.billable) * self.per_1k / THOUSAND


@dataclass(frozen=True)
class Estimate:
    fee: Decimal
    to_date_lines: list[ChargeLine]
    projected_lines: list[ChargeLine]
    factor: Decimal  # period length / elapsed (>= 1): what "projected" multiplies tokens by
    unpriced_models: list[str]  # used but without a price: charged nothing here (staff must set one)

    @property
    def line_pairs(self) -> list[tuple[ChargeLine, ChargeLine]]:
        """Each line so far beside its projection (the same lines: projecting never turns a count to or from 0)."""
        return list(zip(self.to_date_lines, self.projected_lines, strict=True))

    @property
    def usage_to_date(self) -> Decimal:
        return sum((line.amount for line in self.to_date_lines), Decimal(0))

    @property
    def usage_projected(self) -> Decimal:
        return sum((line.amount for line in self.projected_lines), Decimal(0))

    @property
    def to_date(self) -> Decimal:
        return self.fee + self.usage_to_date

    @property
    def projected(self) -> Decimal:
        return self.fee + self.usage_projected


def projection_factor(*, elapsed: timedelta, length: timedelta) -> Decimal:
    if length <= timedelta(0) or elapsed >= length:
        return Decimal(1)
    elapsed = max(elapsed, min(MIN_ELAPSED, length))
    return Decimal(length.total_seconds()) / Decimal(elapsed.total_seconds())


def _lines(usage: Mapping[str, tuple[int, int]], rates: Mapping[str, Rate], included: int,
           scale: Decimal) -> list[ChargeLine]:
    lines = []
    for model, (prompt, completion) in usage.items():
        rate = rates.get(model, Rate(Decimal(0), Decimal(0)))
        for direction, tokens, per_1k in (("input", prompt, rate.input_per_1k),
                                          ("output", completion, rate.output_per_1k)):
            scaled = int(Decimal(tokens) * scale)
            if scaled:
                lines.append(ChargeLine(model=model, direction=direction, tokens=scaled, included=included,
                                        per_1k=per_1k))
    return lines


def estimate_bill(*, fee: Decimal, included_tokens: int, rates: Mapping[str, Rate],
                  usage: Mapping[str, tuple[int, int]], elapsed: timedelta, length: timedelta) -> Estimate:
    """``usage``: input (prompt) and output (completion) tokens so far, by model."""
    factor = projection_factor(elapsed=elapsed, length=length)
    return Estimate(
        fee=fee,
        to_date_lines=_lines(usage, rates, included_tokens, Decimal(1)),
        projected_lines=_lines(usage, rates, included_tokens, factor),
        factor=factor,
        unpriced_models=sorted(m for m, (p, c) in usage.items() if m not in rates and (p or c)),
    )
