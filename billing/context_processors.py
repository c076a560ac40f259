"""Banners the layouts show: a tenant's budget alerts on its console pages, and the cost guard's standing
actions (with their one-click lift) on staff pages. Each costs one query, and only on the pages that show it."""

from __future__ import annotations

from django.utils.functional import SimpleLazyObject


def banners(request) -> dict:
    context = {}
    access = getattr(request, "tenant_access", None)
    if access is not None:

        def notices():
            from billing.quota_reads import budget_notices
            from billing.selectors import budget_banner

            return budget_notices(alerts=budget_banner(tenant=access.tenant))

        context["budget_notices"] = SimpleLazyObject(notices)
    if getattr(request, "wattle_staff_page", False):

        def actions():
            from billing.cost_guard import active_actions

            return active_actions()

        context["cost_guard_actions"] = SimpleLazyObject(actions)
    return context
