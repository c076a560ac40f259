"""What the tenant billing page and ``/api/v1/billing`` show, read once for both: the plan and its prices, the
subscription's state, the current period's usage (from rollups), the projected bill, spend against the cap and
the invoices (from our Invoice table, never a call to Stripe while the page renders)."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from django.db.models import Q
from django.utils import timezone

from billing import payment_access
from billing.bill_estimate import Estimate, Rate, estimate_bill
from billing.models import Invoice, ModelPrice, Plan, Subscription
from billing.quota_reads import Meter, quota_report
from billing.usage_reads import Breakdown, usage_breakdown
from core.quotas import SYDNEY
from tenants.models import Tenant

INVOICES_PER_PAGE = 12


# --- the subscription's state ----------------------------------------------------------------------
@dataclass(frozen=True)
class BillingState:
    """The subscription as the page explains it, in the shape of ``billing.subscriptions.BillingState``, which is
    the source once that module is installed; until then this reads the Subscription row itself."""

    configured: bool
    plan: Plan | None
    subscription: Subscription | None
    status: str  # a Subscription.Status value; "" when not subscribed
    label: str
    period_start: datetime | None
    period_end: datetime | None
    trial_end: datetime | None
    cancel_at_period_end: bool
    grace_deadline: datetime | None
    refused: bool
    message: str
    tone: str  # "info", "warning" or "error"
    can_checkout: bool
    can_manage: bool


NOT_CONFIGURED = ("Payments are not configured in this installation: the console shows usage and estimated "
                  "charges, and nothing is charged.")


def _state_from_rows(tenant: Tenant, plan: Plan | None, now: datetime) -> BillingState:
    configured = payment_access.payments_configured()
    subscription = Subscription.objects.filter(tenant=tenant).select_related("plan").first()
    status = subscription.status if subscription is not None else Subscription.Status.NONE
    label = Subscription.Status(status).label if status in Subscription.Status.values else status
    deadline = payment_access.grace_deadline(subscription) if subscription is not None else None
    unpaid_after = payment_access.unpaid_after(plan=plan, subscription=subscription, configured=configured)
    refused = unpaid_after is not None and unpaid_after <= now.timestamp()
    tone, message = "info", ""
    if not configured:
        message = NOT_CONFIGURED
    elif status == Subscription.Status.PAST_DUE:
        tone = "error" if refused else "warning"
        message = (f"A payment failed. The API answers 402 payment_required from "
                   f"{timezone.localtime(deadline):%-d %b %Y %H:%M %Z} until the open invoice is paid."
                   if deadline and not refused else
                   "A payment failed and the grace period has ended: the API answers 402 payment_required until "
                   "the open invoice is paid.")
    elif refused:
        tone = "error"
        message = "This plan needs a subscription in good standing: the API answers 402 payment_required."
    return BillingState(
        configured=configured, plan=plan, subscription=subscription, status=status, label=label or "Not subscribed",
        period_start=subscription.current_period_start if subscription else None,
        period_end=subscription.current_period_end if subscription else None,
        trial_end=subscription.trial_end if subscription else None,
        cancel_at_period_end=bool(subscription and subscription.cancel_at_period_end),
        grace_deadline=deadline, refused=refused, message=message, tone=tone,
        can_checkout=configured and status not in payment_access.LIVE,
        can_manage=configured and subscription is not None and bool(subscription.stripe_customer_id),
    )


def billing_state(*, tenant: Tenant, plan: Plan | None, now: datetime):
    """``billing.subscriptions.billing_state`` where it exists (the one account of a subscription the banner and
    this page share), else the same fields read here."""
    if importlib.util.find_spec("billing.subscriptions") is not None:
        from billing import subscriptions

        if hasattr(subscriptions, "billing_state"):
            return subscriptions.billing_state(tenant, now=now)
    return _state_from_rows(tenant, plan, now)


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
def rates() -> dict[str, Rate]:
    return {p.model: Rate(p.input_per_1k_aud, p.output_per_1k_aud) for p in ModelPrice.objects.all()}


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
    state: BillingState  # or billing.subscriptions' BillingState: the same fields
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
    """Everything but the invoices (paged apart). About ten queries and one Redis round trip, none of them over
    usage events: the period's hourly rollups, summed in the database."""
    now = now or timezone.now()
    report = quota_report(tenant=tenant, api_keys=[], now=now.timestamp())
    state = billing_state(tenant=tenant, plan=report.plan, now=now)
    plan = state.plan or report.plan
    period = current_period(state, now)
    usage = usage_breakdown(tenant=tenant, start=period.start, end=period.end)
    prices = rates()
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
