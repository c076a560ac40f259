"""The data plane's snapshot of tenants and keys in Redis (``core.contract``): tenant records (status, effective
limits, which billing resolves, and when an unpaid subscription stops the tenant being served), the
whole-snapshot rebuild and the periodic reconciliation. Key records are ``tenants.snapshot``'s.

Every change is published after its database commit. A publish can fail (Redis away for a moment) and nothing
retries it; the reconciliation, every ``REDIS_REPAIR_INTERVAL_S``, republishes what changed since its last run,
so such a change (a suspended tenant that still works) heals within two runs. After a Redis data loss (no
snapshot marker of this contract version) everything is published again: by that job, or at once by the
worker job the data plane raises when it finds the marker gone (``billing.tasks.rebuild_snapshot``).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from billing import limits, payment_access, pricing
from billing.models import Subscription, TenantQuota
from core import contract, quotas
from core.redis import get_redis
from tenants import snapshot as key_snapshot
from tenants.models import Tenant

logger = logging.getLogger("wattle.snapshot")
_CHUNK = 2000


def tenant_record(tenant: Tenant, quota: TenantQuota | None, default, *,
                  subscription: Subscription | None = None, payments_configured: bool | None = None
                  ) -> contract.TenantRecord:
    resolved, plan = limits.tenant_limits_resolved(quota, default)
    return contract.TenantRecord(
        tenant=str(tenant.pk), status=tenant.status, limits=quotas.for_data_plane(resolved.values),
        redaction=tenant.redaction,
        retention_days=tenant.retention_days,
        escalation_threshold=tenant.escalation_threshold, escalation_turns=tenant.escalation_turns,
        escalation_phrases=tenant.escalation_phrase_list, sentiment_scorer=tenant.sentiment_scorer,
        sentiment_model=tenant.sentiment_model, analytics_sample=tenant.analytics_sample_percent,
        unpaid_after=payment_access.unpaid_after(plan=plan, subscription=subscription,
                                                 configured=payments_configured),
        # Always the plan's, whether or not it has prices of its own: giving it some then republishes only the
        # prices record, not every tenant on it (a list not published reads as the platform prices).
        price_list=pricing.price_list_name(plan.pk) if plan is not None else None,
    )


def publish_tenants(tenant_ids) -> int:
    """Publish the records of ``tenant_ids`` (a list or a queryset of ids). Returns how many."""
    default = limits.default_plan()
    configured = payment_access.payments_configured()
    count = 0
    pipe = get_redis().pipeline(transaction=False)
    tenants = Tenant.objects.filter(pk__in=tenant_ids).select_related("quota__plan", "subscription")
    for tenant in tenants.iterator(chunk_size=_CHUNK):
        quota = getattr(tenant, "quota", None)
        record = tenant_record(tenant, quota, default, subscription=getattr(tenant, "subscription", None),
                               payments_configured=configured)
        pipe.set(contract.tenant_record_key(str(tenant.pk)), record.encode())
        count += 1
        if count % _CHUNK == 0:
            pipe.execute()
    pipe.execute()
    return count


def publish_tenant(tenant: Tenant) -> None:
    publish_tenants([tenant.pk])


def tenants_on_plan(plan) -> Q:
    """The tenants whose limits come from ``plan``: on it, or following the default plan it is."""
    on = Q(quota__plan=plan)
    if plan.is_default:
        on |= Q(quota__isnull=True) | Q(quota__plan__isnull=True)
    return on


def rebuild() -> int:
    """Publish every tenant and key record, then mark the snapshot complete. Returns how many keys."""
    publish_tenants(Tenant.objects.values("pk"))
    count = key_snapshot.publish_all_keys()
    get_redis().set(contract.snapshot_ready_key(), "1")
    return count


def rebuild_from_worker() -> int:
    """``rebuild`` as the job the data plane raises: skipped if another worker completed it meanwhile."""
    if get_redis().exists(contract.snapshot_ready_key()):
        return 0
    return rebuild()


def reconcile(*, now: datetime | None = None) -> int:
    """Republish every record that may have changed since the last run: keys changed since, and tenants whose
    row, quota, plan or subscription (``updated_at``) changed, or that follow a default plan that did. Runs look
    back ``SNAPSHOT_RECONCILE_OVERLAP_S`` before the last one, for changes committed after their ``updated_at``.
    Without a watermark or a complete snapshot (first run, or Redis lost its data) everything is published.
    Returns how many records."""
    client = get_redis()
    now = now or timezone.now()
    raw = client.get(contract.snapshot_reconciled_key())
    if raw is None or not client.exists(contract.snapshot_ready_key()):
        count = rebuild()
    else:
        since = datetime.fromisoformat(raw.decode()) - timedelta(seconds=settings.SNAPSHOT_RECONCILE_OVERLAP_S)
        changed = (Q(updated_at__gte=since) | Q(quota__updated_at__gte=since) | Q(quota__plan__updated_at__gte=since)
                   | Q(subscription__updated_at__gte=since))
        default = limits.default_plan()
        if default is not None and default.updated_at >= since:
            changed |= Q(quota__isnull=True) | Q(quota__plan__isnull=True)
        count = publish_tenants(Tenant.objects.filter(changed).values("pk"))
        count += key_snapshot.publish_keys_changed_since(since)
    client.set(contract.snapshot_reconciled_key(), now.isoformat())
    if count:
        logger.info("snapshot: republished %d records changed since the last reconciliation", count)
    return count
