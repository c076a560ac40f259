"""What the data plane knows about keys and tenants: records the control plane pushes into Redis.

The data plane never touches the database on the request path; it reads these records (with a sub-second
in-process cache), so every change here must be published after the database commit.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

import orjson
from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from billing import limits
from core.redis import get_redis, key
from tenants.models import ApiKey, Tenant

logger = logging.getLogger("wattle.snapshot")

SNAPSHOT_READY = "snapshot:ready"
RECONCILED_UNTIL = "snapshot:reconciled"


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


def reconcile(*, now: datetime | None = None) -> int:
    """Republish every key whose record may have changed since the last run: its own row, its tenant's, the
    tenant's quota or plan (``updated_at``), or the default plan its tenant follows. Publishing after commit can
    fail (Redis away for a moment) and nothing retries it; this job, every ``REDIS_REPAIR_INTERVAL_S``, makes
    such a change (a revoked key that still works) good within two runs. Runs look back
    ``SNAPSHOT_RECONCILE_OVERLAP_S`` before the last one, for changes committed after their ``updated_at``.
    Without a watermark or a complete snapshot (first run, or Redis lost its data) every key is published.
    Returns how many."""
    client = get_redis()
    now = now or timezone.now()
    raw = client.get(key(RECONCILED_UNTIL))
    if raw is None or not client.exists(key(SNAPSHOT_READY)):
        count = rebuild()
    else:
        since = datetime.fromisoformat(raw.decode()) - timedelta(seconds=settings.SNAPSHOT_RECONCILE_OVERLAP_S)
        tenants = Q(updated_at__gte=since) | Q(quota__updated_at__gte=since) | Q(quota__plan__updated_at__gte=since)
        default = limits.default_plan()
        if default is not None and default.updated_at >= since:
            tenants |= Q(quota__isnull=True) | Q(quota__plan__isnull=True)
        tenant_ids = Tenant.objects.filter(tenants).values("pk")
        changed = list(
            ApiKey.objects.filter(Q(updated_at__gte=since) | Q(tenant_id__in=tenant_ids)).select_related("tenant")
        )
        for start in range(0, len(changed), 2000):
            publish_api_keys(changed[start : start + 2000])
        count = len(changed)
    client.set(key(RECONCILED_UNTIL), now.isoformat())
    if count:
        logger.info("snapshot: republished %d key records changed since the last reconciliation", count)
    return count


def rebuild_from_worker_thread() -> int:
    """``rebuild`` for the data plane's thread pool: closes the thread's connection so none lingers."""
    from django.db import connections

    try:
        return rebuild()
    finally:
        connections.close_all()
