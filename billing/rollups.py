"""Usage rollups: usage events summed per tenant, key and model over UTC hours and Sydney days, by a worker.

The job reads the events above a watermark (by id), adds them into their buckets with an upsert that adds
(``INSERT … ON CONFLICT … DO UPDATE SET n = n + excluded.n``) and moves the watermark in the same transaction, so
a run that fails changes nothing and a run that commits has counted each event exactly once. Events arriving late
(a data-plane spool flushed after an outage) carry old times but new ids: they are added to the old buckets.

Costs are rated per event at its tenant's prices in force when the job reads it (its plan's own price for the model,
else the platform's: ``billing.pricing``; the plan is the tenant's at that time), rounded up to the micro-dollar as
the data plane rounds each request (``BackendPool.cost_micro_aud``) and the limit counters' rebuild does.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from datetime import UTC, datetime

from django.conf import settings
from django.db import connection, transaction

from billing import pricing
from billing.models import RollupWatermark, UsageEvent, UsageRollup
from billing.services import USAGE_COMMIT_LOCK
from core.quotas import window_starts

logger = logging.getLogger("wattle.rollups")

WATERMARK = "usage"
HOUR = UsageRollup.Period.HOUR
DAY = UsageRollup.Period.DAY
_SUMMED = ("requests", "errors", "prompt_tokens", "completion_tokens", "cost_micro_aud")


def committed_max_id() -> int:
    """The highest usage event id below which every event is committed (so a reader by id misses none).

    On PostgreSQL ids are handed out at insert and transactions commit in any order: the ingest holds
    ``USAGE_COMMIT_LOCK`` shared for each transaction, and this takes it exclusively just long enough to read
    max(id): once granted, no ingest transaction is in flight. It is a session lock released at once (not a
    transaction lock) so that it never outlives this read, whatever transaction the caller is in. A stuck ingest
    makes this fail after a few seconds rather than hold up every ingest queued behind it."""
    table = UsageEvent._meta.db_table
    if connection.vendor != "postgresql":
        # SQLite has one writer at a time (transactions begin IMMEDIATE): ids commit in order.
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT COALESCE(MAX(id), 0) FROM {table}")  # noqa: S608 (a constant)
            return int(cursor.fetchone()[0])
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL lock_timeout = '5s'")
        cursor.execute("SELECT pg_advisory_lock(%s)", [USAGE_COMMIT_LOCK])
    try:
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT COALESCE(MAX(id), 0) FROM {table}")  # noqa: S608 (a constant)
            return int(cursor.fetchone()[0])
    finally:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s)", [USAGE_COMMIT_LOCK])


def tenant_price_tables(tenant_ids) -> dict:
    """Tenant id → its plan's prices (``pricing.scaled_table`` integers) for the tenants of a batch: the price lists
    and the tenants' plans in four queries, whatever the batch holds."""
    book = pricing.PriceBook.load()
    return {tenant_id: book.scaled_for_plan(plan_id) for tenant_id, plan_id in book.tenant_plans(tenant_ids).items()}


