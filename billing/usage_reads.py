"""Reads of usage for the consoles, the export and the management API: over ``UsageRollup`` and always bounded to
a range, so a page costs the same with ten events or ten million.

Daily rollups (Sydney days) cover whole days; hourly rollups (UTC hours) cover the whole hours of the part-days at
the ends of a billing period. Stripe's periods start and end at any second (a subscription started at 10:37:12
renews at 10:37:12), so the part-hours at a period's ends come from the usage events themselves
(``billing.usage_spans``: at most an hour at each end, on the events' (tenant, time) index): a period counts exactly
the events inside it, as Stripe bills the meter events our outbox stamps at the same boundaries. Sydney is a whole
number of hours from UTC, so an hour belongs to exactly one Sydney day, and the rollup job adds each event to its
hour and its day in the same transaction.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from decimal import Decimal

from django.db.models import Q, Sum

from billing.models import UsageRollup
from billing.usage_spans import hour_ceil, hour_floor, span_tokens, span_usage
from core.keys import PLAYGROUND_KEY_ID, SURFACE_KEY_NAMES
from core.quotas import MICRO, SYDNEY
from tenants.models import ApiKey, Tenant

HOUR = UsageRollup.Period.HOUR
DAY = UsageRollup.Period.DAY


@dataclass
class UsageLine:
    """Totals for one day, key or model (or all of them)."""

    requests: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_micro_aud: int = 0

    def add(self, row) -> None:
        """Add a rollup's sums (a dict of them, or anything with those attributes)."""
        if not isinstance(row, dict):
            row = vars(row)
        self.requests += row["requests"] or 0
        self.errors += row["errors"] or 0
        self.prompt_tokens += row["prompt_tokens"] or 0
        self.completion_tokens += row["completion_tokens"] or 0
        self.cost_micro_aud += row["cost_micro_aud"] or 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def cost_aud(self) -> Decimal:
        """Exact (micro-dollar) A$; pages round to cents only when they print it."""
        return Decimal(self.cost_micro_aud) / MICRO


@dataclass(frozen=True)
class KeyRow:
    key_id: str
    name: str
    line: UsageLine
    playground: bool
    surface: str = ""  # a console surface's name (Playground, Post-call analytics): not a key anyone holds


@dataclass
class Breakdown:
    """Usage over ``[start, end)`` by Sydney day (every day of the range, empty ones too), key and model."""

    start: datetime
    end: datetime
    days: list[date]
    by_day: dict[date, UsageLine]
    by_key: dict[str, UsageLine]
    by_model: dict[str, UsageLine]
    totals: UsageLine
    key_names: dict[str, str] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return self.totals.requests == 0 and self.totals.total_tokens == 0

    @property
    def last_day(self) -> date:
        return self.days[-1] if self.days else self.start.astimezone(SYDNEY).date()

    @property
    def key_rows(self) -> list[KeyRow]:
        return [KeyRow(key_id=k, name=self.key_names.get(k, ""), line=line, playground=k == PLAYGROUND_KEY_ID,
                       surface=SURFACE_KEY_NAMES.get(k, "")) for k, line in self.by_key.items()]

    def key_label(self, key_id: str) -> str:
        if not key_id:
            return "(no key)"
        if key_id in SURFACE_KEY_NAMES:
            return SURFACE_KEY_NAMES[key_id]  # a console surface (playground, analytics): not a key anyone holds
        name = self.key_names.get(key_id)
        return f"wtl_{key_id} {name}" if name else f"wtl_{key_id}"


_SUMS = {
    "requests": Sum("requests"),
    "errors": Sum("errors"),
    "prompt_tokens": Sum("prompt_tokens"),
    "completion_tokens": Sum("completion_tokens"),
    "cost_micro_aud": Sum("cost_micro_aud"),
}


def day_bounds(since: date, until: date) -> tuple[datetime, datetime]:
    """Sydney midnight at the start of ``since`` and after ``until``."""
    return (datetime.combine(since, time.min, tzinfo=SYDNEY),
            datetime.combine(until + timedelta(days=1), time.min, tzinfo=SYDNEY))


