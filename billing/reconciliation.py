"""Staff reconciliation of metered usage: for a tenant and billing period, per meter, what our usage events hold
(through the rollups, and the events themselves for the part-hours at the period's ends), what the outbox reported
to Stripe (sent, waiting, refused), what Stripe holds (its meter event summaries) and what Stripe invoiced, with
every difference flagged.

A period holds exactly the usage inside it: Stripe files a meter event by its timestamp, and the outbox stamps each
span at its start, splitting an hour at the subscription's start and at every period boundary inside it
(``billing.meters``), so both sides count the same tokens in each period.
"""

from __future__ import annotations

import calendar
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from django.db.models import Case, CharField, Q, Sum, Value, When
from django.utils import timezone

from billing import stripe_gateway
from billing.billing_reads import calendar_month
from billing.meters import PLAN_HOURS, reporting_tenants
from billing.models import Invoice, MeterReport, RollupWatermark, StripeMeter, StripePrice, Subscription
from billing.usage_reads import tokens_by_model
from billing.usage_spans import hour_floor
from tenants.models import Tenant

logger = logging.getLogger("wattle.reconciliation")

TOKENS = {"input": "prompt_tokens", "output": "completion_tokens"}


def minute_floor(at: datetime) -> datetime:
    return datetime.fromtimestamp(int(at.timestamp()) // 60 * 60, UTC)


def _month_before(at: datetime) -> datetime:
    """The same moment a calendar month earlier (Stripe's monthly periods), the day clamped to the month's end."""
    at = at.astimezone(UTC)
    year, month = (at.year, at.month - 1) if at.month > 1 else (at.year - 1, 12)
    return at.replace(year=year, month=month, day=min(at.day, calendar.monthrange(year, month)[1]))


@dataclass
class MeterLine:
    """One meter in one period. ``None``: not known (no Stripe figure asked for, or no invoice for the period)."""

    meter: StripeMeter
    ours: int = 0  # tokens in the period so far, from our rollups and the part-hours' events
    due: int | None = None  # of those, what the outbox should hold by now (closed spans since reporting began)
    reported: int = 0  # sent and acknowledged by Stripe
    waiting: int = 0  # in the outbox, not sent yet (retrying)
    refused: int = 0  # Stripe refused for good
    stripe: int | None = None
    # What the outbox reported over the minutes Stripe was asked about (its summaries take whole minutes; a period
    # boundary need not be one), which is what ``stripe`` must equal.
    stripe_reported: int = 0
    invoiced: int | None = None
    flags: list[str] = field(default_factory=list)

    @property
    def outbox(self) -> int:
        return self.reported + self.waiting + self.refused


@dataclass
class PeriodReconciliation:
    label: str
    start: datetime
    end: datetime
    lines: list[MeterLine]
    stripe_error: str = ""  # why the Stripe column is empty ("" when it was asked and answered, or not asked)

    @property
    def flagged(self) -> bool:
        return any(line.flags for line in self.lines)

    @property
    def totals(self) -> dict[str, int | None]:
        """Every meter's tokens together (the overview's row); invoiced is None when no meter was invoiced."""
        invoiced = [line.invoiced for line in self.lines if line.invoiced is not None]
        return {
            "ours": sum(line.ours for line in self.lines),
            "reported": sum(line.reported for line in self.lines),
            "waiting": sum(line.waiting for line in self.lines),
            "refused": sum(line.refused for line in self.lines),
            "invoiced": sum(invoiced) if invoiced else None,
        }


@dataclass
class TenantReconciliation:
    tenant: Tenant
    subscription: Subscription | None
    periods: list[PeriodReconciliation]

    @property
    def flagged(self) -> bool:
        return any(period.flagged for period in self.periods)


def billing_periods(*, subscription: Subscription | None, now: datetime) -> list[tuple[str, datetime, datetime]]:
    """The subscription's current and previous periods; Sydney calendar months when there is no subscription."""
    if subscription is not None and subscription.current_period_start and subscription.current_period_end:
        start, end = subscription.current_period_start, subscription.current_period_end
        before = (
            Invoice.objects.filter(tenant_id=subscription.tenant_id, period_end=start, period_start__lt=start)
            .values_list("period_start", flat=True).first()
        ) or _month_before(start)
        return [("Current period", start, end), ("Previous period", before, start)]
    start, end = calendar_month(now)
    previous, _ = calendar_month(start - timedelta(days=1))
    return [("This month", start, end), ("Last month", previous, start)]


def _outbox(tenant: Tenant, start: datetime, end: datetime) -> dict[tuple[str, str], int]:
    """Tokens of the outbox rows stamped in ``[start, end)`` per (meter, state)."""
    rows = (MeterReport.objects.filter(tenant=tenant, hour__gte=hour_floor(start), hour__lt=end,
                                       span_start__gte=start, span_start__lt=end)
            .annotate(state=_state()).values("meter", "state").annotate(quantity=Sum("quantity")).order_by())
    return {(r["meter"], r["state"]): r["quantity"] or 0 for r in rows}


def _state() -> Case:
    return Case(When(sent_at__isnull=False, then=Value("reported")), When(refused=True, then=Value("refused")),
                default=Value("waiting"), output_field=CharField())


def _invoiced(tenant: Tenant, start: datetime, end: datetime, meters: list[StripeMeter]) -> dict[str, int] | None:
    """Quantities Stripe invoiced per meter event name for usage in the period; None when no invoice covers it.

    A line's own period decides (its midpoint in the period), else its invoice's: the invoice Stripe issues when a
    period ends bills that period's usage."""
    prices = dict(StripePrice.objects.exclude(meter="").values_list("stripe_price_id", "meter"))
    by_meter_id = {m.stripe_meter_id: m.event_name for m in meters}
    lo, hi = start.timestamp(), end.timestamp()
    found, totals = False, {}
    for invoice in Invoice.objects.filter(tenant=tenant, period_end__gt=start - timedelta(days=62),
                                          period_start__lt=end + timedelta(days=62)).exclude(status="void"):
        inv_start = invoice.period_start.timestamp() if invoice.period_start else None
        inv_end = invoice.period_end.timestamp() if invoice.period_end else None
        if inv_start is not None and inv_end is not None and inv_end > inv_start:
            found = found or lo <= (inv_start + inv_end) / 2 < hi
        for line in invoice.lines or []:
            if not isinstance(line, dict):
                continue
            event_name = by_meter_id.get(line.get("meter") or "") or prices.get(line.get("price") or "")
            if event_name is None:
                continue
            line_start, line_end = line.get("period_start") or inv_start, line.get("period_end") or inv_end
            if line_start is None or line_end is None or not lo <= (float(line_start) + float(line_end)) / 2 < hi:
                continue
            found = True
            totals[event_name] = totals.get(event_name, 0) + int(line.get("quantity") or 0)
    return totals if found else None


def _stripe_totals(customer_id: str, lines: list[MeterLine], first: datetime, end: datetime) -> str:
    """Fill each line's ``stripe`` from Stripe's meter summaries over ``[first, end)`` (whole minutes); returns why
    not, or "". One failure ends the asking (the page must not wait out a timeout per meter)."""
    if end <= first:
        for line in lines:
            line.stripe = 0
        return ""
    for line in lines:
        try:
            summaries = stripe_gateway.meter_event_summaries(
                meter_id=line.meter.stripe_meter_id, customer_id=customer_id, start=int(first.timestamp()),
                end=int(end.timestamp()), hourly=False)
        except stripe_gateway.StripeNotConfigured:
            return "payments are not configured"
        except (stripe_gateway.StripeUnavailable, stripe_gateway.StripeRefused) as exc:
            logger.warning("reconciliation: Stripe meter summaries unavailable: %s", exc)
            for other in lines:
                other.stripe = None
            return "unavailable"
        line.stripe = int(sum(value for _start, _end, value in summaries))
    return ""


def tenant_reconciliation(*, tenant: Tenant, now: datetime | None = None, ask_stripe: bool = True
                          ) -> TenantReconciliation:
    """Every meter with anything to show in the tenant's current and previous billing periods."""
    now = now or timezone.now()
    subscription = Subscription.objects.filter(tenant=tenant).select_related("plan").first()
    reporting = reporting_tenants(tenant_ids=[tenant.pk]).get(tenant.pk)
    planned_through = datetime.fromtimestamp(
        RollupWatermark.objects.filter(name=PLAN_HOURS).values_list("last_id", flat=True).first() or 0, UTC)
    meters = list(StripeMeter.objects.all())
    periods = []
    for label, start, end in billing_periods(subscription=subscription, now=now):
        ours = tokens_by_model(tenant=tenant, start=start, end=end)
        due = None
        if reporting is not None:
            due_from, due_to = max(start, reporting.start), min(end, reporting.closed_through(planned_through))
            due = tokens_by_model(tenant=tenant, start=due_from, end=due_to) if due_to > due_from else {}
        outbox = _outbox(tenant, start, end)
        # Stripe's summaries take whole minutes: ask from the minute the period starts in, up to the one it ends in
        # (or now), and compare with what was reported over those same minutes.
        stripe_from, stripe_to = minute_floor(start), minute_floor(min(end, now))
        stripe_window = _outbox(tenant, stripe_from, stripe_to) if stripe_to > stripe_from else {}
        invoiced = _invoiced(tenant, start, end, meters)
        lines = []
        for meter in meters:
            index = 0 if meter.direction == "input" else 1
            line = MeterLine(
                meter=meter, ours=ours.get(meter.model, (0, 0))[index],
                due=None if due is None else due.get(meter.model, (0, 0))[index],
                reported=outbox.get((meter.event_name, "reported"), 0),
                waiting=outbox.get((meter.event_name, "waiting"), 0),
                refused=outbox.get((meter.event_name, "refused"), 0),
                stripe_reported=stripe_window.get((meter.event_name, "reported"), 0),
                invoiced=None if invoiced is None else invoiced.get(meter.event_name, 0),
            )
            if line.ours or line.outbox or line.invoiced:
                lines.append(line)
        stripe_error = ""
        if ask_stripe and lines and subscription is not None and subscription.stripe_customer_id:
            stripe_error = _stripe_totals(subscription.stripe_customer_id, lines, stripe_from, stripe_to)
        for line in lines:
            _flag(line)
        periods.append(PeriodReconciliation(label=label, start=start, end=end, lines=lines,
                                            stripe_error=stripe_error))
    return TenantReconciliation(tenant=tenant, subscription=subscription, periods=periods)


def _flag(line: MeterLine) -> None:
    if line.due is not None and line.due != line.outbox:
        difference = line.due - line.outbox
        line.flags.append(f"{difference:,} tokens not in the outbox" if difference > 0
                          else f"the outbox holds {-difference:,} tokens more than our usage")
    elif line.due is None and line.outbox and line.ours != line.outbox:
        line.flags.append("reported, but no longer reporting: our usage and the outbox differ")
    if line.refused:
        line.flags.append(f"{line.refused:,} tokens refused by Stripe")
    if line.stripe is not None and line.stripe != line.stripe_reported:
        line.flags.append("Stripe holds a different total than was reported")
    if line.invoiced is not None:
        billed_against = line.stripe if line.stripe is not None else line.reported
        if line.invoiced != billed_against:
            line.flags.append("invoiced a different quantity than " +
                              ("Stripe holds" if line.stripe is not None else "was reported"))


@dataclass
class OverviewRow:
    tenant: Tenant
    reconciliation: TenantReconciliation


def reconciliation_overview(*, now: datetime | None = None, offset: int = 0, limit: int = 50
                            ) -> tuple[list[OverviewRow], int]:
    """Tenants with a Stripe customer or meter reports, by name, a page at a time, reconciled from our database
    only (Stripe's figures are on each tenant's page); flagged tenants first within the page. Returns the rows and
    the number of such tenants."""
    now = now or timezone.now()
    tenants = Tenant.objects.filter(
        Q(pk__in=Subscription.objects.exclude(stripe_customer_id="").values("tenant_id"))
        | Q(pk__in=MeterReport.objects.values("tenant_id"))
    ).order_by("name", "pk")
    total = tenants.count()
    rows = [OverviewRow(tenant=t, reconciliation=tenant_reconciliation(tenant=t, now=now, ask_stripe=False))
            for t in tenants[offset:offset + limit]]
    rows.sort(key=lambda row: not row.reconciliation.flagged)
    return rows, total
