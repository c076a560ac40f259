"""Usage to Stripe Billing Meters, through an outbox (``MeterReport``): exactly the tokens our usage events hold.

Two jobs, each safe to run on several workers at once:

- ``meter_reports_plan`` writes one row per (tenant, meter, hour) once the hour has closed (its end plus
  ``BILLING_METER_SETTLE_S``): the hour's input or output tokens of one model, from the hourly rollups. When usage
  for an hour grows after it was planned (late events), it writes a correcting row with the difference and the
  next sequence number. Rows are never changed or deleted, so the sum of an hour's rows is what it reported, and
  a row's ``identifier`` (``wtl-<tenant>-<meter>-<YYYYMMDDHH>-<sequence>``) never changes.
- ``meter_reports_send`` sends the due rows (``meter_event_create``, timestamped at the hour's start), marks a
  row sent only once Stripe acknowledged it, backs off exponentially while Stripe is unavailable, and marks a row
  ``refused`` (logged, shown on the staff reconciliation page) when Stripe refuses it for good. A row is claimed
  (skip-locked on PostgreSQL) and leased before it is sent, so two senders never send it at the same time; if a
  sender dies after Stripe took the event but before the row was marked, the retry carries the same identifier
  and Stripe keeps the first (``stripe_gateway.meter_event_create`` treats "already exists" as delivered).

What can go wrong and what it costs: an hour reported while its events were still on their way is corrected
(never lost, never counted twice); a row older than Stripe's 35 days is refused and stays visible; a tenant's
hours before its subscription started are never reported.
"""

from __future__ import annotations

import hashlib
import logging
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F, Max, Min, Q, Sum
from django.utils import timezone

from billing import stripe_gateway
from billing.models import (
    Invoice,
    MeterReport,
    RollupWatermark,
    StripeMeter,
    StripePrice,
    Subscription,
    UsageEvent,
    UsageRollup,
)
from billing.payment_access import LIVE
from billing.rollups import WATERMARK as ROLLUP_WATERMARK
from billing.rollups import rollups_update

if TYPE_CHECKING:
    import uuid

logger = logging.getLogger("wattle.meters")

# Stripe refuses meter events timestamped more than 35 days ago.
STRIPE_MAX_AGE = timedelta(days=35)
# The planner's own marks (RollupWatermark rows): the last usage event id whose hour it has looked at, and the
# first hour (epoch seconds) it has not yet seen closed.
PLAN_EVENTS = "meter-plan-events"
PLAN_HOURS = "meter-plan-hours"
# The newest StripeMeter (by id) the planner has seen: a meter created later (a model's first price synced after
# tenants used it) has every reporting tenant planned again from its start.
PLAN_METERS = "meter-plan-meters"
# A subscription changed since (this long before) the planner's last run is planned again from its start: a
# webhook that arrived after an hour closed (the tenant was not reportable yet) loses no hour.
_CHANGED_OVERLAP = timedelta(minutes=5)
IDENTIFIER_MAX = 100
DIRECTIONS = ("input", "output")  # prompt tokens, completion tokens


