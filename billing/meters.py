"""Usage to Stripe Billing Meters, through an outbox (``MeterReport``): exactly the tokens our usage events hold.

Two jobs, each safe to run on several workers at once:

- ``meter_reports_plan`` writes one row per (tenant, meter, span) once the span has closed (its end plus
  ``BILLING_METER_SETTLE_S``). A span is a UTC hour, from the hourly rollups; or, in an hour that holds the
  subscription's start, a billing period's boundary (Stripe's periods start and end at any second) or a plan
  switch (``PlanSwitch``: its spans before it are sent at once by ``meter_reports_flush``), the part of
  the hour on one side of it, from the usage events of that part (``billing.usage_spans``). The part before the
  subscription started, or after a cancelled one ended, is never reported; what came before the end is, even
  when the news of the end came first. When usage for a span grows after it was planned (late events), it
  writes a correcting row with the difference and the next sequence number. Rows are never changed or deleted,
  so the sum of a span's rows is what it reported, and a row's ``identifier``
  (``wtl-<tenant>-<meter>-<YYYYMMDDHH>-<sequence>``, ``…-<YYYYMMDDHHMMSS>-…`` for a part) never changes.
- ``meter_reports_send`` sends the due rows (``meter_event_create``, timestamped at the span's start, so Stripe
  bills each in the period that holds it), marks a row sent only once Stripe acknowledged it, backs off
  exponentially while Stripe is unavailable, and marks a row ``refused`` (logged, shown on the staff
  reconciliation page) when Stripe refuses it for good. A row is claimed (skip-locked on PostgreSQL) and leased
  before it is sent, so two senders never send it at the same time; if a sender dies after Stripe took the event
  but before the row was marked, the retry carries the same identifier and Stripe keeps the first
  (``stripe_gateway.meter_event_create`` treats "already exists" as delivered).

What can go wrong and what it costs: a span reported while its events were still on their way is corrected
(never lost, never counted twice); a row older than Stripe's 35 days is refused and stays visible; a tenant's
usage before its subscription started is never reported. If a boundary becomes known only after its hour was
reported whole (a period moved), later corrections follow the new parts but what was sent stays where Stripe
filed it: nothing is counted twice, and the reconciliation page shows the period it landed in.
"""

from __future__ import annotations

import hashlib
import logging
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import TYPE_CHECKING

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F, Max, Min, Q, Sum
from django.utils import timezone

from billing import stripe_gateway
from billing.models import (
    Invoice,
    MeterReport,
    PlanSwitch,
    RollupWatermark,
    StripeMeter,
    StripePrice,
    Subscription,
    UsageEvent,
    UsageRollup,
)
from billing.payment_access import ENDED, LIVE
from billing.rollups import WATERMARK as ROLLUP_WATERMARK
from billing.rollups import rollups_update
from billing.usage_spans import HOUR, hour_floor, span_tokens

if TYPE_CHECKING:
    import uuid

logger = logging.getLogger("wattle.meters")

# Stripe refuses meter events timestamped more than 35 days ago.
STRIPE_MAX_AGE = timedelta(days=35)
# The planner's own marks (RollupWatermark rows): the last usage event id whose hour it has looked at, and the
# moment (epoch seconds) up to which it has seen spans close: every span ending by then was planned.
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


def identifier_for(*, tenant_id: uuid.UUID | str, meter: str, hour: datetime, sequence: int,
                   part: datetime | None = None) -> str:
    """``wtl-<tenant id>-<meter>-<YYYYMMDDHH>-<sequence>`` for an hour, ``…-<YYYYMMDDHHMMSS>-…`` (the part's start)
    for a part of one, even a part starting on the hour, so a part never takes a whole hour's identifier. At most
    100 characters (Stripe's limit): a meter name too long to fit is cut and followed by a digest of the whole name,
    so the identifier stays unique and stable."""
    stamp = (part or hour).astimezone(UTC).strftime("%Y%m%d%H%M%S" if part is not None else "%Y%m%d%H")
    head, tail = f"wtl-{tenant_id}-", f"-{stamp}-{sequence}"
    room = IDENTIFIER_MAX - len(head) - len(tail)
    if len(meter) > room:
        digest = hashlib.sha256(meter.encode()).hexdigest()[:10]
        meter = f"{meter[:room - len(digest) - 1]}~{digest}"
    return f"{head}{meter}{tail}"


# --- who is reported, from when ----------------------------------------------------------------------------------
def _second(at: datetime) -> datetime:
    # Stripe's times are whole seconds; a stray fraction would make a part that Stripe's timestamp can't start.
    return at.replace(microsecond=0)


