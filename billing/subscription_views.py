"""The tenant's subscription pages: start Checkout, come back from it, open the Customer Portal. Owners and
billing members only (``billing.manage``); everyone else 403, non-members 404 (``tenants.access``)."""

from __future__ import annotations

import uuid

from django.contrib import messages
from django.http import Http404, HttpResponseRedirect
from django.shortcuts import get_object_or_404, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from billing import stripe_gateway, subscriptions
from billing.models import CheckoutSession, Plan, Subscription
from tenants.permissions import Action
from tenants.views.common import tenant_view


def _see_other(url: str) -> HttpResponseRedirect:
    # 303: the browser follows a POST's answer with a GET, to Stripe's page.
    response = HttpResponseRedirect(url)
    response.status_code = 303
    return response


def _unavailable(request, access, message: str, *, plan: Plan | None = None):
    """What was asked can't be done: 409, or 200 when payments are simply not configured here (a state of the
    installation the page explains, not a failed request)."""
    configured = stripe_gateway.configured()
    return render(request, "billing/subscribe_unavailable.html",
                  {"tenant": access.tenant, "message": message, "plan": plan, "configured": configured},
                  status=409 if configured else 200)


def _billing_url(request, access) -> str:
    return request.build_absolute_uri(reverse("tenant_billing", args=[access.tenant.slug]))


@require_POST
@tenant_view(Action.BILLING_MANAGE)
def checkout(request, access, plan_slug: str):
    plan = get_object_or_404(Plan, slug=plan_slug)
    slug = access.tenant.slug

    def urls(session_id: uuid.UUID) -> tuple[str, str]:
        query = f"?session={session_id}"
        return (request.build_absolute_uri(reverse("tenant_billing_return", args=[slug]) + query),
                request.build_absolute_uri(reverse("tenant_billing_cancelled", args=[slug]) + query))

    try:
        start = subscriptions.checkout_start(tenant=access.tenant, plan=plan, urls=urls,
                                             portal_return=_billing_url(request, access), actor=request.user,
                                             request=request)
    except subscriptions.BillingUnavailable as exc:
        return _unavailable(request, access, str(exc), plan=plan)
    return _see_other(start.url)


@require_POST
@tenant_view(Action.BILLING_MANAGE)
def portal(request, access):
    try:
        url = subscriptions.portal_start(tenant=access.tenant, return_url=_billing_url(request, access),
                                         actor=request.user, request=request)
    except subscriptions.BillingUnavailable as exc:
        return _unavailable(request, access, str(exc))
    return _see_other(url)


@require_POST
@tenant_view(Action.BILLING_MANAGE)
def change_plan(request, access, plan_slug: str):
    """Switch the running subscription to another plan, then back to the billing page with what happened."""
    plan = get_object_or_404(Plan, slug=plan_slug)
    try:
        applied = subscriptions.subscription_change_plan(tenant=access.tenant, plan=plan, actor=request.user,
                                                         request=request)
    except subscriptions.BillingUnavailable as exc:
        messages.error(request, str(exc))
    else:
        if applied is not None and applied.status == Subscription.Status.TRIALING:
            messages.success(request, f"You're now on the {plan.name} plan; your trial continues to its end.")
        else:
            messages.success(request, f"You're now on the {plan.name} plan. Stripe credits the unused part of this "
                                      "period's fee and charges the new fee for the rest of it, on your next invoice.")
    return _see_other(reverse("tenant_billing", args=[access.tenant.slug]))


def _session(request, access) -> CheckoutSession:
    try:
        session_id = uuid.UUID(request.GET.get("session", ""))
    except ValueError:
        raise Http404 from None
    return get_object_or_404(CheckoutSession.objects.select_related("plan"), pk=session_id, tenant=access.tenant)


@require_GET
@tenant_view(Action.BILLING_MANAGE)
def checkout_return(request, access):
    """Where Checkout sends the customer back: the outcome, read again from Stripe and applied at once."""
    if not stripe_gateway.configured():
        return _unavailable(request, access, subscriptions.NOT_CONFIGURED)
    session = _session(request, access)
    unconfirmed = False
    try:
        session = subscriptions.checkout_outcome(session=session)
    except stripe_gateway.StripeError:
        unconfirmed = True  # the webhook applies it when Stripe is back; this page says so
    state = subscriptions.billing_state(access.tenant)
    return render(request, "billing/checkout_return.html",
                  {"tenant": access.tenant, "session": session, "plan": session.plan, "state": state,
                   "unconfirmed": unconfirmed})


@require_GET
@tenant_view(Action.BILLING_MANAGE)
def checkout_cancelled(request, access):
    if not stripe_gateway.configured():
        return _unavailable(request, access, subscriptions.NOT_CONFIGURED)
    session = _session(request, access)
    return render(request, "billing/checkout_cancelled.html",
                  {"tenant": access.tenant, "session": session, "plan": session.plan})