def hour_floor(at: datetime) -> datetime:
    return datetime.fromtimestamp(int(at.timestamp()) // 3600 * 3600, UTC)


def identifier_for(*, tenant_id: uuid.UUID | str, meter: str, hour: datetime, sequence: int) -> str:
    """``wtl-<tenant id>-<meter>-<YYYYMMDDHH>-<sequence>``, at most 100 characters (Stripe's limit): a meter name
    too long to fit is cut and followed by a digest of the whole name, so the identifier stays unique and stable."""
    stamp = hour.astimezone(UTC).strftime("%Y%m%d%H")
    head, tail = f"wtl-{tenant_id}-", f"-{stamp}-{sequence}"
    room = IDENTIFIER_MAX - len(head) - len(tail)
    if len(meter) > room:
        digest = hashlib.sha256(meter.encode()).hexdigest()[:10]
        meter = f"{meter[:room - len(digest) - 1]}~{digest}"
    return f"{head}{meter}{tail}"


# --- who is reported, from when ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Reporting:
    """A tenant whose usage goes to Stripe: its customer and the first hour reported."""

    customer_id: str
    start: datetime
    changed_at: datetime


def reporting_tenants(*, tenant_ids=None) -> dict[uuid.UUID, Reporting]:
    """Tenants with a Stripe customer and a running subscription (``payment_access.LIVE``) to a plan with metered
    prices, keyed by tenant id.

    The first hour reported is the first whole hour of the subscription. We keep the current period only, so the
    subscription's start is taken as the earliest of that period's start and the start of any period Stripe
    invoiced it for (a correction for last period's hour, after the period rolled over, still goes out)."""
    metered = StripePrice.objects.filter(kind__in=[StripePrice.Kind.INPUT, StripePrice.Kind.OUTPUT])
    subscriptions = (
        Subscription.objects.filter(status__in=LIVE, current_period_start__isnull=False,
                                    plan__in=metered.values("plan_id"))
        .exclude(stripe_customer_id="")
    )
    if tenant_ids is not None:
        subscriptions = subscriptions.filter(tenant_id__in=tenant_ids)
    rows = list(subscriptions.values_list("tenant_id", "stripe_customer_id", "current_period_start", "updated_at"))
    invoiced = dict(
        Invoice.objects.filter(tenant_id__in=[row[0] for row in rows], period_start__isnull=False,
                               period_end__gt=F("period_start"))
        .values("tenant_id").annotate(first=Min("period_start")).values_list("tenant_id", "first")
    )
    reporting = {}
    for tenant_id, customer_id, period_start, changed_at in rows:
        start = min(period_start, invoiced.get(tenant_id, period_start))
        first_hour = hour_floor(start) if start == hour_floor(start) else hour_floor(start) + timedelta(hours=1)
        reporting[tenant_id] = Reporting(customer_id=customer_id, start=first_hour, changed_at=changed_at)
    return reporting


# --- planning ------------------------------------------------------------------------------------------------------
def _mark(name: str) -> tuple[RollupWatermark, bool]:
    RollupWatermark.objects.get_or_create(name=name)
    mark = RollupWatermark.objects.select_for_update().get(name=name)
    return mark, mark.last_id == 0


def _hourly_totals(query: Q) -> dict[tuple, list[int]]:
    """(tenant_id, hour, model) -> [prompt tokens, completion tokens] over every key, from the hourly rollups."""
    rows = (
        UsageRollup.objects.filter(query, period=UsageRollup.Period.HOUR)
        .values("tenant_id", "start", "model")
        .annotate(prompt_tokens=Sum("prompt_tokens"), completion_tokens=Sum("completion_tokens"))
        .order_by()
    )
    return {(r["tenant_id"], r["start"], r["model"]): [r["prompt_tokens"] or 0, r["completion_tokens"] or 0]
            for r in rows}


def _late_hours(*, after_id: int, upto_id: int, before: datetime, oldest: datetime, tenants) -> set[tuple]:
    """(tenant_id, hour) of events rolled up since the last run whose hour the planner had already closed."""
    if upto_id <= after_id:
        return set()
    rows = (
        UsageEvent.objects.filter(id__gt=after_id, id__lte=upto_id, created_at__lt=before, created_at__gte=oldest)
        .values_list("tenant_id", "created_at")
    )
    return {(tenant_id, hour_floor(at)) for tenant_id, at in rows.iterator(chunk_size=5000) if tenant_id in tenants}


@transaction.atomic
def meter_reports_plan(*, now: datetime | None = None) -> list[MeterReport]:
    """Write the outbox rows for every closed hour not yet (fully) reported; returns the rows written.

    Which (tenant, hour) pairs it looks at: the hours that closed since its last run, for every reporting tenant;
    hours with usage events rolled up since its last run that it had already closed (late events); and, for a
    tenant whose subscription changed since then (every tenant, when a meter is new), every hour from the
    subscription's start. For each, what the rollups hold minus what the hour's rows already carry becomes a new
    row: planning twice writes nothing new. Runs one at a time (its marks are locked for the transaction)."""
    now = now or timezone.now()
    closed = hour_floor(now - timedelta(seconds=settings.BILLING_METER_SETTLE_S))  # hours before this have closed
    oldest = hour_floor(now - STRIPE_MAX_AGE) + timedelta(hours=1)
    hours_mark, fresh = _mark(PLAN_HOURS)
    events_mark, _ = _mark(PLAN_EVENTS)
    meters_mark, _ = _mark(PLAN_METERS)
    rolled_up = RollupWatermark.objects.filter(name=ROLLUP_WATERMARK).values_list("last_id", flat=True).first() or 0
    hours_from = max(datetime.fromtimestamp(hours_mark.last_id, UTC), oldest)

    tenants = reporting_tenants()
    meter_rows = list(StripeMeter.objects.all())
    meters = {(m.model, m.direction): m.event_name for m in meter_rows}
    newest_meter = max((m.pk for m in meter_rows), default=0)
    written: list[MeterReport] = []
    if tenants and meters:
        totals: dict[tuple, list[int]] = {}
        if closed > hours_from:  # the hours that closed since the last run
            totals |= _hourly_totals(Q(tenant_id__in=list(tenants), start__gte=hours_from, start__lt=closed))
        if not fresh:  # the first run looks at every hour from ``oldest``: nothing is late or changed yet
            late = _late_hours(after_id=events_mark.last_id, upto_id=rolled_up, before=hours_from, oldest=oldest,
                               tenants=tenants)
            if late:
                found = _hourly_totals(Q(tenant_id__in={t for t, _h in late}, start__in={h for _t, h in late}))
                totals |= {key: value for key, value in found.items() if (key[0], key[1]) in late}
            since = hours_mark.updated_at - _CHANGED_OVERLAP
            new_meter = newest_meter > meters_mark.last_id
            changed = [tenant_id for tenant_id, r in tenants.items() if new_meter or r.changed_at >= since]
            if changed:
                totals |= _hourly_totals(Q(tenant_id__in=changed, start__gte=oldest, start__lt=closed))
        written = _plan(totals, tenants=tenants, meters=meters, now=now)

    events_mark.last_id = max(events_mark.last_id, rolled_up)
    hours_mark.last_id = max(hours_mark.last_id, int(closed.timestamp()))
    meters_mark.last_id = max(meters_mark.last_id, newest_meter)
    for mark in (events_mark, hours_mark, meters_mark):
        mark.save(update_fields=["last_id", "updated_at"])
    if written:
        logger.info("meter outbox: %s rows planned (%s corrections)", len(written),
                    sum(1 for r in written if r.sequence))
    return written


def _plan(totals: dict[tuple, list[int]], *, tenants: dict, meters: dict, now: datetime) -> list[MeterReport]:
    """New rows for what ``totals`` hold beyond what the hours' rows already carry."""
    wanted: dict[tuple, int] = defaultdict(int)  # (tenant_id, meter, hour) -> tokens
    for (tenant_id, hour, model), counts in totals.items():
        if hour < tenants[tenant_id].start:
            continue
        for index, direction in enumerate(DIRECTIONS):
            meter = meters.get((model, direction))
            if meter is not None and counts[index]:
                wanted[(tenant_id, meter, hour)] += counts[index]
    if not wanted:
        return []
    existing = {
        (r["tenant_id"], r["meter"], r["hour"]): (r["quantity"], r["sequence"])
        for r in MeterReport.objects.filter(tenant_id__in={t for t, _m, _h in wanted},
                                            hour__in={h for _t, _m, h in wanted})
        .values("tenant_id", "meter", "hour").annotate(quantity=Sum("quantity"), sequence=Max("sequence")).order_by()
    }
    rows = []
    for (tenant_id, meter, hour), tokens in sorted(wanted.items(), key=lambda kv: (kv[0][2], str(kv[0][0]), kv[0][1])):
        reported, last_sequence = existing.get((tenant_id, meter, hour), (0, -1))
        missing = tokens - reported
        if missing < 0:
            # Usage events are never deleted: a smaller total means the rollups were rebuilt differently.
            logger.error("meter outbox: %s %s %s reported %s tokens but the rollups now hold %s", tenant_id, meter,
                         hour, reported, tokens)
        if missing <= 0:
            continue
        sequence = last_sequence + 1
        rows.append(MeterReport(
            tenant_id=tenant_id, meter=meter, hour=hour, sequence=sequence, quantity=missing,
            identifier=identifier_for(tenant_id=tenant_id, meter=meter, hour=hour, sequence=sequence),
            stripe_customer_id=tenants[tenant_id].customer_id, created_at=now, next_attempt_at=now,
        ))
    return MeterReport.objects.bulk_create(rows)


# --- sending -------------------------------------------------------------------------------------------------------
@dataclass
class SendResult:
    sent: int = 0
    retrying: int = 0
    refused: int = 0


def retry_delay(attempts: int) -> timedelta:
    """BASE, 2 x BASE, 4 x BASE … seconds after the 1st, 2nd, 3rd failed attempt, at most MAX."""
    base, cap = settings.BILLING_METER_RETRY_BASE_S, settings.BILLING_METER_RETRY_MAX_S
    return timedelta(seconds=min(cap, base * 2 ** min(max(attempts - 1, 0), 30)))


def _lease() -> timedelta:
    """Longer than one send can take (every SDK attempt timing out), so a claimed row is never sent by two senders
    at once; a sender that died gives its rows back when the lease runs out."""
    attempt = float(settings.STRIPE_TIMEOUT_S) * (int(settings.STRIPE_MAX_RETRIES) + 1)
    return timedelta(seconds=2 * attempt + 60)


def _claim(now: datetime) -> MeterReport | None:
    """The most overdue unsent row, leased to this sender (one short transaction: nothing is held open while
    Stripe is called)."""
    with transaction.atomic():
        due = MeterReport.objects.filter(sent_at__isnull=True, refused=False, next_attempt_at__lte=now).order_by(
            "next_attempt_at", "id")
        if connection.features.has_select_for_update_skip_locked:
            due = due.select_for_update(skip_locked=True)
        report = due.first()
        if report is None:
            return None
        report.attempts += 1
        report.next_attempt_at = now + _lease()
        report.save(update_fields=["attempts", "next_attempt_at"])
    return report


def _settle(report: MeterReport, **fields) -> None:
    MeterReport.objects.filter(pk=report.pk, sent_at__isnull=True).update(**fields)


def meter_report_send(report: MeterReport, *, now: datetime) -> str:
    """Send one claimed row; returns "sent", "retrying" or "refused"."""
    if report.hour < now - STRIPE_MAX_AGE:
        _settle(report, refused=True, last_error="older than the 35 days Stripe accepts")
        logger.error("meter event %s not sent: its hour is older than 35 days", report.identifier)
        return "refused"
    try:
        stripe_gateway.meter_event_create(
            event_name=report.meter, customer_id=report.stripe_customer_id, value=report.quantity,
            timestamp=int(report.hour.timestamp()), identifier=report.identifier,
        )
    except stripe_gateway.StripeRefused as exc:
        _settle(report, refused=True, last_error=str(exc)[:200])
        logger.error("meter event %s refused by Stripe: %s", report.identifier, exc)
        return "refused"
    except (stripe_gateway.StripeUnavailable, stripe_gateway.StripeNotConfigured) as exc:
        _settle(report, next_attempt_at=now + retry_delay(report.attempts), last_error=str(exc)[:200])
        logger.warning("meter event %s not sent (attempt %s): %s", report.identifier, report.attempts, exc)
        return "retrying"
    _settle(report, sent_at=timezone.now(), last_error="")
    return "sent"


def meter_reports_send(*, now: datetime | None = None, limit: int = 1000, give_up_after: int = 3) -> SendResult:
    """Send due outbox rows, oldest due first, at most ``limit``; stops early once ``give_up_after`` sends in a
    row found Stripe unavailable (the rest wait for the next run rather than each wait out a timeout)."""
    result = SendResult()
    if not stripe_gateway.configured():
        return result
    now = now or timezone.now()
    unavailable_in_a_row = 0
    for _ in range(limit):
        report = _claim(now)
        if report is None:
            break
        outcome = meter_report_send(report, now=now)
        setattr(result, outcome, getattr(result, outcome) + 1)
        unavailable_in_a_row = unavailable_in_a_row + 1 if outcome == "retrying" else 0
        if unavailable_in_a_row >= give_up_after:
            break
    return result


def meter_jobs(*, now: datetime | None = None) -> SendResult:
    """Rollups, then planning, then sending: what beat and the embedded loop run every minute."""
    rollups_update()
    meter_reports_plan(now=now)
    return meter_reports_send(now=now)