@dataclass(frozen=True)
class Reporting:
    """A tenant whose usage goes to Stripe: its customer, when its subscription started, and the boundaries of its
    billing periods since then (where Stripe's invoices change)."""

    customer_id: str
    start: datetime  # the subscription's start, to the second: nothing before it is reported
    boundaries: tuple[datetime, ...]  # period boundaries after ``start``, sorted
    changed_at: datetime
    # When a cancelled subscription ended: its usage up to then is still reported (the news of the end usually
    # comes before its last hour has closed), and nothing after it (None: it runs).
    end: datetime | None = None

    def _cuts(self, hour: datetime) -> list[datetime]:
        end = hour + HOUR
        edges = (self.start, *self.boundaries, *((self.end,) if self.end is not None else ()))
        return sorted({b for b in edges if hour < b < end})

    def spans(self, hour: datetime) -> list[tuple[datetime, datetime]]:
        """The spans of ``hour`` that are reported, in order: the whole hour, or its parts between the boundaries
        inside it; none before the subscription started or after it ended."""
        if hour + HOUR <= self.start or (self.end is not None and hour >= self.end):
            return []
        edges = [hour, *self._cuts(hour), hour + HOUR]
        return [(a, b) for a, b in pairwise(edges) if a >= self.start and (self.end is None or b <= self.end)]

    def split(self, hour: datetime) -> bool:
        """Whether ``hour`` is reported in parts (a boundary or the start lies inside it)."""
        return bool(self._cuts(hour))

    def closed_through(self, cutoff: datetime) -> datetime:
        """The end of the last span closed by ``cutoff``: the hour it lies in, or a boundary inside that hour."""
        hour = hour_floor(cutoff)
        return max([hour, *(b for b in self._cuts(hour) if b <= cutoff)])


def _boundaries(tenant_ids, since: datetime) -> dict:
    """Tenant id -> the period boundaries its invoices name (start and end of each period invoiced) and its plan
    switches, since ``since``."""
    found: dict = defaultdict(set)
    # An invoice with an empty period (a subscription's first, billing no usage) names no boundary.
    rows = (Invoice.objects.filter(tenant_id__in=tenant_ids, period_end__gte=since, period_start__isnull=False,
                                   period_end__gt=F("period_start"))
            .values_list("tenant_id", "period_start", "period_end"))
    for tenant_id, start, end in rows:
        found[tenant_id].update(at for at in (start, end) if at is not None and at >= since)
    # A plan switch: the old plan's metered prices bill usage before it, the new plan's usage from it on.
    for tenant_id, at in PlanSwitch.objects.filter(tenant_id__in=tenant_ids, at__gte=since).values_list(
            "tenant_id", "at"):
        found[tenant_id].add(at)
    return found


def reporting_tenants(*, tenant_ids=None, since: datetime | None = None) -> dict[uuid.UUID, Reporting]:
    """Tenants with a Stripe customer and a running subscription (``payment_access.LIVE``), or one that ended since
    ``since`` (``payment_access.ENDED``: reported up to its end), to a plan with metered prices, keyed by tenant id,
    each with the boundaries that split its hours (those from ``since`` on: by default as far back as Stripe takes
    meter events).

    The start is Stripe's ``start_date`` of the subscription. A row from before we kept it falls back on the
    earliest of the current period's start and the start of any period Stripe invoiced. The boundaries are the
    current period's start and end, the trial's end, and the periods of the tenant's invoices (past periods: a
    correction for last period's part-hour still splits where it did), and its plan switches (``PlanSwitch``)."""
    since = since or timezone.now() - STRIPE_MAX_AGE - timedelta(days=1)
    metered = StripePrice.objects.filter(kind__in=[StripePrice.Kind.INPUT, StripePrice.Kind.OUTPUT])
    subscriptions = (
        Subscription.objects.filter(Q(status__in=LIVE) | Q(status__in=ENDED, current_period_end__gt=since),
                                    current_period_start__isnull=False, plan__in=metered.values("plan_id"))
        .exclude(stripe_customer_id="")
    )
    if tenant_ids is not None:
        subscriptions = subscriptions.filter(tenant_id__in=tenant_ids)
    rows = list(subscriptions.values_list("tenant_id", "stripe_customer_id", "started_at", "current_period_start",
                                          "current_period_end", "trial_end", "updated_at", "status"))
    unknown_start = [row[0] for row in rows if row[2] is None]
    invoiced = dict(
        Invoice.objects.filter(tenant_id__in=unknown_start, period_start__isnull=False,
                               period_end__gt=F("period_start"))
        .values("tenant_id").annotate(first=Min("period_start")).values_list("tenant_id", "first")
    ) if unknown_start else {}
    boundaries = _boundaries([row[0] for row in rows], since)
    reporting = {}
    for tenant_id, customer_id, started_at, period_start, period_end, trial_end, changed_at, status in rows:
        start = _second(started_at or min(period_start, invoiced.get(tenant_id, period_start)))
        cuts = {_second(at) for at in (period_start, period_end, trial_end, *boundaries.get(tenant_id, ()))
                if at is not None}
        # An ended subscription's period ends when it did (``subscription_apply``); a row from before that was
        # kept ended by the time it was last written, at the latest.
        end = _second(min(period_end, changed_at)) if status in ENDED else None
        reporting[tenant_id] = Reporting(customer_id=customer_id, start=start,
                                         boundaries=tuple(sorted(at for at in cuts if at > start)),
                                         changed_at=changed_at, end=end)
    return reporting


