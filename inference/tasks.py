"""Periodic control-plane jobs for the data plane (scheduled by Celery beat, see CELERY_BEAT_SCHEDULE)."""

from __future__ import annotations

import logging

from celery import shared_task

from billing import snapshot
from inference import services

logger = logging.getLogger("wattle.inference")


@shared_task(ignore_result=True)
def publish_snapshots() -> None:
    """Republish the backend list, and the tenant and key records changed since the last run (every one if
    Redis lost the snapshot): a publish that failed after its commit heals here (``billing.snapshot``)."""
    services.backends_publish()
    snapshot.reconcile()


@shared_task(ignore_result=True)
def probe_backends() -> dict[str, bool]:
    """Record every backend's health in Redis for the staff console (the data plane probes on its own)."""
    return services.backends_probe()


@shared_task(ignore_result=True)
def prewarm_models() -> list[str]:
    """Before business hours, ask the autoscaler to bring up a replica of each model (scale-to-zero pre-warm)."""
    return services.models_prewarm(reason="schedule")


# --- post-call analytics (inference.analytics) -----------------------------------------------------
@shared_task(ignore_result=True)
def ingest_closed_conversations() -> int:
    """Take closed conversations from the data plane's stream, and queue an analysis for the sampled ones."""
    from inference.analytics import conversations_ingest

    return conversations_ingest(max_batches=20)


@shared_task(ignore_result=True)
def analyse_conversation(analysis_id: str, entry_id: str) -> None:
    """Summarise and QA-score one conversation. Takes ids only: the transcript is read from the stream entry
    ``entry_id`` (never passed through the broker), which is deleted once the analysis has ended."""
    from inference.analytics import conversation_analyse

    conversation_analyse(analysis_id=analysis_id, entry_id=entry_id)


@shared_task(ignore_result=True)
def ingest_adm_decisions() -> int:
    """Write the conversation API's escalation decisions into the audit chain (``inference.adm``)."""
    from inference.adm import adm_decisions_ingest

    return adm_decisions_ingest(max_batches=50)
