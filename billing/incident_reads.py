"""Reads for the breach register (``audit.Incident``): which tenants an incident touched, and whom to tell.

Here, in billing, because the only record of who was served what, when, by which key and backend is billing's
usage events (audit imports nothing it records). A staff read across tenants, so it takes no ``tenant=``: it
answers "which tenants", and each row names its own tenant only.

End-customer ids are not in the usage events yet: the blast radius stops at tenants and their key ids.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.db.models import Count, Max, Min

from billing.models import UsageEvent
from tenants.models import Membership, Role, Tenant


@dataclass(frozen=True)
class TouchedTenant:
    tenant: Tenant
    key_ids: list[str]
    requests: int
    first_at: datetime
    last_at: datetime


def blast_radius(
    *, since: datetime, until: datetime, key_id: str = "", backend: str = "", component: str = ""
) -> list[TouchedTenant]:
    """Tenants (and their key ids) with requests in ``[since, until)`` served by ``key_id``, ``backend`` or
    ``component`` (the endpoint, e.g. ``chat.completions``); every filter given must match. At least one filter
    is required: a window alone is every tenant, which an incident's scope should say on purpose, not by default.
    Raises ValueError for an empty window or no filter."""
    if since >= until:
        raise ValueError("The window must end after it starts.")
    filters = {name: value.strip() for name, value in
               (("key_id", key_id), ("backend", backend), ("endpoint", component)) if value and value.strip()}
    if not filters:
        raise ValueError("Name a key id, a backend or a component.")
    rows = (
        UsageEvent.objects.filter(created_at__gte=since, created_at__lt=until, **filters)
        .values("tenant_id", "key_id")
        .annotate(requests=Count("id"), first_at=Min("created_at"), last_at=Max("created_at"))
        .order_by()
    )
    grouped: dict = {}
    for row in rows:
        grouped.setdefault(row["tenant_id"], []).append(row)
    tenants = Tenant.objects.in_bulk(list(grouped))
    touched = [
        TouchedTenant(
            tenant=tenants[tenant_id],
            key_ids=sorted(r["key_id"] for r in group if r["key_id"]),
            requests=sum(r["requests"] for r in group),
            first_at=min(r["first_at"] for r in group),
            last_at=max(r["last_at"] for r in group),
        )
        for tenant_id, group in grouped.items()
    ]
    return sorted(touched, key=lambda t: (-t.requests, t.tenant.name))


def incident_contacts(*, tenant: Tenant) -> list[str]:
    """Whom a tenant's incident notice goes to: its billing email and its owners."""
    emails = {tenant.billing_email} if tenant.billing_email else set()
    owners = Membership.objects.filter(tenant=tenant, role=Role.OWNER).values_list("user__email", flat=True)
    emails |= set(owners)
    return sorted(e for e in emails if e)
