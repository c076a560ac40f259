from __future__ import annotations

from celery import shared_task

from billing.services import usage_ingest


@shared_task(ignore_result=True)
def ingest_usage() -> int:
    """Drain the usage stream into the database (idempotent; safe to run on several workers)."""
    return usage_ingest(max_batches=100)
