"""Each tenant's data processing summary (APP 1, APP 5, APP 8): where its data is processed and stored, by which
models, how long content is kept, its redaction mode, the sub-processors and the automated decisions — what the
tenant needs for its own privacy notices. A page at ``t/<slug>/data-processing/`` (also as JSON with
``?format=json``) and ``GET /api/v1/data-processing`` in the management API.

Here, in the project package, because it reads tenants and inference's backends (inference builds on tenants, so
tenants cannot read backends), and the privacy policy it must agree with lives here too (``core.privacy``).
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.http import JsonResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.response import Response

from core.privacy import AUDIT_METADATA_YEARS, AUTOMATED_DECISIONS, SUBPROCESSORS, region_label
from inference.models import Backend
from inference.services import backend_health
from tenants.api.views import COMMON, ManagementView, _errors
from tenants.models import Tenant
from tenants.permissions import Action
from tenants.views.common import tenant_view

_REDACTION_LABELS = {
    Tenant.Redaction.OFF: "Off: prompts reach the model as sent (a request can still ask for redaction with "
                          "x-wattle-redact).",
    Tenant.Redaction.REDACT: "Redact: Australian identifiers are replaced by placeholders before the model sees "
                             "them.",
    Tenant.Redaction.RESTORE: "Redact and restore: identifiers are replaced before the model and put back into "
                              "the reply.",
}


def _models_by_region() -> dict[str, set[str]]:
    """Model name → the regions of the enabled backends that serve it (declared, or found by the last probe)."""
    served: dict[str, set[str]] = {}
    for backend in Backend.objects.filter(enabled=True).only("name", "served_models", "region"):
        names = backend.served_models or (backend_health(backend.name) or {}).get("models") or []
        for name in names:
            if isinstance(name, str):
                served.setdefault(name, set()).add(backend.region)
    return served


def _retention(tenant: Tenant) -> dict[str, Any]:
    # Transcript retention is another change's setting; until a tenant has one, nothing is stored.
    days = getattr(tenant, "retention_days", 0) or 0
    if days:
        text = (f"Prompts and replies are stored encrypted with a key for this organisation for {days} days, "
                "then destroyed.")
    else:
        text = "Prompts and replies are not stored."
    return {"content_stored": bool(days), "content_days": days, "description": text,
            "audit_metadata_years": AUDIT_METADATA_YEARS,
            "audit_metadata": f"Audit and usage metadata (no content) is kept for {AUDIT_METADATA_YEARS} years."}


def data_processing_summary(*, tenant: Tenant) -> dict[str, Any]:
    served = _models_by_region()
    inference_regions = sorted({r for regions in served.values() for r in regions}
                               or set(Backend.objects.filter(enabled=True).values_list("region", flat=True)))
    redaction = tenant.redaction
    return {
        "tenant": {"name": tenant.name, "slug": tenant.slug},
        "privacy_policy_version": settings.PRIVACY_POLICY_VERSION,
        "regions": {
            "inference": [{"region": r, "label": region_label(r)} for r in inference_regions],
            "storage": {"region": settings.AWS_REGION, "label": region_label(settings.AWS_REGION)},
            "allowed": list(settings.ALLOWED_DATA_REGIONS),
        },
        "models": [{"name": name, "regions": sorted(regions)} for name, regions in sorted(served.items())],
        "retention": _retention(tenant),
        "redaction": {"mode": redaction, "description": _REDACTION_LABELS.get(redaction, redaction)},
        "subprocessors": [p.as_dict() for p in SUBPROCESSORS],
        "automated_decisions": [d.as_dict() for d in AUTOMATED_DECISIONS],
    }


# --- the console page --------------------------------------------------------------------------------
@require_GET
@tenant_view(Action.TENANT_VIEW)
def tenant_data_processing(request, access):
    summary = data_processing_summary(tenant=access.tenant)
    if request.GET.get("format") == "json":
        return JsonResponse(summary, json_dumps_params={"indent": 2})
    return render(request, "portal/data_processing.html", {"tenant": access.tenant, "summary": summary})


# --- the management API --------------------------------------------------------------------------------
class DataProcessingRegion(serializers.Serializer):
    region = serializers.CharField()
    label = serializers.CharField()


class DataProcessingRegions(serializers.Serializer):
    inference = DataProcessingRegion(many=True)
    storage = DataProcessingRegion()
    allowed = serializers.ListField(child=serializers.CharField())


class DataProcessingModel(serializers.Serializer):
    name = serializers.CharField()
    regions = serializers.ListField(child=serializers.CharField())


class DataProcessingRetention(serializers.Serializer):
    content_stored = serializers.BooleanField()
    content_days = serializers.IntegerField()
    description = serializers.CharField()
    audit_metadata_years = serializers.IntegerField()
    audit_metadata = serializers.CharField()


class DataProcessingRedaction(serializers.Serializer):
    mode = serializers.ChoiceField(choices=Tenant.Redaction.values)
    description = serializers.CharField()


class DataProcessingSubProcessor(serializers.Serializer):
    name = serializers.CharField()
    purpose = serializers.CharField()
    data = serializers.CharField()
    location = serializers.CharField()


class DataProcessingAutomatedDecision(serializers.Serializer):
    name = serializers.CharField()
    what_it_decides = serializers.CharField()
    information_used = serializers.CharField()
    human_review = serializers.CharField()


class DataProcessingTenant(serializers.Serializer):
    name = serializers.CharField()
    slug = serializers.SlugField()


class DataProcessingSerializer(serializers.Serializer):
    tenant = DataProcessingTenant()
    privacy_policy_version = serializers.CharField()
    regions = DataProcessingRegions()
    models = DataProcessingModel(many=True)
    retention = DataProcessingRetention()
    redaction = DataProcessingRedaction()
    subprocessors = DataProcessingSubProcessor(many=True)
    automated_decisions = DataProcessingAutomatedDecision(many=True)


class DataProcessingView(ManagementView):
    actions = {"GET": Action.TENANT_VIEW}
    serializer_class = DataProcessingSerializer

    @extend_schema(operation_id="data_processing_retrieve",
                   summary="Where the tenant's data is processed and kept, by which models and sub-processors, "
                           "for how long, its redaction mode and the automated decisions",
                   responses={200: DataProcessingSerializer, **_errors(*COMMON)})
    def get(self, request):
        return Response(DataProcessingSerializer(data_processing_summary(tenant=self.access.tenant)).data)
