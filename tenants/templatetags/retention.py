"""``{% retention_section %}``: the settings page's "Transcript retention" form, with the tenant's current period
(or the bound form a failed save left in the context)."""

from __future__ import annotations

from django import template
from django.conf import settings

from tenants.retention_forms import RetentionForm

register = template.Library()


@register.inclusion_tag("tenants/partials/retention_section.html", takes_context=True)
def retention_section(context):
    tenant = context["tenant"]
    form = context.get("retention_form") or RetentionForm(initial={"retention_days": tenant.retention_days})
    return {"tenant": tenant, "access": context.get("access"), "retention_form": form,
            "shred_days": settings.AUDIT_TRANSCRIPT_SHRED_DAYS, "csrf_token": context.get("csrf_token")}
