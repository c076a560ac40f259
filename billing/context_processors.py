"""Banners the layouts show: a tenant's budget alerts and unpaid subscription on its console pages, and the cost
guard's standing actions (with their one-click lift) on staff pages. Each costs a query or two, and only on the
pages that show it."""

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

        def payment():
            from billing.subscriptions import payment_banner

            return payment_banner(access.tenant)

        # A payment failed (the grace deadline) or the API stopped for want of one: usually one query.
        context["payment_notice"] = SimpleLazyObject(payment)
    if getattr(request, "wattle_staff_page", False):

        def actions():
            from billing.cost_guard import active_actions

            return active_actions()

        context["cost_guard_actions"] = SimpleLazyObject(actions)
    return context