# --- planning ------------------------------------------------------------------------------------------------------
def _mark(name: str) -> tuple[RollupWatermark, bool]:
    RollupWatermark.objects.get_or_create(name=name)
    mark = RollupWatermark.objects.select_for_update().get(name=name)
    return mark, mark.last_id == 0


def _hourly_totals(query: Q) -> dict[tuple, dict[str, list[int]]]:
    """(tenant_id, hour) -> model -> [prompt tokens, completion tokens] over every key, from the hourly rollups."""
    rows = (
        UsageRollup.objects.filter(query, period=UsageRollup.Period.HOUR)
        .values("tenant_id", "start", "model")
        .annotate(prompt_tokens=Sum("prompt_tokens"), completion_tokens=Sum("completion_tokens"))
        .order_by()
    )
    totals: dict[tuple, dict[str, list[int]]] = defaultdict(dict)
    for r in rows:
        totals[(r["tenant_id"], r["start"])][r["model"]] = [r["prompt_tokens"] or 0, r["completion_tokens"] or 0]
    return totals


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
    """Write the outbox rows for every closed span not yet (fully) reported; returns the rows written.

    Which (tenant, hour) pairs it looks at: the hours that closed since its last run, for every reporting tenant;
    the hour in progress, for a tenant with a boundary in it that has passed (the part before it is closed, and
    Stripe finalises the period's invoice about an hour after it ends); hours with usage events rolled up since its
    last run that it had already closed (late events); and, for a tenant whose subscription changed since then
    (every tenant, when a meter is new), every hour from the subscription's start. For each closed span, what the
    usage holds minus what the span's rows already carry becomes a new row: planning twice writes nothing new.
    Runs one at a time (its marks are locked for the transaction)."""
    now = now or timezone.now()
    cutoff = now - timedelta(seconds=settings.BILLING_METER_SETTLE_S)  # spans ending by then have closed
    closed = hour_floor(cutoff)  # hours before this have closed
    oldest = hour_floor(now - STRIPE_MAX_AGE) + HOUR
    hours_mark, fresh = _mark(PLAN_HOURS)
    events_mark, _ = _mark(PLAN_EVENTS)
    meters_mark, _ = _mark(PLAN_METERS)
    rolled_up = RollupWatermark.objects.filter(name=ROLLUP_WATERMARK).values_list("last_id", flat=True).first() or 0
    hours_from = max(hour_floor(datetime.fromtimestamp(hours_mark.last_id, UTC)), oldest)

    tenants = reporting_tenants(since=oldest)
    meter_rows = list(StripeMeter.objects.all())
    meters = {(m.model, m.direction): m.event_name for m in meter_rows}
    newest_meter = max((m.pk for m in meter_rows), default=0)
    written: list[MeterReport] = []
    if tenants and meters:
        hours: dict[tuple, dict[str, list[int]]] = {}
        if closed > hours_from:  # the hours that closed since the last run
            hours |= _hourly_totals(Q(tenant_id__in=list(tenants), start__gte=hours_from, start__lt=closed))
        for tenant_id, reporting in tenants.items():
            if reporting.closed_through(cutoff) > closed:  # a part of the hour in progress has closed
                hours.setdefault((tenant_id, closed), {})
        if not fresh:  # the first run looks at every hour from ``oldest``: nothing is late or changed yet
            late = _late_hours(after_id=events_mark.last_id, upto_id=rolled_up, before=hours_from, oldest=oldest,
                               tenants=tenants)
            if late:
                found = _hourly_totals(Q(tenant_id__in={t for t, _h in late}, start__in={h for _t, h in late}))
                hours |= {key: value for key, value in found.items() if key in late}
            since = hours_mark.updated_at - _CHANGED_OVERLAP
            new_meter = newest_meter > meters_mark.last_id
            changed = [tenant_id for tenant_id, r in tenants.items() if new_meter or r.changed_at >= since]
            if changed:
                hours |= _hourly_totals(Q(tenant_id__in=changed, start__gte=oldest, start__lt=closed))
        written = _plan(hours, tenants=tenants, meters=meters, now=now, cutoff=cutoff)

    events_mark.last_id = max(events_mark.last_id, rolled_up)
    hours_mark.last_id = max(hours_mark.last_id, int(cutoff.timestamp()))
    meters_mark.last_id = max(meters_mark.last_id, newest_meter)
    for mark in (events_mark, hours_mark, meters_mark):
        mark.save(update_fields=["last_id", "updated_at"])
    if written:
        logger.info("meter outbox: %s rows planned (%s corrections)", len(written),
                    sum(1 for r in written if r.sequence))
    return written


