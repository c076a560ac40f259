"""The one way to write to the audit trail."""

from __future__ import annotations

from typing import Any

from django.db import models

from audit.models import AuditEntry
from core.proxies import request_client_ip


def record(
    *,
    action: str,
    actor=None,
    tenant=None,
    target: models.Model | None = None,
    data: dict[str, Any] | None = None,
    request=None,
) -> AuditEntry:
    """Append an audit entry. Call it inside the service's transaction so the entry and the change commit
    together. ``data`` carries identifiers and settings, never secrets or end-customer content."""
    if actor is None and request is not None and getattr(request, "user", None) is not None:
        actor = request.user if request.user.is_authenticated else None
    return AuditEntry.objects.create(
        action=action,
        actor=actor,
        actor_label=(getattr(actor, "email", "") or str(actor)) if actor is not None else "system",
        tenant=tenant,
        target_type=target._meta.label_lower if target is not None else "",
        target_id=str(target.pk) if target is not None else "",
        ip=request_client_ip(request),
        data=data or {},
    )
