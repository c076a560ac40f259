"""Django's admin never shows transcript content or data keys (R-SEC-3): staff read content only under break-glass
access in the staff console, where every read is audited. The admin has no break-glass, so the models that hold
content or keys must not be on it, nor shown inline on another model's page."""

from __future__ import annotations

from django.contrib import admin

from audit.models import BreakGlassGrant, TenantDataKey, Transcript


def test_content_and_key_models_are_not_on_the_admin():
    registered = set(admin.site._registry)
    assert not registered & {Transcript, TenantDataKey, BreakGlassGrant}
    for model, model_admin in admin.site._registry.items():
        inline_models = {inline.model for inline in getattr(model_admin, "inlines", [])}
        assert not inline_models & {Transcript, TenantDataKey}, model
