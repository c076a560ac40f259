"""Staff pages for quotas: who is near or over a limit, plans and model prices (the platform's, and each plan's
own on its page), and lifting the cost guard."""

from __future__ import annotations

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from billing import plan_sync, pricing, selectors, services, stripe_gateway
from billing.cost_guard import cost_guard_lift
from billing.forms import ModelPriceForm, PlanForm, PlanModelPriceForm, PlanModelPriceRemoveForm
from billing.models import Plan
from billing.quota_reads import near_limits as near_limits_report
from tenants.selectors import tenant_by_slug
from tenants.views.common import back, staff_view

NEAR_THRESHOLD = 80


@require_GET
@staff_view
def near_limits(request):
    return render(request, "billing/staff/near_limits.html",
                  {"rows": near_limits_report(threshold=NEAR_THRESHOLD), "threshold": NEAR_THRESHOLD})


def _stripe_state(plan) -> dict:
    """How the plan stands with Stripe, for the plans page (a database read and a cache read, no Stripe call)."""
    failure = plan_sync.plan_sync_failure(plan)
    if failure is not None:
        return {"tone": "error", "text": f"Last sync failed: {failure['message']} It is retried every few minutes."}
    if not plan.stripe_product_id:
        return {"tone": "muted", "text": "Not in Stripe" + (" (needs a sync)" if plan.requires_payment else "")}
    if plan_sync.plan_out_of_step(plan):
        return {"tone": "warning", "text": "Out of step with Stripe: a sync is due"}
    return {"tone": "ok", "text": "In step with Stripe"}


def _plans_context(**extra) -> dict:
    plans = list(selectors.plans_with_tenant_counts())
    configured = stripe_gateway.configured()
    own_prices = selectors.plan_own_price_counts()
    for plan in plans:
        plan.stripe_state = _stripe_state(plan) if configured else None
        plan.own_price_count = own_prices.get(plan.pk, 0)
    return {
        "plans": plans,
        "payments_configured": configured,
        "prices": selectors.model_prices(),
        "plan_form": extra.pop("plan_form", None) or PlanForm(),
        "price_form": extra.pop("price_form", None) or ModelPriceForm(),
        **extra,
    }


@require_http_methods(["GET", "POST"])
@staff_view
def plans(request):
    """Plans (GET lists them, POST creates one) and model prices."""
    if request.method == "POST":
        form = PlanForm(request.POST)
        if form.is_valid():
            plan = services.plan_save(plan=form.apply(), actor=request.user, request=request)
            messages.success(request, f"Plan {plan.name} created.")
            return redirect("staff_plans")
        return render(request, "billing/staff/plans.html", _plans_context(plan_form=form), status=400)
    price_form = None
    if model := request.GET.get("model"):
        price = selectors.model_price(model=model)
        if price is not None:
            per_1m = pricing.from_model_price(price)
            price_form = ModelPriceForm(initial={"model": price.model, "input_per_1m_aud": per_1m.input.normalize(),
                                                 "output_per_1m_aud": per_1m.output.normalize()})
    return render(request, "billing/staff/plans.html", _plans_context(price_form=price_form))


def _plan_edit_context(plan: Plan, *, form: PlanForm | None = None,
                       price_form: PlanModelPriceForm | None = None) -> dict:
    """The plan's page: its form, and its token prices beside the platform's (each model the plan prices itself
    or the platform prices)."""
    platform = pricing.platform_prices()
    own = pricing.plan_own_prices(plan)
    price_rows = [{"model": model, "platform": platform.get(model), "own": own.get(model)}
                  for model in sorted(platform.keys() | own.keys())]
    return {
        "plan": plan, "form": form or PlanForm(plan=plan), "price_rows": price_rows,
        "price_form": price_form or PlanModelPriceForm(models=sorted(platform)),
    }