def event_cost_micro_aud(prices: dict[str, tuple[int, int]], model: str, prompt: int, completion: int) -> int:
    """What one request costs in micro-AUD, rounded up, as the spend cap counted it (``prices``: scaled integers)."""
    price_in, price_out = prices.get(model, (0, 0))
    return -(-(prompt * price_in + completion * price_out) // pricing.UNITS_PER_MICRO)


_bucket_starts: dict[int, tuple[datetime, datetime]] = {}


def bucket_starts(at: datetime) -> tuple[datetime, datetime]:
    """The UTC hour and the Sydney day holding ``at``. Sydney is a whole number of hours from UTC (DST included),
    so each UTC hour lies in exactly one Sydney day and the day only has to be worked out once per hour."""
    hour = int(at.timestamp()) // 3600 * 3600
    starts = _bucket_starts.get(hour)
    if starts is None:
        day = window_starts(hour)[0]
        starts = (datetime.fromtimestamp(hour, UTC), datetime.fromtimestamp(day, UTC))
        if len(_bucket_starts) > 100_000:  # a bound, never reached in practice (11 years of hours)
            _bucket_starts.clear()
        _bucket_starts[hour] = starts
    return starts


def fold(rows, prices: dict) -> dict[tuple, list[int]]:
    """Events as (id, tenant_id, key_id, model, status, prompt, completion, created_at) into bucket sums, keyed
    (tenant_id, period, start, key_id, model); each costed at its tenant's prices (``prices``: tenant id → model →
    scaled integer prices, as ``tenant_price_tables`` gives them; a tenant without a table costs nothing)."""
    buckets: dict[tuple, list[int]] = defaultdict(lambda: [0, 0, 0, 0, 0])
    unpriced: dict[str, tuple[int, int]] = {}
    for _id, tenant_id, key_id, model, status, prompt, completion, created_at in rows:
        hour, day = bucket_starts(created_at)
        cost = event_cost_micro_aud(prices.get(tenant_id, unpriced), model, prompt, completion)
        error = 1 if status >= 400 else 0
        for key in ((tenant_id, HOUR, hour, key_id, model), (tenant_id, DAY, day, key_id, model)):
            acc = buckets[key]
            acc[0] += 1
            acc[1] += error
            acc[2] += prompt
            acc[3] += completion
            acc[4] += cost
    return buckets


def _upsert(buckets: dict[tuple, list[int]]) -> None:
    """Add the sums into their rows, creating the missing ones: one statement per bucket, batched."""
    if not buckets:
        return
    meta = UsageRollup._meta
    quote = connection.ops.quote_name
    table = quote(meta.db_table)
    keys = ("tenant_id", "period", "start", "key_id", "model")
    columns = ", ".join(quote(c) for c in (*keys, *_SUMMED))
    updates = ", ".join(f"{quote(c)} = {table}.{quote(c)} + excluded.{quote(c)}" for c in _SUMMED)
    sql = (
        f"INSERT INTO {table} ({columns}) VALUES ({', '.join(['%s'] * (len(keys) + len(_SUMMED)))}) "  # noqa: S608
        f"ON CONFLICT ({', '.join(quote(c) for c in keys)}) DO UPDATE SET {updates}"
    )
    tenant_field, start_field = meta.get_field("tenant"), meta.get_field("start")
    params = [
        (tenant_field.get_db_prep_value(tenant_id, connection), period,
         start_field.get_db_prep_value(start, connection), key_id, model, *sums)
        for (tenant_id, period, start, key_id, model), sums in buckets.items()
    ]
    with connection.cursor() as cursor:
        cursor.executemany(sql, params)


def _watermark() -> RollupWatermark:
    mark = RollupWatermark.objects.select_for_update().filter(name=WATERMARK).first()
    if mark is None:
        RollupWatermark.objects.get_or_create(name=WATERMARK)
        mark = RollupWatermark.objects.select_for_update().get(name=WATERMARK)
    return mark


def rollups_build(*, batch: int | None = None, upto: int | None = None) -> int:
    """Add the next batch of usage events (at most ``batch``, ids up to ``upto``) into the rollups; returns how many
    events it read (0: caught up). Safe to run on several workers at once: the watermark row is locked for the
    transaction, so they take turns."""
    batch = batch or settings.BILLING_ROLLUP_BATCH
    if upto is None:
        upto = committed_max_id()
    with transaction.atomic():
        mark = _watermark()
        if mark.last_id >= upto:
            return 0
        rows = list(
            UsageEvent.objects.filter(id__gt=mark.last_id, id__lte=upto)
            .order_by("id")
            .values_list("id", "tenant_id", "key_id", "model", "status", "prompt_tokens", "completion_tokens",
                         "created_at")[:batch]
        )
        _upsert(fold(rows, tenant_price_tables({row[1] for row in rows})))
        # A short batch reached ``upto``: ids between the last row and it belong to rolled-back inserts.
        mark.last_id = rows[-1][0] if len(rows) == batch else upto
        mark.save(update_fields=["last_id", "updated_at"])
    return len(rows)


def rollups_update(*, max_batches: int | None = None) -> int:
    """Bring the rollups up to every committed usage event (the periodic job); returns how many it read."""
    upto = committed_max_id()
    total = batches = 0
    while True:
        read = rollups_build(upto=upto)
        total += read
        batches += 1
        if not read or (max_batches is not None and batches >= max_batches):
            break
    if total:
        logger.info("rollups: %s usage events added", total)
    return total