def _days(start: datetime, end: datetime) -> list[date]:
    first = start.astimezone(SYDNEY).date()
    last = (end - timedelta(microseconds=1)).astimezone(SYDNEY).date()
    return [first + timedelta(days=i) for i in range((last - first).days + 1)] if end > start else []


def key_names(*, tenant: Tenant, key_ids) -> dict[str, str]:
    ids = [k for k in key_ids if k]
    if not ids:
        return {}
    return dict(ApiKey.objects.filter(tenant=tenant, key_id__in=ids).values_list("key_id", "name"))


def _midnight_on_or_after(moment: datetime) -> datetime:
    local = moment.astimezone(SYDNEY)
    midnight = datetime.combine(local.date(), time.min, tzinfo=SYDNEY)
    return midnight if midnight >= moment else datetime.combine(local.date() + timedelta(days=1), time.min,
                                                                tzinfo=SYDNEY)


def _midnight_on_or_before(moment: datetime) -> datetime:
    return datetime.combine(moment.astimezone(SYDNEY).date(), time.min, tzinfo=SYDNEY)


def _buckets(tenant: Tenant, start: datetime, end: datetime) -> Q:
    """The rollups covering ``[start, end)`` (on whole hours) exactly, fewest first: daily ones for the whole Sydney
    days inside it, hourly ones for the part-days at either end. Each term names the tenant, the period and a range
    of starts, the rollups' unique index in order, so the database reads each range from the index (SQLite
    included: it only turns an OR into index lookups when every branch can use the index alone)."""
    first, last = _midnight_on_or_after(start), _midnight_on_or_before(end)
    if first >= last:
        return Q(tenant=tenant, period=HOUR, start__gte=start, start__lt=end)
    query = Q(tenant=tenant, period=DAY, start__gte=first, start__lt=last)
    if start < first:
        query |= Q(tenant=tenant, period=HOUR, start__gte=start, start__lt=first)
    if last < end:
        query |= Q(tenant=tenant, period=HOUR, start__gte=last, start__lt=end)
    return query


def period_pieces(start: datetime, end: datetime) -> tuple[tuple[datetime, datetime] | None,
                                                           list[tuple[datetime, datetime]]]:
    """``[start, end)`` as the whole hours inside it (None: none), read from the rollups, and the part-hours at its
    ends (at most two, each within one hour), read from the usage events."""
    if end <= start:
        return None, []
    whole_start, whole_end = hour_ceil(start), hour_floor(end)
    if whole_start > whole_end:  # both ends inside one hour
        return None, [(start, end)]
    parts = []
    if start < whole_start:
        parts.append((start, whole_start))
    if whole_end < end:
        parts.append((whole_end, end))
    return ((whole_start, whole_end) if whole_start < whole_end else None), parts


def _sorted_lines(lines: dict[str, UsageLine]) -> dict[str, UsageLine]:
    return dict(sorted(lines.items(), key=lambda kv: (-kv[1].cost_micro_aud, -kv[1].total_tokens, kv[0])))


def usage_breakdown(*, tenant: Tenant, start: datetime, end: datetime) -> Breakdown:
    """Usage over exactly ``[start, end)``: three grouped queries over the rollups covering its whole hours
    (``_buckets``): sums per bucket start (folded into Sydney days here, a few hundred rows at most), per key and
    per model; and, when the range starts or ends inside an hour (a Stripe period), one query per part-hour over
    the usage events. The database sums on the rollups' (tenant, period, start, …) index; there is no time-zone
    arithmetic per row."""
    whole, parts = period_pieces(start, end)
    days = _days(start, end)
    by_day = {day: UsageLine() for day in days}
    by_key: dict[str, UsageLine] = {}
    by_model: dict[str, UsageLine] = {}
    if whole is not None:
        rollups = UsageRollup.objects.filter(_buckets(tenant, *whole))
        for row in rollups.values("start").annotate(**_SUMS).order_by():
            by_day.setdefault(row["start"].astimezone(SYDNEY).date(), UsageLine()).add(row)
        for field, lines in (("key_id", by_key), ("model", by_model)):
            for row in rollups.values(field).annotate(**_SUMS).order_by():
                lines.setdefault(row[field], UsageLine()).add(row)
    for part_start, part_end in parts:
        day = part_start.astimezone(SYDNEY).date()
        for row in span_usage(tenant_id=tenant.pk, start=part_start, end=part_end):
            by_day.setdefault(day, UsageLine()).add(row)
            by_key.setdefault(row.key_id, UsageLine()).add(row)
            by_model.setdefault(row.model, UsageLine()).add(row)
    totals = UsageLine()
    for line in by_day.values():
        totals.add(vars(line))
    by_key = _sorted_lines(by_key)
    return Breakdown(start=start, end=end, days=sorted(by_day), by_day=by_day, by_key=by_key,
                     by_model=_sorted_lines(by_model), totals=totals,
                     key_names=key_names(tenant=tenant, key_ids=by_key))


