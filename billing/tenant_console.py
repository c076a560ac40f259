"""The tenant console's pages of billing's numbers: usage over time, and limits with what is left of them.

Here, in billing, as the staff console of organisations (``billing.staff_tenants``) is: billing builds on
tenants, so its pages resolve the tenant and check the role through tenants' own helpers, and tenants imports
nothing from billing. The key pages and the overview (tenants') show billing's sections through the template
tags in ``billing.templatetags.quota``."""

from __future__ import annotations

from django.shortcuts import render
from django.views.decorators.http import require_GET

from billing.quota_reads import quota_report
from billing.selectors import usage_window
from billing.usage_charts import usage_charts
from billing.usage_reads import usage_days
from tenants import forms, selectors
from tenants.permissions import Action
from tenants.views.common import tenant_view


@require_GET
@tenant_view(Action.USAGE_VIEW)
def usage(request, access):
    """Usage over whole Sydney days (the last 30 by default) from the daily rollups: charts of tokens and A$ per
    day, key and model, and the same numbers as tables."""
    form = forms.UsageFilterForm(request.GET or None)
    since = until = None
    status = 200
    if form.is_bound:
        if form.is_valid():
            since, until = form.cleaned_data.get("since"), form.cleaned_data.get("until")
        else:
            status = 400
    since, until = usage_window(since=since, until=until)
    usage = usage_days(tenant=access.tenant, since=since, until=until)
    return render(request, "billing/usage.html",
                  {"tenant": access.tenant, "form": form, "since": since, "until": until, "usage": usage,
                   "charts": usage_charts(usage)},
                  status=status)


@require_GET
@tenant_view(Action.LIMITS_VIEW)
def limits(request, access):
    """Effective limits, where each comes from, and what is left in the current windows; per key too. The
    live part refreshes itself through htmx."""
    report = quota_report(tenant=access.tenant, api_keys=selectors.api_keys_for_limits(tenant=access.tenant))
    context = {"tenant": access.tenant, "report": report, "keys_shown": selectors.LIMITS_KEYS_SHOWN}
    if request.htmx:
        return render(request, "billing/partials/limits_live.html", context)
    return render(request, "billing/limits.html", context)
