"""Staff pages for metered billing: the reconciliation of our usage, the meter reports, Stripe and invoices."""

from __future__ import annotations

from django.conf import settings
from django.shortcuts import render
from django.views.decorators.http import require_GET

from billing.reconciliation import reconciliation_overview, tenant_reconciliation
from tenants.selectors import tenant_by_slug
from tenants.views.common import staff_view

PAGE_SIZE = 50
MAX_PAGE = 1_000_000


@require_GET
@staff_view
def reconciliation(request):
    """Every tenant with a Stripe customer or meter reports, from our database (flagged first on each page)."""
    try:
        # Bounded: a page past the database's integers would be a 500, not an empty page.
        page = min(max(1, int(request.GET.get("page", "1"))), MAX_PAGE)
    except ValueError:
        page = 1
    rows, total = reconciliation_overview(offset=(page - 1) * PAGE_SIZE, limit=PAGE_SIZE)
    return render(request, "billing/staff/reconciliation.html", {
        "rows": rows, "total": total, "page": page,
        "previous_page": page - 1 if page > 1 else None,
        "next_page": page + 1 if page * PAGE_SIZE < total else None,
        "settle_minutes": max(1, round(settings.BILLING_METER_SETTLE_S / 60)),
    })


@require_GET
@staff_view
def reconciliation_tenant(request, slug: str):
    """One tenant, with what Stripe holds (asked now; "unavailable" when Stripe does not answer)."""
    tenant = tenant_by_slug(slug=slug)
    return render(request, "billing/staff/reconciliation_tenant.html",
                  {"tenant": tenant, "report": tenant_reconciliation(tenant=tenant)})
