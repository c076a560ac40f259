"""Staff pages of the breach register (NDB scheme): list, open, the detail page with its 30-day assessment clock
and blast radius, decide, close, and notify the tenants touched (previewed before sending).

Here, in billing, because the blast radius reads billing's usage events and the register lives in audit, which
imports nothing it records; billing may import both.
"""

from __future__ import annotations

import csv

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.db import transaction
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from audit import incident_services as services
from audit.models import Incident
from audit.services import record
from billing.incident_forms import DecisionForm, IncidentForm, NotifyForm
from billing.incident_reads import blast_radius, incident_contacts, radius_customers
from tenants.views.common import flash_errors, form_errors, staff_view


def _incident(incident_id) -> Incident:
    return get_object_or_404(Incident.objects.prefetch_related("notifications__tenant"), pk=incident_id)


def _radius(incident: Incident) -> tuple[list | None, str]:
    """The incident's blast radius, or why it cannot be worked out yet."""
    if not (incident.window_start and incident.window_end):
        return None, "Set the affected window and a key, backend or component to list the tenants touched."
    try:
        return blast_radius(since=incident.window_start, until=incident.window_end, key_id=incident.key_id,
                            backend=incident.backend, component=incident.component), ""
    except ValueError as exc:
        return None, str(exc)


@require_GET
@staff_view
def incident_list(request):
    incidents = Incident.objects.all()
    return render(request, "audit/staff/incident_list.html", {"incidents": incidents})


@require_http_methods(["GET", "POST"])
@staff_view
def incident_new(request):
    form = IncidentForm(request.POST if request.method == "POST" else None)
    if request.method == "POST" and form.is_valid():
        try:
            incident = services.incident_open(actor=request.user, request=request, **form.cleaned_data)
        except ValidationError as exc:
            form_errors(form, exc)
        else:
            messages.success(request, "Incident opened: the 30-day assessment clock is running.")
            return redirect("staff_incident_detail", incident_id=incident.pk)
    return render(request, "audit/staff/incident_new.html", {"form": form}, status=400 if form.errors else 200)


def _detail(request, incident: Incident, *, form=None, decision_form=None, status: int = 200):
    radius, radius_note = _radius(incident)
    initial = {name: getattr(incident, name) for name in services.EDITABLE_FIELDS}
    context = {
        "incident": incident,
        "days_left": incident.days_left(),
        "form": form or IncidentForm(initial=initial),
        "decision_form": decision_form or DecisionForm(
            initial={"decision": incident.decision, "reasons": incident.decision_reasons}),
        "radius": radius,
        "radius_note": radius_note,
        "notifications": list(incident.notifications.all()),
    }
    return render(request, "audit/staff/incident_detail.html", context, status=status)


@require_http_methods(["GET", "POST"])
@staff_view
def incident_detail(request, incident_id):
    incident = _incident(incident_id)
    if request.method == "GET":
        return _detail(request, incident)
    form = IncidentForm(request.POST)
    if form.is_valid():
        try:
            services.incident_update(incident=incident, actor=request.user, changes=form.cleaned_data,
                                     request=request)
        except ValidationError as exc:
            form_errors(form, exc)
        else:
            messages.success(request, "Incident updated.")
            return redirect("staff_incident_detail", incident_id=incident.pk)
    return _detail(request, incident, form=form, status=400)


@require_POST
@staff_view
def incident_decide(request, incident_id):
    incident = _incident(incident_id)
    form = DecisionForm(request.POST)
    if form.is_valid():
        try:
            services.incident_decide(incident=incident, actor=request.user, request=request,
                                     decision=form.cleaned_data["decision"], reasons=form.cleaned_data["reasons"])
        except ValidationError as exc:
            form_errors(form, exc)
        else:
            messages.success(request, "Decision recorded.")
            return redirect("staff_incident_detail", incident_id=incident.pk)
    return _detail(request, incident, decision_form=form, status=400)


@require_POST
@staff_view
def incident_close(request, incident_id):
    incident = _incident(incident_id)
    try:
        services.incident_close(incident=incident, actor=request.user, request=request)
    except ValidationError as exc:
        flash_errors(request, exc)
        return _detail(request, incident, status=409)
    messages.success(request, "Incident closed.")
    return redirect("staff_incident_detail", incident_id=incident.pk)


@require_http_methods(["GET", "POST"])
@staff_view
def incident_notify(request, incident_id):
    """GET: the tenants in the blast radius, each with the notice it would receive. POST: send to those ticked."""
    incident = _incident(incident_id)
    radius, radius_note = _radius(incident)
    touched = {t.tenant.slug: t for t in radius or []}
    choices = [(slug, t.tenant.name) for slug, t in touched.items()]
    form = NotifyForm(request.POST if request.method == "POST" else None, slugs=choices)
    notices = {
        slug: services.incident_notice(incident=incident, tenant=t.tenant, key_ids=t.key_ids,
                                       recipients=incident_contacts(tenant=t.tenant))
        for slug, t in touched.items()
    }
    if request.method == "POST" and form.is_valid():
        try:
            sent = services.incident_notify(incident=incident, actor=request.user, request=request,
                                            notices=[notices[slug] for slug in form.cleaned_data["tenants"]])
        except ValidationError as exc:
            form_errors(form, exc)
        else:
            messages.success(request, f"Notice sent to {len(sent)} tenant(s).")
            return redirect("staff_incident_detail", incident_id=incident.pk)
    context = {"incident": incident, "form": form, "notices": list(notices.values()), "radius_note": radius_note}
    return render(request, "audit/staff/incident_notify.html", context, status=400 if form.errors else 200)


def _cell(text: str) -> str:
    # A customer id is the tenant's text: one a spreadsheet would run as a formula is quoted (CSV injection).
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


@require_GET
@staff_view
def incident_customers(request, incident_id):
    """Every end customer in the blast radius as CSV (tenant, customer id, requests, first, last): the list each
    tenant may need for its own notifications. An export of personal identifiers, so it is audited."""
    incident = _incident(incident_id)
    if not (incident.window_start and incident.window_end):
        return HttpResponse("Set the affected window first.", status=409, content_type="text/plain")
    scope = {"since": incident.window_start, "until": incident.window_end, "key_id": incident.key_id,
             "backend": incident.backend, "component": incident.component}
    try:
        rows = list(radius_customers(**scope))
    except ValueError as exc:
        return HttpResponse(str(exc), status=409, content_type="text/plain")
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="incident-{incident.pk}-customers.csv"'
    writer = csv.writer(response)
    writer.writerow(["tenant", "customer_id", "requests", "first_at", "last_at"])
    for slug, customer_id, requests, first_at, last_at in rows:
        writer.writerow([slug, _cell(customer_id), requests, first_at.isoformat(), last_at.isoformat()])
    with transaction.atomic():
        record(action="incident.customers_exported", actor=request.user, target=incident, request=request,
               data={"count": len(rows), "tenants": len({row[0] for row in rows})})
    return response