@require_http_methods(["GET", "POST"])
@staff_view
def plan_edit(request, plan_slug: str):
    plan = get_object_or_404(Plan, slug=plan_slug)
    form = PlanForm(request.POST if request.method == "POST" else None, plan=plan)
    if request.method == "POST" and form.is_valid():
        try:
            services.plan_save(plan=form.apply(), actor=request.user, request=request)
        except ValidationError as exc:
            form.add_error(None, exc)
        else:
            messages.success(request, f"Plan {plan.name} saved. Its tenants get the new limits within a second.")
            return redirect("staff_plans")
    return render(request, "billing/staff/plan_edit.html", _plan_edit_context(plan, form=form),
                  status=400 if form.errors else 200)


@require_POST
@staff_view
def plan_price_set(request, plan_slug: str):
    """Set the plan's own price for a model (per million tokens)."""
    plan = get_object_or_404(Plan, slug=plan_slug)
    form = PlanModelPriceForm(request.POST, models=sorted(pricing.platform_prices()))
    if form.is_valid():
        try:
            services.plan_model_price_set(plan=plan, actor=request.user, request=request, **form.cleaned_data)
        except ValidationError as exc:
            form.add_error(None, exc)
        else:
            messages.success(request, f"{plan.name}'s price of {form.cleaned_data['model']} saved. The spend caps of "
                                      "its tenants count it within a second.")
            return redirect(reverse("staff_plan_edit", args=[plan.slug]) + "#prices")
    return render(request, "billing/staff/plan_edit.html", _plan_edit_context(plan, price_form=form), status=400)


@require_POST
@staff_view
def plan_price_remove(request, plan_slug: str):
    """Remove the plan's own price for a model: its tenants pay the platform price again."""
    plan = get_object_or_404(Plan, slug=plan_slug)
    form = PlanModelPriceRemoveForm(request.POST)
    model = form.cleaned_data["model"] if form.is_valid() else ""
    if model and services.plan_model_price_remove(plan=plan, model=model, actor=request.user, request=request):
        messages.success(request, f"{plan.name} now pays the platform price for {model}.")
    else:
        messages.info(request, f"{plan.name} had no price of its own for that model.")
    return redirect(reverse("staff_plan_edit", args=[plan.slug]) + "#prices")


@require_POST
@staff_view
def plan_stripe_sync(request, plan_slug: str):
    """Staff's "Sync to Stripe": the plan's product, fee and metered prices, now."""
    plan = get_object_or_404(Plan, slug=plan_slug)
    try:
        result = plan_sync.plan_stripe_sync(plan=plan, actor=request.user, request=request)
    except plan_sync.PaymentsNotConfigured as exc:
        messages.error(request, str(exc))
    except stripe_gateway.StripeError:
        failure = plan_sync.plan_sync_failure(plan) or {"message": "Stripe refused the sync."}
        messages.error(request, f"{plan.name} was not synced to Stripe: {failure['message']} It is retried every "
                                "few minutes; what was done so far is kept.")
    else:
        changes = (f"{len(result.created)} price(s) created, {len(result.deactivated)} archived, "
                   f"{len(result.meters_created)} meter(s) created" if result.changed else "nothing needed changing")
        messages.success(request, f"{plan.name} synced to Stripe: {changes}.")
    return redirect("staff_plans")


@require_POST
@staff_view
def price_set(request):
    form = ModelPriceForm(request.POST)
    if not form.is_valid():
        return render(request, "billing/staff/plans.html", _plans_context(price_form=form), status=400)
    services.model_price_set(actor=request.user, request=request, **form.price())
    messages.success(request, f"Price of {form.cleaned_data['model']} saved.")
    return redirect("staff_plans")


@require_POST
@staff_view
def cost_guard_lift_view(request, slug: str):
    """Lift what the cost guard did to a tenant (there is at most one standing action per tenant)."""
    tenant = tenant_by_slug(slug=slug)
    action = selectors.cost_guard_standing(tenant=tenant)
    if action is not None:
        cost_guard_lift(action=action, actor=request.user, request=request)
        messages.success(request, f"Cost guard lifted for {tenant.name}: its previous limits and status are back.")
    else:
        messages.info(request, f"The cost guard has nothing standing against {tenant.name}.")
    return back(request, reverse("staff_tenant_detail", args=[tenant.slug]))
