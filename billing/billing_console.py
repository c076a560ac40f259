"""The tenant billing page (plan, subscription, usage charts, projected bill, spend cap, invoices), its CSV export
of usage, and the staff revenue page. Thin views: the numbers come from ``billing.billing_reads`` (one overview
shared with ``/api/v1/billing``) and ``billing.revenue``; nothing here reads usage events."""

from __future__ import annotations

import csv
from datetime import timedelta

from django.http import HttpResponse
from django.shortcuts import render
from django.urls import NoReverseMatch, reverse
from django.utils import timezone
from django.views.decorators.http import require_GET

from billing.billing_reads import billing_overview, invoice_page, self_serve_plans
from billing.forms import UsageExportForm
from billing.revenue import revenue_report
from billing.usage_charts import usage_charts
from billing.usage_reads import usage_export_rows
from core.quotas import MICRO
from tenants.permissions import Action
from tenants.views.common import staff_view, tenant_view

# A spreadsheet runs a cell that starts with one of these as a formula (OWASP "CSV injection").
FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\n")
EXPORT_COLUMNS = ["day", "key_id", "key_name", "model", "requests", "errors", "input_tokens", "output_tokens",
                  "total_tokens", "cost_aud"]


def _url_or_none(name: str, *args) -> str | None:
    """Checkout and the customer portal belong to the subscriptions module; until its URLs exist the page shows no
    button rather than failing."""
    try:
        return reverse(name, args=args)
    except NoReverseMatch:
        return None


@require_GET
@tenant_view(Action.BILLING_VIEW)
def tenant_billing(request, access):
    tenant = access.tenant
    overview = billing_overview(tenant=tenant)
    invoices = invoice_page(tenant=tenant, before=request.GET.get("before"))
    can_manage = access.can(Action.BILLING_MANAGE)
    plans = []
    if can_manage and overview.state.can_checkout:
        current = overview.plan.pk if overview.plan is not None else None
        plans = [{"plan": plan, "current": plan.pk == current,
                  "checkout_url": _url_or_none("tenant_billing_checkout", tenant.slug, plan.slug)}
                 for plan in self_serve_plans()]
    elif can_manage and overview.state.configured and overview.state.status in ("active", "trialing"):
        # Subscribed in good standing: another plan is a switch of the running subscription, not a new Checkout.
        current = overview.state.subscription.plan_id if overview.state.subscription else None
        plans = [{"plan": plan, "current": plan.pk == current,
                  "change_url": _url_or_none("tenant_billing_change_plan", tenant.slug, plan.slug)}
                 for plan in self_serve_plans() if plan.stripe_product_id]
    today = timezone.localdate()
    export_form = UsageExportForm(initial={"start": overview.period.start.astimezone(timezone.get_current_timezone())
                                           .date(), "end": today})
    return render(request, "billing/billing.html", {
        "tenant": tenant,
        "overview": overview,
        "charts": usage_charts(overview.usage),
        "invoices": invoices,
        "plans": plans,
        "can_manage": can_manage,
        "portal_url": (_url_or_none("tenant_billing_portal", tenant.slug)
                       if can_manage and overview.state.can_manage else None),
        "price_list": sorted(overview.rates.items()),
        "export_form": export_form,
    })


def _cell(value) -> str | int:
    """Numbers as they are; text that a spreadsheet would run as a formula is prefixed with an apostrophe."""
    if isinstance(value, int):
        return value
    text = str(value)
    return "'" + text if text.startswith(FORMULA_START) else text


class _Echo:
    def write(self, value: str) -> str:
        return value


@require_GET
@tenant_view(Action.BILLING_VIEW)
def tenant_billing_usage_csv(request, access):
    """Usage per Sydney day x key x model over ``start``..``end`` (inclusive), from the daily rollups."""
    form = UsageExportForm(request.GET)
    if not form.is_valid():
        return render(request, "billing/usage_export_error.html", {"tenant": access.tenant, "form": form},
                      status=400)
    start, end = form.cleaned_data["start"], form.cleaned_data["end"]
    writer = csv.writer(_Echo())
    lines = [writer.writerow(EXPORT_COLUMNS)]
    for row in usage_export_rows(tenant=access.tenant, since=start, until=end):
        lines.append(writer.writerow([
            row.day.isoformat(), _cell(row.key_id), _cell(row.key_name), _cell(row.model), row.requests, row.errors,
            row.prompt_tokens, row.completion_tokens, row.prompt_tokens + row.completion_tokens,
            f"{row.cost_micro_aud / MICRO:.6f}",
        ]))
    response = HttpResponse("".join(lines), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = (
        f'attachment; filename="wattle-usage-{access.tenant.slug}-{start.isoformat()}-{end.isoformat()}.csv"')
    response["Cache-Control"] = "private, no-store"
    return response


@require_GET
@staff_view
def staff_revenue(request):
    report = revenue_report(now=timezone.now())
    return render(request, "billing/staff/revenue.html", {
        "report": report, "last_month_end": report.this_month - timedelta(days=1)})
