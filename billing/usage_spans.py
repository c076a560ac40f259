"""Usage over a part of an hour, read from the usage events themselves.

Stripe's billing periods start and end at any second (a subscription started at 10:37:12 renews at 10:37:12), and
the rollups stop at whole hours. Where a read or a meter report must stop inside an hour, the part-hour comes from
the events: at most an hour of one tenant's events per part, read through the ``usage_tenant_time`` index (tenant,
time), and summed by the rollup job's own rule (``rollups.fold``), so a part-hour and its rollup add up alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.db.models import Sum

from billing import rollups
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


def span_usage(*, tenant_id, start: datetime, end: datetime) -> list[SpanRow]:
    """The tenant's usage events with ``start <= created_at < end`` (within one UTC hour) per key and model, with the
    rollups' columns: cost rated as the rollup job rates it, at the tenant's prices today."""
    if not _within_an_hour(start, end):
        return []
    rows = (
        UsageEvent.objects.filter(tenant_id=tenant_id, created_at__gte=start, created_at__lt=end)
        .order_by()
        .values_list("id", "tenant_id", "key_id", "model", "status", "prompt_tokens", "completion_tokens",
                     "created_at")
    )
    rows = list(rows)
    if not rows:
        return []
    # The tenant's prices as the rollup job would rate these events now, keyed as the rows carry the tenant.
    table = next(iter(rollups.tenant_price_tables([tenant_id]).values()), {})
    buckets = rollups.fold(rows, {rows[0][1]: table})
    return [SpanRow(key_id=key_id, model=model, requests=sums[0], errors=sums[1], prompt_tokens=sums[2],
                    completion_tokens=sums[3], cost_micro_aud=sums[4])
            for (_tenant, period, _start, key_id, model), sums in buckets.items() if period == rollups.HOUR]


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
