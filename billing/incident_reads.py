"""Reads for the breach register (``audit.Incident``): which tenants an incident touched, and whom to tell.

Here, in billing, because the only record of who was served what, when, by which key and backend is billing's
usage events (audit imports nothing it records). A staff read across tenants, so it takes no ``tenant=``: it
answers "which tenants", and each row names its own tenant only.

The end customers touched come from the same records (the access log's ``customer_id``, R-AUD-1): each tenant's
distinct customer ids, counted, the first ``CUSTOMER_IDS_SHOWN`` listed; ``radius_customers`` streams them all.
Requests that named no customer count in ``requests`` but add no customer id.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
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
    customers: int = 0  # distinct end-customer ids among its requests
    customer_ids: list[str] = field(default_factory=list)  # the first CUSTOMER_IDS_SHOWN of them, sorted

    @property
    def customer_ids_truncated(self) -> bool:
        return self.customers > len(self.customer_ids)


# End-customer ids listed per tenant on the incident page; the CSV export (``radius_customers``) has them all.
CUSTOMER_IDS_SHOWN = 200


def _touching(*, since: datetime, until: datetime, key_id: str, backend: str, component: str):
    """The access records in the radius (validated: see ``blast_radius``)."""
    if since >= until:
        raise ValueError("The window must end after it starts.")
    filters = {name: value.strip() for name, value in
               (("key_id", key_id), ("backend", backend), ("endpoint", component)) if value and value.strip()}
    if not filters:
        raise ValueError("Name a key id, a backend or a component.")
    return UsageEvent.objects.filter(created_at__gte=since, created_at__lt=until, **filters)


def blast_radius(
    *, since: datetime, until: datetime, key_id: str = "", backend: str = "", component: str = ""
) -> list[TouchedTenant]:
    """Tenants (their key ids and end-customer ids) with requests in ``[since, until)`` served by ``key_id``,
    ``backend`` or ``component`` (the endpoint, e.g. ``chat.completions``); every filter given must match. At least
    one filter is required: a window alone is every tenant, which an incident's scope should say on purpose, not by
    default. Raises ValueError for an empty window or no filter."""
    touching = _touching(since=since, until=until, key_id=key_id, backend=backend, component=component)
    rows = (
        touching
        .values("tenant_id", "key_id")
        .annotate(requests=Count("id"), first_at=Min("created_at"), last_at=Max("created_at"))
        .order_by()
    )
    grouped: dict = {}
    for row in rows:
        grouped.setdefault(row["tenant_id"], []).append(row)
    tenants = Tenant.objects.in_bulk(list(grouped))
    customers = dict(
        touching.exclude(customer_id="").values("tenant_id").annotate(n=Count("customer_id", distinct=True))
        .order_by().values_list("tenant_id", "n")
    )
    touched = [
        TouchedTenant(
            tenant=tenants[tenant_id],
            key_ids=sorted(r["key_id"] for r in group if r["key_id"]),
            requests=sum(r["requests"] for r in group),
            first_at=min(r["first_at"] for r in group),
            last_at=max(r["last_at"] for r in group),
            customers=customers.get(tenant_id, 0),
            customer_ids=list(
                touching.filter(tenant_id=tenant_id).exclude(customer_id="").order_by("customer_id")
                .values_list("customer_id", flat=True).distinct()[:CUSTOMER_IDS_SHOWN]
            ) if customers.get(tenant_id) else [],
        )
        for tenant_id, group in grouped.items()
    ]
    return sorted(touched, key=lambda t: (-t.requests, t.tenant.name))


def radius_customers(
    *, since: datetime, until: datetime, key_id: str = "", backend: str = "", component: str = ""
) -> Iterator[tuple[str, str, int, datetime, datetime]]:
    """Every end customer in the radius as (tenant slug, customer id, requests, first, last), by tenant and id:
    whom each tenant may have to notify. Staff only (the incident pages); ValueError as ``blast_radius``."""
    touching = _touching(since=since, until=until, key_id=key_id, backend=backend, component=component)
    slugs = dict(Tenant.objects.filter(pk__in=touching.values("tenant_id")).values_list("pk", "slug"))
    rows = (
        touching.exclude(customer_id="").values("tenant_id", "customer_id")
        .annotate(requests=Count("id"), first_at=Min("created_at"), last_at=Max("created_at"))
        .order_by("tenant_id", "customer_id")
    )
    for row in rows.iterator(chunk_size=2000):
        yield (slugs[row["tenant_id"]], row["customer_id"], row["requests"], row["first_at"], row["last_at"])


def incident_contacts(*, tenant: Tenant) -> list[str]:
    """Whom a tenant's incident notice goes to: its billing email and its owners."""
    emails = {tenant.billing_email} if tenant.billing_email else set()
    owners = Membership.objects.filter(tenant=tenant, role=Role.OWNER).values_list("user__email", flat=True)
    emails |= set(owners)
    return sorted(e for e in emails if e)
