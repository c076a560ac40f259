"""Staff: revenue per tenant and per plan. Three sources, each read once, grouped in the database:

- MRR: the monthly fee (GST exclusive) of each subscription Stripe is billing (active or past due; trials pay
  nothing yet and are counted apart);
- invoiced: the totals (GST inclusive) of the invoices Stripe issued this and last Sydney calendar month (drafts
  and voided invoices are not revenue);
- usage: A$ at list prices from the daily rollups for the same months, before included tokens (what the usage
  would cost with nothing included; the gap to "invoiced" is the plans' allowances and fees).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal

from django.db.models import Q, Sum

from billing.billing_reads import calendar_month
from billing.models import Invoice, Plan, Subscription, TenantQuota
from billing.payment_access import LIVE
from billing.usage_reads import cost_by_tenant
from core.quotas import MICRO
from tenants.models import Tenant

NOT_REVENUE = ("draft", "void")
PAYING = (Subscription.Status.ACTIVE, Subscription.Status.PAST_DUE)
CENTS = Decimal(100)


@dataclass
class RevenueLine:
    label: str
    plan: Plan | None = None
    tenant: Tenant | None = None
    status: str = ""
    subscribers: int = 0
    trialing: int = 0
    mrr: Decimal = Decimal(0)
    invoiced_this_month: Decimal = Decimal(0)
    invoiced_last_month: Decimal = Decimal(0)
    usage_this_month: Decimal = Decimal(0)
    usage_last_month: Decimal = Decimal(0)

    def add(self, other: RevenueLine) -> None:
        for name in ("subscribers", "trialing", "mrr", "invoiced_this_month", "invoiced_last_month",
                     "usage_this_month", "usage_last_month"):
            setattr(self, name, getattr(self, name) + getattr(other, name))


@dataclass
class RevenueReport:
    this_month: datetime
    last_month: datetime
    tenants: list[RevenueLine]
    plans: list[RevenueLine]
    total: RevenueLine = field(default_factory=lambda: RevenueLine(label="All tenants"))


def revenue_report(*, now: datetime) -> RevenueReport:
    this_start, this_end = calendar_month(now)
    last_start, _ = calendar_month(this_start - timedelta(days=1))

    subscriptions = {s.tenant_id: s for s in Subscription.objects.select_related("plan")}
    invoiced = {
        row["tenant_id"]: row for row in
        Invoice.objects.filter(created__gte=last_start, created__lt=this_end).exclude(status__in=NOT_REVENUE)
        .values("tenant_id").order_by()
        .annotate(this=Sum("total_cents", filter=Q(created__gte=this_start)),
                  last=Sum("total_cents", filter=Q(created__lt=this_start)))
    }
    usage_this = cost_by_tenant(start=this_start, end=this_end)
    usage_last = cost_by_tenant(start=last_start, end=this_start)
    quota_plans = {q.tenant_id: q.plan for q in TenantQuota.objects.select_related("plan").filter(plan__isnull=False)}
    default = Plan.objects.filter(is_default=True).first()

    ids = set(invoiced) | set(usage_this) | set(usage_last) | {
        tid for tid, s in subscriptions.items() if s.status in LIVE}
    tenants = Tenant.objects.filter(pk__in=ids).order_by("name")
    lines = []
    for tenant in tenants:
        sub = subscriptions.get(tenant.pk)
        live = sub is not None and sub.status in LIVE and sub.plan is not None
        plan = sub.plan if live else quota_plans.get(tenant.pk, default)
        inv = invoiced.get(tenant.pk, {})
        lines.append(RevenueLine(
            label=tenant.name, tenant=tenant, plan=plan, status=sub.get_status_display() if sub and sub.status else "",
            subscribers=int(live and sub.status in PAYING), trialing=int(live and sub.status not in PAYING),
            mrr=plan.monthly_fee_aud if live and sub.status in PAYING else Decimal(0),
            invoiced_this_month=Decimal(inv.get("this") or 0) / CENTS,
            invoiced_last_month=Decimal(inv.get("last") or 0) / CENTS,
            usage_this_month=Decimal(usage_this.get(tenant.pk, 0)) / MICRO,
            usage_last_month=Decimal(usage_last.get(tenant.pk, 0)) / MICRO,
        ))
    lines.sort(key=lambda line: (-line.mrr, -line.invoiced_this_month, -line.usage_this_month, line.label))

    by_plan: dict[int | None, RevenueLine] = {}
    total = RevenueLine(label="All tenants")
    for line in lines:
        key = line.plan.pk if line.plan is not None else None
        bucket = by_plan.setdefault(key, RevenueLine(label=line.plan.name if line.plan else "(no plan)",
                                                     plan=line.plan))
        bucket.add(line)
        total.add(line)
    plans = sorted(by_plan.values(), key=lambda line: (-line.mrr, line.label))
    return RevenueReport(this_month=this_start, last_month=last_start, tenants=lines, plans=plans, total=total)
