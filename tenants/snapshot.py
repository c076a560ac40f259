"""What the data plane knows about keys and tenants: records the control plane pushes into Redis.

The data plane never touches the database on the request path; it reads these records (with a sub-second
in-process cache), so every change here must be published after the database commit.
"""

from __future__ import annotations

import orjson

from billing import limits
from portal.redis import get_redis, key
from tenants.models import ApiKey, Tenant

SNAPSHOT_READY = "snapshot:ready"


def api_key_record_key(key_id: str) -> str:
    return key("apikey", key_id)


def api_key_record(api_key: ApiKey, tenant: Tenant, tenant_effective: dict | None = None) -> dict:
    if tenant_effective is None:
        tenant_effective = limits.tenant_limits(tenant)
    return {
        "key_id": api_key.key_id,
        "tenant": str(tenant.pk),
        "tenant_status": tenant.status,
        "hash": api_key.secret_hash,
        # During a rotation's grace period the old secret still works, until prev_expires (epoch seconds).
        "prev_hash": api_key.previous_secret_hash if api_key.previous_secret_active else None,
        "prev_expires": api_key.previous_secret_expires_at.timestamp() if api_key.previous_secret_active else None,
        "scopes": list(api_key.scopes),
        "models": list(api_key.allowed_models or []),
        "expires": api_key.expires_at.timestamp() if api_key.expires_at else None,
        "revoked": api_key.revoked_at is not None,
        "limits": {
            "tenant": limits.for_data_plane(tenant_effective),
            "key": limits.for_data_plane(limits.key_limits(api_key, tenant_effective)),
        },
    }


def publish_api_keys(api_keys: list[ApiKey]) -> None:
    if not api_keys:
        return
    per_tenant: dict = {}
    pipe = get_redis().pipeline(transaction=False)
    for api_key in api_keys:
        tenant = api_key.tenant
        if tenant.pk not in per_tenant:
            per_tenant[tenant.pk] = limits.tenant_limits(tenant)
        record = api_key_record(api_key, tenant, per_tenant[tenant.pk])
        pipe.set(api_key_record_key(api_key.key_id), orjson.dumps(record))
    pipe.execute()


def publish_tenant(tenant: Tenant) -> None:
    """Re-publish every key of a tenant, e.g. after a suspension, so the data plane sees the new status."""
    publish_api_keys(list(tenant.api_keys.select_related("tenant")))


def rebuild() -> int:
    """Publish every key. Run at start-up, periodically, and by the data plane after Redis lost its data."""
    api_keys = list(ApiKey.objects.select_related("tenant").iterator(chunk_size=2000))
    for start in range(0, len(api_keys), 2000):
        publish_api_keys(api_keys[start : start + 2000])
    get_redis().set(key(SNAPSHOT_READY), "1")
    return len(api_keys)


def rebuild_from_worker_thread() -> int:
    """``rebuild`` for the data plane's thread pool: closes the thread's connection so none lingers."""
    from django.db import connections

    try:
        return rebuild()
    finally:
        connections.close_all()