def tokens_by_model(*, tenant: Tenant, start: datetime, end: datetime) -> dict[str, tuple[int, int]]:
    """Model -> (prompt tokens, completion tokens) over exactly ``[start, end)``, read as ``usage_breakdown`` reads
    it (one grouped query over the rollups, one per part-hour over the usage events)."""
    whole, parts = period_pieces(start, end)
    totals: dict[str, list[int]] = {}
    if whole is not None:
        rows = (UsageRollup.objects.filter(_buckets(tenant, *whole)).values("model")
                .annotate(prompt=Sum("prompt_tokens"), completion=Sum("completion_tokens")).order_by())
        for row in rows:
            totals[row["model"]] = [row["prompt"] or 0, row["completion"] or 0]
    for part_start, part_end in parts:
        for model, (prompt, completion) in span_tokens(tenant_id=tenant.pk, start=part_start, end=part_end).items():
            acc = totals.setdefault(model, [0, 0])
            acc[0] += prompt
            acc[1] += completion
    return {model: (prompt, completion) for model, (prompt, completion) in totals.items()}


def usage_days(*, tenant: Tenant, since: date, until: date) -> Breakdown:
    """Whole Sydney days ``since`` to ``until`` inclusive, from the daily rollups."""
    start, end = day_bounds(since, until)
    return usage_breakdown(tenant=tenant, start=start, end=end)


@dataclass(frozen=True)
class ExportRow:
    day: date
    key_id: str
    key_name: str
    model: str
    requests: int
    errors: int
    prompt_tokens: int
    completion_tokens: int
    cost_micro_aud: int


def usage_export_rows(*, tenant: Tenant, since: date, until: date) -> Iterator[ExportRow]:
    """Per Sydney day x key x model, from the daily rollups (one row per bucket), oldest day first."""
    start, end = day_bounds(since, until)
    rows = (
        UsageRollup.objects.filter(tenant=tenant, period=DAY, start__gte=start, start__lt=end)
        .order_by("start", "key_id", "model")
        .values_list("start", "key_id", "model", "requests", "errors", "prompt_tokens", "completion_tokens",
                     "cost_micro_aud")
    )
    names = dict(ApiKey.objects.filter(tenant=tenant).values_list("key_id", "name"))
    names.update(SURFACE_KEY_NAMES)
    for begun, key_id, model, requests, errors, prompt, completion, cost in rows.iterator(chunk_size=2000):
        yield ExportRow(day=begun.astimezone(SYDNEY).date(), key_id=key_id, key_name=names.get(key_id, ""),
                        model=model, requests=requests, errors=errors, prompt_tokens=prompt,
                        completion_tokens=completion, cost_micro_aud=cost)


def cost_by_tenant(*, start: datetime, end: datetime) -> dict[int, int]:
    """Staff: micro-A$ of usage per tenant id over whole Sydney days in ``[start, end)`` (daily rollups)."""
    rows = (
        UsageRollup.objects.filter(period=DAY, start__gte=start, start__lt=end)
        .values("tenant_id").annotate(cost=Sum("cost_micro_aud")).order_by()
    )
    return {row["tenant_id"]: row["cost"] or 0 for row in rows}