@dataclass
class _Hour:
    """One (tenant, meter, hour) being planned: the tokens each closed span holds, and the layout of its spans."""

    spans: list[tuple[datetime, datetime]]
    split: bool
    wanted: dict[datetime, int]


def _plan(hours: dict[tuple, dict[str, list[int]]], *, tenants: dict, meters: dict, now: datetime,
          cutoff: datetime) -> list[MeterReport]:
    """New rows for what the closed spans of ``hours`` hold beyond what their rows already carry. ``hours``: the
    hourly rollups' tokens per model, used as they are for a whole hour; an hour reported in parts is read from
    its events, part by part."""
    planned: dict[tuple, _Hour] = {}  # (tenant_id, meter, hour)
    for (tenant_id, hour), by_model in hours.items():
        reporting = tenants[tenant_id]
        spans = reporting.spans(hour)
        closed_spans = [span for span in spans if span[1] <= cutoff]
        if not closed_spans:
            continue
        split = reporting.split(hour)
        per_span = ({start: span_tokens(tenant_id=tenant_id, start=start, end=end) for start, end in closed_spans}
                    if split else {hour: by_model})
        for span_start, models in per_span.items():
            for model, counts in models.items():
                for index, direction in enumerate(DIRECTIONS):
                    meter = meters.get((model, direction))
                    if meter is None or not counts[index]:
                        continue
                    entry = planned.setdefault((tenant_id, meter, hour), _Hour(spans=spans, split=split, wanted={}))
                    entry.wanted[span_start] = entry.wanted.get(span_start, 0) + counts[index]
    if not planned:
        return []
    existing: dict[tuple, dict[datetime, tuple[int, int]]] = defaultdict(dict)
    for r in (MeterReport.objects.filter(tenant_id__in={t for t, _m, _h in planned},
                                         hour__in={h for _t, _m, h in planned})
              .values("tenant_id", "meter", "hour", "span_start")
              .annotate(quantity=Sum("quantity"), sequence=Max("sequence")).order_by()):
        existing[(r["tenant_id"], r["meter"], r["hour"])][r["span_start"]] = (r["quantity"], r["sequence"])
    rows = []
    for key in sorted(planned, key=lambda k: (k[2], str(k[0]), k[1])):
        rows += _rows_for(key, planned[key], existing.get(key, {}), customer_id=tenants[key[0]].customer_id,
                          now=now, cutoff=cutoff)
    return MeterReport.objects.bulk_create(rows)


