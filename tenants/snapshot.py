"""Key records for the data plane (``core.contract.KeyRecord``), pushed into Redis after every database commit
that changes a key. The data plane never touches the database; it reads these with a sub-second cache.

Tenant records, the whole-snapshot rebuild and the reconciliation are billing's (``billing.snapshot``): a tenant
record carries its effective limits, which billing resolves, and tenants imports nothing from billing.
"""

from __future__ import annotations

from datetime import datetime

from core import contract, quotas
from core.redis import get_redis
from tenants.models import ApiKey

_CHUNK = 2000


def api_key_record(api_key: ApiKey) -> contract.KeyRecord:
    grace = api_key.previous_secret_active
    return contract.KeyRecord(
        key_id=api_key.key_id,
        tenant=str(api_key.tenant_id),
        hash=api_key.secret_hash,
        scopes=tuple(api_key.scopes),
        models=tuple(api_key.allowed_models or ()),
        expires=api_key.expires_at.timestamp() if api_key.expires_at else None,
        revoked=api_key.revoked_at is not None,
        # During a rotation's grace period the old secret still works, until prev_expires (epoch seconds).
        prev_hash=api_key.previous_secret_hash if grace else None,
        prev_expires=api_key.previous_secret_expires_at.timestamp() if grace else None,
        # The key's own limits. Never above its tenant's in effect: the data plane checks the tenant's too.
        limits=quotas.for_data_plane({name: getattr(api_key, name) for name in quotas.FIELDS}),
    )


def publish_api_keys(api_keys: list[ApiKey]) -> None:
    if not api_keys:
        return
    pipe = get_redis().pipeline(transaction=False)
    for api_key in api_keys:
        pipe.set(contract.api_key_record_key(api_key.key_id), api_key_record(api_key).encode())
    pipe.execute()


def publish_all_keys() -> int:
    count = 0
    batch: list[ApiKey] = []
    for api_key in ApiKey.objects.iterator(chunk_size=_CHUNK):
        batch.append(api_key)
        if len(batch) == _CHUNK:
            publish_api_keys(batch)
            count, batch = count + len(batch), []
    publish_api_keys(batch)
    return count + len(batch)


def publish_keys_changed_since(since: datetime, *, tenant_ids=None) -> int:
    """Republish keys changed since ``since`` (and every key of ``tenant_ids``, a queryset or list)."""
    from django.db.models import Q

    changed = Q(updated_at__gte=since)
    if tenant_ids is not None:
        changed |= Q(tenant_id__in=tenant_ids)
    api_keys = list(ApiKey.objects.filter(changed))
    for start in range(0, len(api_keys), _CHUNK):
        publish_api_keys(api_keys[start : start + _CHUNK])
    return len(api_keys)
