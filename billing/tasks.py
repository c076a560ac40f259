from __future__ import annotations

from celery import shared_task

from billing.services import prices_publish, usage_ingest
from core.jobs import PUBLISH_TENANT, REBUILD_LIMIT_COUNTERS, REBUILD_SNAPSHOT


@shared_task(ignore_result=True)
def ingest_usage() -> int:
    """Drain the usage stream into the database (idempotent; safe to run on several workers)."""
    return usage_ingest(max_batches=100)


@shared_task(ignore_result=True)
def check_budget_alerts() -> int:
    from billing.budget_alerts import budget_alerts_check

    return len(budget_alerts_check())


@shared_task(ignore_result=True)
def check_cost_guard() -> bool:
    from billing.cost_guard import cost_guard_check

    return cost_guard_check() is not None


@shared_task(name=REBUILD_LIMIT_COUNTERS, ignore_result=True)
def rebuild_limit_counters(now: float | None = None) -> int | None:
    """Rebuild the limiter's day and month counters from usage events if Redis lost them (cheap otherwise:
    one EXISTS). Beat runs it every few seconds; a limiter that starts without the marker asks for it."""
    from billing.limit_counters import limit_counters_ensure

    return limit_counters_ensure(now=now)


@shared_task(ignore_result=True)
def publish_prices() -> int:
    """Republish model prices for the data plane: a publish that failed after its commit, or prices Redis lost
    with the rest of its data, would otherwise leave every spend counter at zero (the gateway prices usage
    from them). One small read and one write; beat runs it with the other repairs."""
    return len(prices_publish())


@shared_task(name=REBUILD_SNAPSHOT, ignore_result=True)
def rebuild_snapshot() -> int:
    """Publish every tenant and key record again: raised by the data plane when it finds Redis without them."""
    from billing import snapshot

    return snapshot.rebuild_from_worker()


@shared_task(ignore_result=True)
def publish_plan_tenants(plan_id: int) -> int:
    """Republish the records of the tenants a plan change touches (those on it, or following it as default)."""
    from billing import snapshot
    from billing.models import Plan
    from tenants.models import Tenant

    plan = Plan.objects.filter(pk=plan_id).first()
    if plan is None:
        return 0
    return snapshot.publish_tenants(Tenant.objects.filter(snapshot.tenants_on_plan(plan)).values("pk"))


@shared_task(name=PUBLISH_TENANT, ignore_result=True)
def publish_tenant_record(tenant_id: str) -> int:
    """Publish one tenant's record: raised by the data plane for a key whose tenant it found unpublished."""
    from billing import snapshot

    return snapshot.publish_tenants([tenant_id])


# --- rollups and Stripe meters (billing/rollups.py, billing/meters.py) --------------------------------------------
@shared_task(ignore_result=True)
def build_rollups() -> int:
    """Add the usage events committed since the last run into the hourly and daily rollups (the console reads
    them). Bounded per run; the next run carries on from the watermark."""
    from billing.rollups import rollups_update

    return rollups_update(max_batches=50)


@shared_task(ignore_result=True)
def plan_meter_reports() -> int:
    """Write the Stripe meter outbox rows of the hours that closed (and corrections for late usage), from rollups
    brought up to date first."""
    from billing.meters import meter_reports_plan
    from billing.rollups import rollups_update

    rollups_update(max_batches=50)
    return len(meter_reports_plan())


@shared_task(ignore_result=True)
def send_meter_reports() -> int:
    """Send the due outbox rows to Stripe (safe on several workers: each row is claimed before it is sent)."""
    from billing.meters import meter_reports_send

    return meter_reports_send().sent



# --- Stripe: webhook events, plans, payment notices (billing/stripe_events.py, plan_sync.py, payment_notices.py) ---
@shared_task(ignore_result=True)
def process_stripe_event(event_id: str) -> bool:
    from billing.stripe_events import event_process

    return event_process(event_id=event_id)


@shared_task(ignore_result=True)
def retry_stripe_events() -> int:
    """Process the stored webhook events that are still waiting (Stripe was unreachable when they came)."""
    from billing.stripe_events import events_retry

    return events_retry()


@shared_task(ignore_result=True)
def sync_plans_to_stripe(plan_ids: list[int] | None = None) -> int:
    """Sync plans to Stripe: ``plan_ids`` after a change (those billed through Stripe), else every plan out of
    step with it. A failure is kept for staff (the plans page) and retried on the next periodic run."""
    from billing import plan_sync, stripe_gateway
    from billing.models import Plan

    if plan_ids is None:
        return plan_sync.plans_sync_due()
    synced = 0
    for plan in Plan.objects.filter(pk__in=plan_ids):
        if not (plan.requires_payment or plan.self_serve or plan.stripe_product_id):
            continue
        try:
            plan_sync.plan_stripe_sync(plan=plan)
        except (stripe_gateway.StripeError, plan_sync.PaymentsNotConfigured):
            continue
        synced += 1
    return synced


@shared_task(ignore_result=True)
def send_payment_notices() -> int:
    """Email billing contacts about payments that failed and grace periods that ended (once each)."""
    from billing.payment_notices import payment_notices_send

    return payment_notices_send()


@shared_task(name="billing.tasks.seal_access_log", ignore_result=True)
def seal_access_log() -> None:
    """Seal the access records ingested since the last run into the audit chain, in batches by digest (beat, every
    ACCESS_SEAL_INTERVAL_S)."""
    from billing.access_log import access_jobs

    access_jobs()
