"""Reads. Every function that returns tenant data takes the tenant (or the user it must belong to)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.db.models import Count, Q, QuerySet
from django.shortcuts import get_object_or_404
from django.utils import timezone

from audit.models import AuditEntry
from tenants import hooks
from tenants.models import ApiKey, Invitation, Membership, Tenant


def memberships_for_user(*, user) -> list[Membership]:
    return list(Membership.objects.filter(user=user).select_related("tenant").order_by("tenant__name"))


# --- members ---------------------------------------------------------------------------------------
def members_for_tenant(*, tenant: Tenant, role: str | None = None) -> QuerySet[Membership]:
    qs = Membership.objects.filter(tenant=tenant).select_related("user").order_by("created_at")
    if role:
        qs = qs.filter(role=role)
    return qs


def member_get(*, tenant: Tenant, member_id) -> Membership:
    return get_object_or_404(Membership.objects.select_related("user", "tenant"), tenant=tenant, pk=member_id)


# --- invitations -----------------------------------------------------------------------------------
def invitations_for_tenant(*, tenant: Tenant, status: str | None = None) -> QuerySet[Invitation]:
    qs = Invitation.objects.filter(tenant=tenant).select_related("invited_by").order_by("-created_at")
    now = timezone.now()
    if status == "pending":
        qs = qs.filter(accepted_at__isnull=True, revoked_at__isnull=True, expires_at__gt=now)
    elif status == "accepted":
        qs = qs.filter(accepted_at__isnull=False)
    elif status == "revoked":
        qs = qs.filter(revoked_at__isnull=False, accepted_at__isnull=True)
    elif status == "expired":
        qs = qs.filter(accepted_at__isnull=True, revoked_at__isnull=True, expires_at__lte=now)
    return qs


def invitation_get(*, tenant: Tenant, invitation_id) -> Invitation:
    return get_object_or_404(Invitation.objects.select_related("tenant"), tenant=tenant, pk=invitation_id)


# --- API keys --------------------------------------------------------------------------------------
def api_keys_for_tenant(*, tenant: Tenant, status: str | None = None, scope: str | None = None) -> QuerySet[ApiKey]:
    qs = ApiKey.objects.filter(tenant=tenant).select_related("created_by", "tenant")
    now = timezone.now()
    if status == "active":
        qs = qs.filter(Q(expires_at__isnull=True) | Q(expires_at__gt=now), revoked_at__isnull=True)
    elif status == "revoked":
        qs = qs.filter(revoked_at__isnull=False)
    elif status == "expired":
        qs = qs.filter(revoked_at__isnull=True, expires_at__lte=now)
    if scope:
        # JSON containment is not portable to SQLite; the scope list is tiny, so filter by the stored text.
        qs = qs.filter(scopes__icontains=f'"{scope}"')
    return qs


LIMITS_KEYS_SHOWN = 100


def api_keys_for_limits(*, tenant: Tenant) -> list[ApiKey]:
    """The keys the limits page and endpoint report on: active ones, newest first, at most ``LIMITS_KEYS_SHOWN``."""
    return list(api_keys_for_tenant(tenant=tenant, status="active")[:LIMITS_KEYS_SHOWN])


def api_key_get(*, tenant: Tenant, key_id: str) -> ApiKey:
    return get_object_or_404(ApiKey.objects.select_related("created_by", "tenant"), tenant=tenant, key_id=key_id)


def with_last_used(*, tenant: Tenant, api_keys: list[ApiKey]) -> list[ApiKey]:
    """Attach ``last_used_at`` to each key of one page, in one query. Usage events are billing's; the function
    that reads them is installed by billing (``tenants.hooks``), so that this one read serves the pages, the
    staff console and the management API alike."""
    last = hooks.keys_last_used(tenant=tenant, key_ids=[k.key_id for k in api_keys])
    for api_key in api_keys:
        api_key.last_used_at = last.get(api_key.key_id)
    return api_keys


# --- staff -----------------------------------------------------------------------------------------
def tenants_search(*, query: str = "", status: str | None = None) -> QuerySet[Tenant]:
    qs = Tenant.objects.annotate(
        member_count=Count("memberships", distinct=True),
        active_key_count=Count("api_keys", filter=Q(api_keys__revoked_at__isnull=True), distinct=True),
    ).order_by("name")
    if query:
        qs = qs.filter(
            Q(name__icontains=query) | Q(slug__icontains=query) | Q(billing_email__icontains=query)
            | Q(abn__icontains=query.replace(" ", "")) | Q(memberships__user__email__icontains=query)
        ).distinct()
    if status:
        qs = qs.filter(status=status)
    return qs


def tenant_by_slug(*, slug: str) -> Tenant:
    return get_object_or_404(Tenant, slug=slug)


@dataclass(frozen=True)
class StatusChange:
    at: datetime
    actor: str
    to: str
    reason: str


def tenant_status_history(*, tenant: Tenant, limit: int = 50) -> list[StatusChange]:
    """Suspensions and reactivations, newest first, from the audit trail (the record of who did what)."""
    entries = AuditEntry.objects.filter(tenant=tenant, action__startswith="tenant.status.").order_by("-created_at")
    return [
        StatusChange(at=e.created_at, actor=e.actor_label, to=e.data.get("to", ""), reason=e.data.get("reason", ""))
        for e in entries[:limit]
    ]
