from __future__ import annotations

from billing.models import UsageEvent
from tenants.models import Tenant


def usage_recent(*, tenant: Tenant, limit: int = 20) -> list[UsageEvent]:
    return list(UsageEvent.objects.filter(tenant=tenant).order_by("-created_at")[:limit])
