"""State changes for tenants, members and API keys. Each writes its audit entry in the same transaction and
publishes what the data plane needs to Redis after the commit."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.db import transaction
from django.utils import timezone
from django.utils.text import slugify

from audit.services import record
from tenants import keys, snapshot
from tenants.models import ApiKey, Membership, Role, Tenant


def _unique_slug(name: str) -> str:
    base = slugify(name)[:60] or "tenant"
    slug, n = base, 1
    while Tenant.objects.filter(slug=slug).exists():
        n += 1
        slug = f"{base}-{n}"
    return slug


@transaction.atomic
def tenant_create(*, name: str, owner=None, billing_email: str = "", abn: str = "", state: str = "",
                  request=None) -> Tenant:
    tenant = Tenant.objects.create(
        name=name, slug=_unique_slug(name), billing_email=billing_email, abn=abn, state=state
    )
    if owner is not None:
        Membership.objects.create(tenant=tenant, user=owner, role=Role.OWNER)
    record(action="tenant.create", actor=owner, tenant=tenant, target=tenant, request=request,
           data={"name": name})
    return tenant


@dataclass(frozen=True)
class IssuedKey:
    api_key: ApiKey
    plaintext: str  # shown to the user once, never stored


@transaction.atomic
def api_key_create(
    *,
    tenant: Tenant,
    name: str,
    created_by=None,
    scopes: list[str] | None = None,
    allowed_models: list[str] | None = None,
    expires_at: datetime | None = None,
    request=None,
) -> IssuedKey:
    secret = keys.new_secret()
    key_id = keys.new_key_id()
    while ApiKey.objects.filter(key_id=key_id).exists():
        key_id = keys.new_key_id()
    api_key = ApiKey.objects.create(
        tenant=tenant,
        key_id=key_id,
        name=name,
        secret_hash=keys.hash_secret(secret),
        scopes=scopes if scopes is not None else [ApiKey.Scope.INFERENCE],
        allowed_models=allowed_models or [],
        expires_at=expires_at,
        created_by=created_by,
    )
    record(action="api_key.create", actor=created_by, tenant=tenant, target=api_key, request=request,
           data={"key_id": key_id, "name": name, "scopes": api_key.scopes})
    transaction.on_commit(lambda: snapshot.publish_api_keys([api_key]))
    return IssuedKey(api_key=api_key, plaintext=keys.format_key(key_id, secret))


@transaction.atomic
def api_key_revoke(*, api_key: ApiKey, actor=None, request=None) -> ApiKey:
    api_key = ApiKey.objects.select_for_update().select_related("tenant").get(pk=api_key.pk)
    if api_key.revoked_at is None:
        api_key.revoked_at = timezone.now()
        api_key.save(update_fields=["revoked_at"])
        record(action="api_key.revoke", actor=actor, tenant=api_key.tenant, target=api_key, request=request,
               data={"key_id": api_key.key_id})
    transaction.on_commit(lambda: snapshot.publish_api_keys([api_key]))
    return api_key


@transaction.atomic
def tenant_set_status(*, tenant: Tenant, status: str, reason: str = "", actor=None, request=None) -> Tenant:
    tenant = Tenant.objects.select_for_update().get(pk=tenant.pk)
    previous = tenant.status
    tenant.status = status
    tenant.status_reason = reason
    tenant.save(update_fields=["status", "status_reason"])
    record(action=f"tenant.status.{status}", actor=actor, tenant=tenant, target=tenant, request=request,
           data={"from": previous, "to": status, "reason": reason})
    transaction.on_commit(lambda: snapshot.publish_tenant(tenant))
    return tenant
