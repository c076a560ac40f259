"""Usage over a part of an hour, read from the usage events themselves.

Stripe's billing periods start and end at any second (a subscription started at 10:37:12 renews at 10:37:12), and
the rollups stop at whole hours. Where a read or a meter report must stop inside an hour, the part-hour comes from
the events: at most an hour of one tenant's events per part, read through the ``usage_tenant_time`` index (tenant,
time) and summed in the database by the rollup job's rule (each request rated at the tenant's prices and rounded up
to the micro-dollar), so a part-hour and its rollup add up alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.db.models import BigIntegerField, Case, Count, F, Q, Sum, Value, When
from django.db.models.functions import Cast

from billing import pricing, rollups
from billing.models import UsageEvent

HOUR = timedelta(hours=1)


def hour_floor(at: datetime) -> datetime:
    return datetime.fromtimestamp(int(at.timestamp()) // 3600 * 3600, UTC)


def hour_ceil(at: datetime) -> datetime:
    floor = hour_floor(at)
    return floor if floor == at else floor + HOUR


@dataclass(frozen=True)
class SpanRow:
    """One key and model over the span: the columns of a ``UsageRollup``."""

    key_id: str
    model: str
    requests: int
    errors: int
    prompt_tokens: int
    completion_tokens: int
    cost_micro_aud: int


def _within_an_hour(start: datetime, end: datetime) -> bool:
    if end <= start:
        return False
    if hour_floor(start) != hour_floor(end - timedelta(microseconds=1)):
        raise ValueError("a span read from usage events lies within one hour: the rollups hold whole hours")
    return True


def _cost(prices: dict[str, tuple[int, int]]) -> Case:
    """Each event's cost in micro-A$ as ``rollups.event_cost_micro_aud`` works it out (the tenant's scaled integer
    prices, rounded up per event), in SQL, so that the database sums a part-hour."""
    units = pricing.UNITS_PER_MICRO

    def whole(value: int | str):
        return (Cast(F(value), BigIntegerField()) if isinstance(value, str)
                else Value(value, output_field=BigIntegerField()))

    return Case(
        *(When(model=model, then=(whole("prompt_tokens") * whole(price_in)
                                  + whole("completion_tokens") * whole(price_out) + whole(units - 1)) / whole(units))
          for model, (price_in, price_out) in prices.items() if price_in or price_out),
        default=whole(0), output_field=BigIntegerField(),
    )


def span_usage(*, tenant_id, start: datetime, end: datetime) -> list[SpanRow]:
    """The tenant's usage events with ``start <= created_at < end`` (within one UTC hour) per key and model, with the
    rollups' columns, summed in the database: cost rated as the rollup job rates it, at the tenant's prices today
    (a test holds the two to the same figures)."""
    if not _within_an_hour(start, end):
        return []
    prices = next(iter(rollups.tenant_price_tables([tenant_id]).values()), {})
    rows = (
        UsageEvent.objects.filter(tenant_id=tenant_id, created_at__gte=start, created_at__lt=end)
        .values("key_id", "model")
        .annotate(requests=Count("id"), errors=Count("id", filter=Q(status__gte=400)),
                  prompt=Sum("prompt_tokens"), completion=Sum("completion_tokens"), cost=Sum(_cost(prices)))
        .order_by()
    )
    return [SpanRow(key_id=r["key_id"], model=r["model"], requests=r["requests"], errors=r["errors"],
                    prompt_tokens=r["prompt"] or 0, completion_tokens=r["completion"] or 0,
                    cost_micro_aud=r["cost"] or 0) for r in rows]


def span_tokens(*, tenant_id, start: datetime, end: datetime) -> dict[str, list[int]]:
    """Model -> [prompt tokens, completion tokens] over ``[start, end)`` (within one hour), summed in the database:
    what the meter reports of a part-hour carry."""
    if not _within_an_hour(start, end):
        return {}
    rows = (
        UsageEvent.objects.filter(tenant_id=tenant_id, created_at__gte=start, created_at__lt=end)
        .values("model").annotate(prompt=Sum("prompt_tokens"), completion=Sum("completion_tokens")).order_by()
    )
    return {r["model"]: [r["prompt"] or 0, r["completion"] or 0] for r in rows}
