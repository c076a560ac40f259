"""Reads of the audit trail for the browser (staff: every tenant; owners and admins: their own).

Keyset pagination on (created_at, id), newest first, walks one of the (column, -created_at) indexes whichever
filter is given, so page 1,000 of ten million entries costs what page 1 costs. Exports are bounded.
"""

from __future__ import annotations

from datetime import datetime

from django.db.models import Q, QuerySet

from audit.models import AuditEntry

PAGE_SIZE = 50
EXPORT_MAX = 10_000


def audit_entries(*, tenant=None, actor_id: int | None = None, api_key_id: str = "", actor_kind: str = "",
                  action: str = "", since: datetime | None = None, until: datetime | None = None) -> QuerySet:
    """The filtered trail, newest first. ``tenant`` None means every tenant (staff only: callers decide).
    ``action`` ending in "." is a prefix ("key." for every key event)."""
    qs = AuditEntry.objects.all()
    if tenant is not None:
        qs = qs.filter(tenant=tenant)
    if actor_id is not None:
        qs = qs.filter(actor_id=actor_id)
    if api_key_id:
        qs = qs.filter(api_key_id=api_key_id)
    if actor_kind:
        qs = qs.filter(actor_kind=actor_kind)
    if action:
        qs = qs.filter(action__startswith=action) if action.endswith(".") else qs.filter(action=action)
    if since is not None:
        qs = qs.filter(created_at__gte=since)
    if until is not None:
        qs = qs.filter(created_at__lt=until)
    return qs.order_by("-created_at", "-id")


def audit_page(qs: QuerySet, *, after: tuple[datetime, int] | None = None,
               size: int = PAGE_SIZE) -> tuple[list[AuditEntry], tuple[datetime, int] | None]:
    """One page after the cursor, and the next page's cursor (None: last page)."""
    if after is not None:
        at, pk = after
        qs = qs.filter(Q(created_at__lt=at) | Q(created_at=at, id__lt=pk))
    rows = list(qs[: size + 1])
    more = len(rows) > size
    rows = rows[:size]
    return rows, ((rows[-1].created_at, rows[-1].id) if more and rows else None)


EXPORT_FIELDS = ("id", "seq", "created_at", "action", "actor_kind", "actor_id", "actor_label", "api_key_id",
                 "tenant_id", "target_type", "target_id", "ip", "user_agent", "request_id", "data", "hash")


def audit_export(qs: QuerySet, *, limit: int = EXPORT_MAX) -> tuple[list[dict], bool]:
    """Up to ``limit`` entries of the filtered range as plain values, and whether there were more."""
    rows = list(qs.values(*EXPORT_FIELDS)[: limit + 1])
    return rows[:limit], len(rows) > limit
