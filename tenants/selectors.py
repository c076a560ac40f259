"""Reads. Every function that returns tenant data takes the tenant (or the user it must belong to)."""

from __future__ import annotations

from tenants.models import ApiKey, Membership, Tenant


def memberships_for_user(*, user) -> list[Membership]:
    return list(Membership.objects.filter(user=user).select_related("tenant").order_by("tenant__name"))


def api_keys_for_tenant(*, tenant: Tenant) -> list[ApiKey]:
    return list(ApiKey.objects.filter(tenant=tenant).select_related("created_by"))
