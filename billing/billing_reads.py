"""What the tenant billing page and ``/api/v1/billing`` show, read once for both: the plan and its prices, the
subscription's state, the current period's usage (from rollups), the projected bill, spend against the cap and
the invoices (from our Invoice table, never a call to Stripe while the page renders)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from django.db.models import Q
from django.utils import timezone

from billing import pricing
from billing.bill_estimate import Estimate, Rate, estimate_bill
from billing.models import Invoice, Plan
from billing.quota_reads import Meter, quota_report
from billing.subscriptions import BillingState, billing_state
from billing.usage_reads import Breakdown, usage_breakdown
from core.quotas import SYDNEY
from tenants.models import Tenant

INVOICES_PER_PAGE = 12


# --- the period ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Period:
    start: datetime
    end: datetime
    source: str  # "subscription" (Stripe's current period) or "month" (the Sydney calendar month)
    now: datetime

    @property
    def length(self) -> timedelta:
        return self.end - self.start

    @property
    def elapsed(self) -> timedelta:
        return min(max(self.now - self.start, timedelta(0)), self.length)


def calendar_month(now: datetime) -> tuple[datetime, datetime]:
    local = now.astimezone(SYDNEY)
    start = datetime(local.year, local.month, 1, tzinfo=SYDNEY)
    end = datetime(local.year + (local.month == 12), local.month % 12 + 1, 1, tzinfo=SYDNEY)
    return start, end


def current_period(state: BillingState, now: datetime) -> Period:
    """Stripe's current period while a subscription runs; otherwise the Sydney calendar month (the month the
    spend cap counts)."""
    if state.period_start and state.period_end and state.period_start <= now < state.period_end:
        return Period(start=state.period_start, end=state.period_end, source="subscription", now=now)
    start, end = calendar_month(now)
    return Period(start=start, end=end, source="month", now=now)


# --- prices ----------------------------------------------------------------------------------------
def rates(plan: Plan | None = None) -> dict[str, Rate]:
    """The plan's prices per 1,000 tokens: its own for a model where it sets one, else the platform's."""
    return {model: Rate(p.input_per_1k, p.output_per_1k) for model, p in pricing.prices_for_plan(plan).items()}


# --- invoices (keyset pages: newest first) ---------------------------------------------------------
@dataclass(frozen=True)
class InvoicePage:
    invoices: list[Invoice]
    next_cursor: str | None  # pass back as ``before`` for the next (older) page


def _parse_cursor(cursor: str | None) -> tuple[datetime, str] | None:
    """``<epoch microseconds>_<stripe invoice id>``; anything else reads as the first page."""
    if not cursor or "_" not in cursor:
        return None
    micros, _, stripe_id = cursor.partition("_")
    if not micros.isdigit() or not stripe_id or len(stripe_id) > 64:
        return None
    try:
        created = datetime.fromtimestamp(int(micros) / 1_000_000, tz=UTC)
    except (OverflowError, ValueError, OSError):
        return None
    return created, stripe_id


def invoice_page(*, tenant: Tenant, before: str | None = None, size: int = INVOICES_PER_PAGE) -> InvoicePage:
    qs = Invoice.objects.filter(tenant=tenant).exclude(status="draft")
    cursor = _parse_cursor(before)
    if cursor is not None:
        created, stripe_id = cursor
        qs = qs.filter(Q(created__lt=created) | Q(created=created, stripe_invoice_id__lt=stripe_id))
    rows = list(qs.order_by("-created", "-stripe_invoice_id")[: size + 1])
    more = len(rows) > size
    rows = rows[:size]
    next_cursor = None
    if more and rows:
        last = rows[-1]
        next_cursor = f"{int(last.created.timestamp() * 1_000_000)}_{last.stripe_invoice_id}"
    return InvoicePage(invoices=rows, next_cursor=next_cursor)


# --- the overview ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class BillingOverview:
    tenant: Tenant
    state: BillingState
    plan: Plan | None
    period: Period
    usage: Breakdown
    estimate: Estimate
    rates: dict[str, Rate]
    spend: Meter
    payments_configured: bool

    @property
    def included_tokens(self) -> int:
        return self.plan.included_tokens if self.plan is not None else 0


def billing_overview(*, tenant: Tenant, now: datetime | None = None) -> BillingOverview:
    """Everything but the invoices (paged apart). About ten queries and one Redis round trip: the period's rollups,
    summed in the database, and, when the period starts or ends inside an hour, that part-hour's usage events."""
    now = now or timezone.now()
    report = quota_report(tenant=tenant, api_keys=[], now=now.timestamp())
    state = billing_state(tenant, now=now)
    plan = state.plan or report.plan
    period = current_period(state, now)
    usage = usage_breakdown(tenant=tenant, start=period.start, end=period.end)
    prices = rates(plan)
    estimate = estimate_bill(
        fee=plan.monthly_fee_aud if plan is not None else Decimal(0),
        included_tokens=plan.included_tokens if plan is not None else 0,
        rates=prices,
        usage={model: (line.prompt_tokens, line.completion_tokens) for model, line in usage.by_model.items()},
        elapsed=period.elapsed, length=period.length,
    )
    return BillingOverview(
        tenant=tenant, state=state, plan=plan, period=period, usage=usage, estimate=estimate, rates=prices,
        spend=report.meters_by_kind["month_spend"], payments_configured=state.configured,
    )


def self_serve_plans() -> list[Plan]:
    return list(Plan.objects.filter(self_serve=True).order_by("monthly_fee_aud", "name"))
