"""The staff console of organisations: every tenant, their members, keys, limits, usage and status;
suspensions; "act as" sessions. Here, in billing, because its pages show billing's numbers beside the tenant's
own (billing builds on tenants; tenants imports nothing from billing)."""

from __future__ import annotations

from allauth.account.decorators import reauthentication_required
from django.conf import settings
from django.contrib import messages
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from billing import limits as billing_limits
from billing.forms import TenantQuotaForm
from billing.quota_reads import quota_report
from billing.selectors import tenant_quota, tenant_usage_totals
from billing.services import tenant_quota_set
from tenants import forms, selectors, services
from tenants.access import SESSION_ACT_AS, SESSION_TENANT, active_act_as
from tenants.models import ApiKey, SupportSession, Tenant
from tenants.views.common import form_errors, staff_view


@require_GET
@staff_view
def tenant_list(request):
    form = forms.TenantSearchForm(request.GET or None)
    query, status = "", None
    if form.is_valid():
        query, status = form.cleaned_data["q"].strip(), form.cleaned_data["status"] or None
    paginator = Paginator(selectors.tenants_search(query=query, status=status), 50)
    page = paginator.get_page(request.GET.get("page"))
    context = {"form": form, "page": page, "tenants": page.object_list, "query": query, "status": status or ""}
    template = "tenants/staff/partials/tenant_table.html" if request.htmx else "tenants/staff/tenant_list.html"
    return render(request, template, context, status=200 if not form.is_bound or form.is_valid() else 400)


def _quota_form(tenant: Tenant, data=None) -> TenantQuotaForm:
    quota = tenant_quota(tenant=tenant)
    initial = {"plan": quota.plan if quota else None,
               **{name: getattr(quota, name) if quota else None for name in billing_limits.LIMIT_FIELDS}}
    return TenantQuotaForm(data, initial=initial, default_plan=billing_limits.default_plan())


def _detail_context(tenant: Tenant, **extra) -> dict:
    api_keys = list(selectors.api_keys_for_tenant(tenant=tenant)[:100])
    selectors.with_last_used(tenant=tenant, api_keys=api_keys)
    report = quota_report(tenant=tenant, api_keys=api_keys)
    quota_form = extra.pop("quota_form", None) or _quota_form(tenant)
    plan = report.plan
    if plan is None:
        quota_form.explain_empty(None, whose="")
    else:
        quota_form.explain_empty({n: getattr(plan, n) for n in billing_limits.LIMIT_FIELDS},
                                 whose=f"the {plan.name} plan's")
    return {
        "act_as_minutes": settings.STAFF_ACT_AS_MINUTES,
        "tenant": tenant,
        "members": list(selectors.members_for_tenant(tenant=tenant)),
        "invitations": list(selectors.invitations_for_tenant(tenant=tenant, status="pending")),
        "api_keys": api_keys,
        "report": report,
        "usage": tenant_usage_totals(tenant=tenant, days=30),
        "history": selectors.tenant_status_history(tenant=tenant),
        "suspend_form": extra.pop("suspend_form", None) or forms.SuspendForm(),
        "act_as_form": extra.pop("act_as_form", None) or forms.ActAsForm(),
        "quota_form": quota_form,
        **extra,
    }


@require_GET
@staff_view
def tenant_detail(request, slug: str):
    tenant = selectors.tenant_by_slug(slug=slug)
    return render(request, "tenants/staff/tenant_detail.html", _detail_context(tenant))


@require_POST
@staff_view
def tenant_status(request, slug: str):
    tenant = selectors.tenant_by_slug(slug=slug)
    action = request.POST.get("action")
    form = forms.SuspendForm(request.POST)
    if action not in ("suspend", "reactivate") or not form.is_valid():
        if action not in ("suspend", "reactivate"):
            messages.error(request, "Choose to suspend or to reactivate.")
        return render(request, "tenants/staff/tenant_detail.html", _detail_context(tenant, suspend_form=form),
                      status=400)
    new_status = Tenant.Status.SUSPENDED if action == "suspend" else Tenant.Status.ACTIVE
    services.tenant_set_status(tenant=tenant, status=new_status, reason=form.cleaned_data["reason"],
                               actor=request.user, request=request)
    verb = "suspended" if action == "suspend" else "reactivated"
    messages.success(request, f"{tenant.name} is {verb}. The API follows within a second.")
    return redirect("staff_tenant_detail", tenant.slug)


@require_POST
@staff_view
def tenant_limits(request, slug: str):
    tenant = selectors.tenant_by_slug(slug=slug)
    form = _quota_form(tenant, request.POST)
    if not form.is_valid():
        return render(request, "tenants/staff/tenant_detail.html", _detail_context(tenant, quota_form=form),
                      status=400)
    tenant_quota_set(tenant=tenant, actor=request.user, request=request, plan=form.cleaned_data["plan"],
                     **form.limits())
    messages.success(request, f"Limits of {tenant.name} saved. They apply within a second.")
    return redirect("staff_tenant_detail", tenant.slug)


@require_http_methods(["GET", "POST"])
@staff_view
def key_limits(request, slug: str, key_id: str):
    """Staff set a key's own limits without the tenant admins' ceiling; the data plane still applies the
    organisation's limit where it is lower."""
    tenant = selectors.tenant_by_slug(slug=slug)
    api_key = selectors.api_key_get(tenant=tenant, key_id=key_id)
    initial = {name: getattr(api_key, name) for name in ApiKey.LIMIT_FIELDS}
    form = forms.KeyLimitsForm(request.POST if request.method == "POST" else None, initial=initial)
    if request.method == "POST" and form.is_valid():
        try:
            services.api_key_set_limits(api_key=api_key, limits=form.limits(), actor=request.user, request=request,
                                        within_tenant=False)
        except ValidationError as exc:
            form_errors(form, exc)
        else:
            messages.success(request, f"Limits of key {api_key.prefix} ({api_key.name}) saved.")
            return redirect("staff_tenant_detail", tenant.slug)
    report = quota_report(tenant=tenant, api_keys=[api_key])
    form.explain_empty(report.limits.values, whose="the organisation's")
    context = {"tenant": tenant, "api_key": api_key, "form": form, "report": report, "key_quota": report.keys[0]}
    return render(request, "tenants/staff/key_limits.html", context, status=400 if form.errors else 200)


@require_POST
@staff_view
@reauthentication_required
def act_as_start(request, slug: str):
    tenant = selectors.tenant_by_slug(slug=slug)
    form = forms.ActAsForm(request.POST)
    if not form.is_valid():
        return render(request, "tenants/staff/tenant_detail.html", _detail_context(tenant, act_as_form=form),
                      status=400)
    current = active_act_as(request)
    if current is not None:
        services.act_as_end(session_id=current["session"], end=SupportSession.End.REPLACED, request=request)
    grant = services.act_as_start(staff_user=request.user, tenant=tenant, reason=form.cleaned_data["reason"],
                                  request=request)
    request.session[SESSION_ACT_AS] = grant
    request.session[SESSION_TENANT] = tenant.slug
    # No flash message: the layout's support-session banner says it, on every page of the session.
    return redirect("tenant_home", tenant.slug)


@require_POST
@staff_view
def act_as_end(request):
    grant = active_act_as(request)
    if grant is not None:
        services.act_as_end(session_id=grant["session"], request=request)
        messages.success(request, f"You are no longer acting as {grant['name']}.")
    request.session.pop(SESSION_ACT_AS, None)
    request.session.pop(SESSION_TENANT, None)
    if grant is not None:
        return redirect("staff_tenant_detail", grant["slug"])
    return redirect("staff_tenant_list")