def _rows_for(key: tuple, entry: _Hour, reported: dict[datetime, tuple[int, int]], *, customer_id: str,
              now: datetime, cutoff: datetime) -> list[MeterReport]:
    tenant_id, meter, hour = key
    starts = [start for start, _end in entry.spans]
    # Rows already written count for the span holding their timestamp (one before the first span, in the first):
    # the same spans as when they were written, unless a boundary was learnt since.
    carried: dict[datetime, int] = defaultdict(int)
    for stamp, (quantity, _sequence) in reported.items():
        if stamp < starts[0] and starts[0] > hour:
            # Before the subscription started inside this hour: an earlier subscription's part (one that ended in
            # this hour), billed with it; it takes nothing from this subscription's part.
            continue
        carried[max([s for s in starts if s <= stamp], default=starts[0])] += quantity
    closed = [start for start, end in entry.spans if end <= cutoff]
    # Never more for the hour than its usage, even if tokens sent before a boundary was known sit in the wrong part.
    room = sum(entry.wanted.get(s, 0) for s in closed) - sum(carried[s] for s in closed)
    if room < 0:
        # Usage events are never deleted: a smaller total means the rollups were rebuilt differently.
        logger.error("meter outbox: %s %s hour %s reported %s tokens more than its usage now holds", tenant_id,
                     meter, hour, -room)
    rows = []
    for span_start in closed:
        tokens = entry.wanted.get(span_start, 0)
        missing = tokens - carried[span_start]
        if missing < 0 and room >= 0:
            logger.warning("meter outbox: %s %s %s reported %s tokens before a boundary inside its hour was known; "
                           "its usage is %s, and the difference stays in the period Stripe filed it in", tenant_id,
                           meter, span_start, carried[span_start], tokens)
        quantity = min(missing, room)
        if quantity <= 0:
            continue
        room -= quantity
        sequence = reported.get(span_start, (0, -1))[1] + 1
        rows.append(MeterReport(
            tenant_id=tenant_id, meter=meter, hour=hour, span_start=span_start, sequence=sequence, quantity=quantity,
            identifier=identifier_for(tenant_id=tenant_id, meter=meter, hour=hour, sequence=sequence,
                                      part=span_start if entry.split else None),
            stripe_customer_id=customer_id, created_at=now, next_attempt_at=now,
        ))
    return rows


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
    if report.span_start < now - STRIPE_MAX_AGE:
        _settle(report, refused=True, last_error="older than the 35 days Stripe accepts")
        logger.error("meter event %s not sent: its time is older than 35 days", report.identifier)
        return "refused"
    try:
        stripe_gateway.meter_event_create(
            event_name=report.meter, customer_id=report.stripe_customer_id, value=report.quantity,
            timestamp=int(report.span_start.timestamp()), identifier=report.identifier,
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


# --- before a plan switch ------------------------------------------------------------------------------------------
class FlushFailed(Exception):
    """Stripe could not take every report up to a plan switch (``str()`` says how many are left)."""


def meter_reports_flush(*, tenant_id: uuid.UUID, until: datetime, now: datetime | None = None) -> SendResult:
    """Plan and send, now, every span of the tenant that ends by ``until`` (a plan switch recorded as a
    ``PlanSwitch``, so the switch hour's part before it is a span of its own), without the settle delay: what
    Stripe must bill at the old plan's prices, sent while those prices are still on the subscription. Rows already
    in the outbox (due later, or backing off) are sent too; one another sender holds carries the same identifier,
    and Stripe keeps one. Raises ``FlushFailed`` if Stripe could not take them all (the rows stay for the sender);
    rows Stripe refuses for good are left as refused (shown on the reconciliation page), as they would be anyway."""
    now = now or timezone.now()
    rollups_update()  # the closed hours' rollups include every event in the database now
    oldest = hour_floor(now - STRIPE_MAX_AGE) + HOUR
    with transaction.atomic():
        _mark(PLAN_HOURS)  # one planner at a time: the regular one waits for this
        tenants = reporting_tenants(tenant_ids=[tenant_id], since=oldest)
        meters = {(m.model, m.direction): m.event_name for m in StripeMeter.objects.all()}
        if tenants and meters:
            last = hour_floor(until)
            hours = _hourly_totals(Q(tenant_id=tenant_id, start__gte=oldest, start__lt=last))
            hours.setdefault((tenant_id, last), {})  # the switch hour: its part before ``until`` is read from events
            _plan(hours, tenants=tenants, meters=meters, now=now, cutoff=until)
    result = SendResult()
    pending = list(MeterReport.objects.filter(tenant_id=tenant_id, sent_at__isnull=True, refused=False,
                                              span_start__lt=until).order_by("span_start", "id"))
    for report in pending:
        report.attempts += 1
        MeterReport.objects.filter(pk=report.pk).update(attempts=F("attempts") + 1)
        outcome = meter_report_send(report, now=now)
        setattr(result, outcome, getattr(result, outcome) + 1)
        if outcome == "retrying":
            raise FlushFailed(f"{len(pending) - result.sent - result.refused} meter reports not sent")
    return result


def meter_jobs(*, now: datetime | None = None) -> SendResult:
    """Rollups, then planning, then sending: what beat and the embedded loop run every minute."""
    rollups_update()
    meter_reports_plan(now=now)
    return meter_reports_send(now=now)
