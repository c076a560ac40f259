"""The audit browser: staff read every tenant's trail at ``staff/audit/``; owners and admins read their own at
``t/<slug>/audit/``. Both filter by actor, action and time (staff by tenant too), page with a keyset cursor, and
export the filtered range as CSV or JSON (bounded, and audited).

Here in billing, not audit, because the pages resolve tenants and users (audit imports nothing it records) and
sit in the consoles that billing's URLs already serve.
"""

from __future__ import annotations

import csv
import json
import re

from django import forms
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.serializers.json import DjangoJSONEncoder
from django.http import HttpResponse, JsonResponse
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.http import require_GET

from audit.models import AuditEntry
from audit.selectors import PAGE_SIZE, audit_entries, audit_export, audit_page
from audit.services import audit_exported
from billing.request_logs import decode_cursor
from tenants.models import Tenant
from tenants.permissions import Action
from tenants.views.common import staff_view, tenant_view

_ACTION = re.compile(r"^[a-z0-9_.:-]+$")
_KEY_ID = re.compile(r"^(?:wtl_)?([A-Za-z0-9]+)$")


class AuditFilter(forms.Form):
    actor = forms.CharField(required=False, max_length=254,
                            help_text="An email address, an API key id (wtl_…), or “system”.")
    action = forms.CharField(required=False, max_length=64, help_text="Exact, or a prefix ending in “.”.")
    since = forms.DateTimeField(required=False, label="From",
                                widget=forms.DateTimeInput(attrs={"type": "datetime-local"}))
    until = forms.DateTimeField(required=False, label="Before",
                                widget=forms.DateTimeInput(attrs={"type": "datetime-local"}))
    after = forms.CharField(required=False, max_length=64, widget=forms.HiddenInput)
    export = forms.ChoiceField(required=False, choices=[("", "—"), ("csv", "CSV"), ("json", "JSON")],
                               widget=forms.HiddenInput)

    def clean_action(self) -> str:
        action = self.cleaned_data["action"].strip()
        if action and not _ACTION.match(action):
            raise ValidationError("An action is lowercase words joined by dots, like “key.created”.")
        return action

    def clean_actor(self) -> dict:
        actor = self.cleaned_data["actor"].strip()
        if not actor:
            return {}
        if actor.lower() == "system":
            return {"actor_kind": AuditEntry.ActorKind.SYSTEM}
        if "@" in actor:
            user_id = get_user_model().objects.filter(email__iexact=actor).values_list("id", flat=True).first()
            return {"actor_id": user_id if user_id is not None else -1}  # nobody: an empty page, not an error
        match = _KEY_ID.match(actor)
        if match is None:
            raise ValidationError("Give an email address, an API key id (wtl_…), or “system”.")
        return {"api_key_id": match.group(1).split("_")[0]}

    def clean_after(self):
        return decode_cursor(self.cleaned_data["after"])

    def clean(self):
        cleaned = super().clean()
        since, until = cleaned.get("since"), cleaned.get("until")
        if since and until and since >= until:
            raise ValidationError("“From” must be before “Before”.")
        return cleaned


class StaffAuditFilter(AuditFilter):
    tenant = forms.SlugField(required=False, max_length=64, help_text="The tenant's slug; empty for all.")
    field_order = ["tenant", "actor", "action", "since", "until"]

    def clean_tenant(self) -> Tenant | None:
        slug = self.cleaned_data["tenant"]
        if not slug:
            return None
        tenant = Tenant.objects.filter(slug=slug).first()
        if tenant is None:
            raise ValidationError("No tenant has that slug.")
        return tenant


def _cursor(position) -> str | None:
    return f"{position[0].timestamp():.6f}_{position[1]}" if position else None


def _safe_cell(value) -> str:
    # A cell a spreadsheet would run as a formula is quoted (CSV injection through an actor label or user agent).
    text = "" if value is None else (json.dumps(value, sort_keys=True) if isinstance(value, dict) else str(value))
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def _export(request, form, qs, *, tenant, fmt: str):
    rows, truncated = audit_export(qs)
    # Only the form's own filters, as given: any other query parameter would be written into the trail verbatim.
    filters = {k: v for k, v in request.GET.items() if k in form.fields and k not in ("export", "after") and v}
    audit_exported(actor=request.user, tenant=tenant, request=request, filters=filters, fmt=fmt,
                   count=len(rows), truncated=truncated)
    stamp = timezone.now().strftime("%Y%m%dT%H%M%SZ")
    name = f"audit-{tenant.slug if tenant else 'all'}-{stamp}"
    if fmt == "json":
        response = JsonResponse({"entries": rows, "truncated": truncated}, encoder=DjangoJSONEncoder)
    else:
        response = HttpResponse(content_type="text/csv; charset=utf-8")
        writer = csv.writer(response)
        if rows:
            writer.writerow(rows[0].keys())
        for row in rows:
            writer.writerow([_safe_cell(v) for v in row.values()])
    response["Content-Disposition"] = f'attachment; filename="{name}.{fmt}"'
    response["X-Wattle-Truncated"] = "true" if truncated else "false"
    return response


def _browse(request, form, *, tenant, template: str, context: dict):
    status = 200
    entries, next_position = [], None
    if form.is_valid():
        data = form.cleaned_data
        qs = audit_entries(
            tenant=tenant if tenant is not None else data.get("tenant"), action=data["action"],
            since=data["since"], until=data["until"], **data["actor"],
        )
        if data["export"]:
            return _export(request, form, qs, tenant=tenant or data.get("tenant"), fmt=data["export"])
        entries, next_position = audit_page(qs, after=data["after"])
    else:
        status = 400
    query = request.GET.copy()
    query.pop("after", None)
    query.pop("export", None)
    return render(request, template, {
        **context, "form": form, "entries": entries, "next_cursor": _cursor(next_position),
        "filters": query.urlencode(), "first_page": not request.GET.get("after"), "page_size": PAGE_SIZE,
    }, status=status)


@require_GET
@staff_view
def staff_audit(request):
    return _browse(request, StaffAuditFilter(request.GET), tenant=None, template="audit/staff_audit.html",
                   context={})


@require_GET
@tenant_view(Action.AUDIT_VIEW)
def tenant_audit(request, access):
    return _browse(request, AuditFilter(request.GET), tenant=access.tenant, template="audit/tenant_audit.html",
                   context={"tenant": access.tenant})
