"""Rebuilding the limiter's day and month counters from the usage events, after Redis lost its data.

The counters that admit requests live only in Redis (``inference.gateway.limits``); the usage events in the
database are the billing truth. A Redis that restarts empty would otherwise start every organisation's monthly
budget, spend cap and daily limit again from zero. So the month carries a marker (``limits:rebuilt:<month>``)
that only this rebuild sets and that goes with everything else: while it is missing, the rebuild job (Celery
beat; in embedded mode the web process itself) and every limiter starting up ask for a rebuild.

What a rebuild guarantees. Each counter hash records since when it counts its month and its day: the earliest
start of the requests it counted in that window (``ms`` and ``ds``, written by the admission script). Requests
that started earlier are not in it; the rebuild adds exactly those from the database: usage events of the
scope created from the window's start until that time (a hash nobody used since the loss starts from the
database's total up to the rebuild). Requests admitted meanwhile keep counting in Redis, so nothing is counted
twice. A hash is rebuilt once per window (``mr``/``dr``); one whose state changed while its totals were being
computed is computed again. A settlement for a request the hash never held (admitted before the loss) is
dropped, so nothing is subtracted that was not added.

What it cannot know: usage of requests still running, or not yet written to the database, when the rebuild
reads it (the last seconds before the loss; see ``docs/limits.md``). Spend is priced at today's prices of each
tenant's plan (``billing.pricing``).
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from datetime import UTC, datetime

from django.db.models import Q, Sum

from billing import pricing
from billing.limits import LIMIT_FIELDS
from billing.models import UsageEvent
from billing.services import usage_ingest
from core.counters import (
    CounterState,
    CounterTotals,
    CounterWindows,
    counter_windows,
    counters_marker_key,
    counters_rebuild_apply,
    counters_rebuild_begin,
    counters_rebuild_finish,
    counters_states,
)
from core.redis import get_redis
from tenants.models import ApiKey

logger = logging.getLogger("wattle.limits")
_ATTEMPTS = 3

# (tenant id, key id, model) -> [month prompt, month completion, day prompt, day completion]
Sums = dict[tuple[str, str, str], list[int]]


def _when(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, tz=UTC)


def _sums(events, windows: CounterWindows, *, month_until: float | None, day_until: float | None) -> Sums:
    """Tokens of ``events`` by tenant, key and model: this month until ``month_until`` and today until
    ``day_until`` (None: not wanted, counted as 0)."""
    ends = [t for t in (month_until, day_until) if t is not None]
    if not ends:
        return {}
    sums = {}
    if month_until is not None:
        month = Q(created_at__lt=_when(month_until))
        sums.update(mp=Sum("prompt_tokens", filter=month), mc=Sum("completion_tokens", filter=month))
    if day_until is not None:
        day = Q(created_at__gte=_when(windows.day_start), created_at__lt=_when(day_until))
        sums.update(dp=Sum("prompt_tokens", filter=day), dc=Sum("completion_tokens", filter=day))
    rows = (
        events.filter(created_at__gte=_when(windows.month_start), created_at__lt=_when(max(ends)))
        .order_by()
        .values("tenant_id", "key_id", "model")
        .annotate(**sums)
    )
    return {
        (str(row["tenant_id"]), row["key_id"], row["model"]): [row.get(name) or 0 for name in ("mp", "mc", "dp", "dc")]
        for row in rows
    }


def _scope_of(scope: str) -> Q:
    kind, _, ident = scope.partition(":")
    return Q(tenant_id=ident) if kind == "t" else Q(key_id=ident)


def _fold(sums: Sums, scopes: set[str], prices: dict[str, dict[str, pricing.Price]]) -> dict[str, list[int]]:
    """Per scope: [month tokens, month spend (micro-AUD), day tokens], spend priced per model at the tenant's prices
    (``prices``: tenant id → its plan's, ``tenant_prices``) as the data plane prices a request
    (``BackendPool.cost_micro_aud``). A scope's usage is all one tenant's: a key belongs to one."""
    by_scope: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0, 0, 0]))
    tenant_of: dict[str, str] = {}
    for (tenant_id, key_id, model), values in sums.items():
        for scope in (f"t:{tenant_id}", f"k:{key_id}"):
            if scope in scopes:
                tenant_of[scope] = tenant_id
                acc = by_scope[scope][model]
                for index, value in enumerate(values):
                    acc[index] += value
    folded = {}
    for scope, models in by_scope.items():
        table = prices.get(tenant_of[scope], {})
        month_tokens = spend = day_tokens = 0
        for model, (mp, mc, dp, dc) in models.items():
            month_tokens += mp + mc
            day_tokens += dp + dc
            spend += pricing.cost_micro_aud(table.get(model), mp, mc)
        folded[scope] = [month_tokens, spend, day_tokens]
    return folded


def tenant_prices(sums: Sums) -> dict[str, dict[str, pricing.Price]]:
    """Tenant id → the prices of its plan now, for the tenants in ``sums``."""
    book = pricing.PriceBook.load()
    plans = book.tenant_plans({tenant_id for tenant_id, _key, _model in sums})
    return {tenant_id: book.for_plan(plan_id) for tenant_id, plan_id in plans.items()}


def _counted_scopes(sums: Sums) -> set[str]:
    """The scopes the limiter counts that have usage: every tenant, and the keys with limits of their own."""
    tenants = {f"t:{tenant_id}" for tenant_id, _key, _model in sums}
    key_ids = {key_id for _tenant, key_id, _model in sums if key_id}
    limited = Q()
    for name in LIMIT_FIELDS:
        limited |= Q(**{f"{name}__isnull": False})
    keys = ApiKey.objects.filter(limited, key_id__in=key_ids).values_list("key_id", flat=True)
    return tenants | {f"k:{key_id}" for key_id in keys}


def _totals(scopes: list[str], states: dict[str, CounterState], fresh_sums: dict[str, list[int]],
            windows: CounterWindows, fresh_since: float, prices) -> list[CounterTotals]:
    totals = []
    for scope in scopes:
        state = states[scope]
        month_until = CounterState.cutoff(state.month, fresh_since)
        day_until = CounterState.cutoff(state.day, fresh_since)
        if month_until in (fresh_since, None) and day_until in (fresh_since, None):
            month_tokens, spend, day_tokens = fresh_sums.get(scope, [0, 0, 0])
        else:
            # Requests arrived since the loss: only what the database has from before the first of them.
            own = _sums(UsageEvent.objects.filter(_scope_of(scope)), windows, month_until=month_until,
                        day_until=day_until)
            month_tokens, spend, day_tokens = _fold(own, {scope}, prices).get(scope, [0, 0, 0])
        totals.append(CounterTotals(scope=scope, state=state,
                                    month_tokens=month_tokens if month_until is not None else 0,
                                    month_spend=spend if month_until is not None else 0,
                                    day_tokens=day_tokens if day_until is not None else 0))
    return totals


def limit_counters_rebuild(*, now: float | None = None) -> int | None:
    """Rebuild this month's and today's counters of every organisation and limited key from the usage events.
    Returns how many scopes it wrote, or None if another rebuild is running or Redis lost its data again while
    this one ran (the next run starts over)."""
    client = get_redis()
    fresh_since = now if now is not None else time.time()
    windows = counter_windows(fresh_since)
    token = counters_rebuild_begin(client, windows)
    if token is None:
        return None
    complete = False
    try:
        # Events the data plane wrote again after the loss are in the stream: into the database first.
        usage_ingest(max_batches=20)
        all_sums = _sums(UsageEvent.objects.all(), windows, month_until=fresh_since, day_until=fresh_since)
        prices = tenant_prices(all_sums)
        scopes = _counted_scopes(all_sums)
        fresh_sums = _fold(all_sums, scopes, prices)
        pending, written = sorted(scopes), 0
        for _attempt in range(_ATTEMPTS):
            if not pending:
                break
            states = counters_states(client, pending, windows)
            totals = _totals(pending, states, fresh_sums, windows, fresh_since, prices)
            retry = counters_rebuild_apply(client, totals, windows, fresh_since=fresh_since, token=token)
            if retry is None:
                logger.warning("limits: Redis lost its data during the counters rebuild; it will run again")
                return None
            written += len(pending) - len(retry)
            pending = retry
        if pending:
            logger.warning("limits: %d counters changed during every rebuild attempt; the next run retries them",
                           len(pending))
            return written
        complete = True
        logger.info("limits: rebuilt %d counters for %s from usage events", written, windows.month)
        return written
    finally:
        counters_rebuild_finish(client, windows, token, complete=complete)


def limit_counters_ensure(*, now: float | None = None) -> int | None:
    """Rebuild the counters if this month's marker is missing (Redis lost its data, or a new month began)."""
    now = now if now is not None else time.time()
    if get_redis().exists(counters_marker_key(counter_windows(now).month)):
        return None
    return limit_counters_rebuild(now=now)
