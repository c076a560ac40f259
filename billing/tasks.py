from __future__ import annotations

from celery import shared_task

from billing.services import usage_ingest


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
