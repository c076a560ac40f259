"""Periodic control-plane jobs for the data plane (scheduled by Celery beat, see CELERY_BEAT_SCHEDULE)."""

from __future__ import annotations

import logging

from celery import shared_task

from inference import services
from portal.redis import get_redis, key
from tenants import snapshot

logger = logging.getLogger("wattle.inference")


@shared_task(ignore_result=True)
def publish_snapshots() -> None:
    """Republish the backend list, and the key snapshot if Redis lost it (restart without persistence)."""
    services.backends_publish()
    if not get_redis().exists(key(snapshot.SNAPSHOT_READY)):
        snapshot.rebuild()


@shared_task(ignore_result=True)
def probe_backends() -> dict[str, bool]:
    """Record every backend's health in Redis for the staff console (the data plane probes on its own)."""
    return services.backends_probe()


@shared_task(ignore_result=True)
def prewarm_models() -> list[str]:
    """Before business hours, ask the autoscaler to bring up a replica of each model (scale-to-zero pre-warm)."""
    return services.models_prewarm(reason="schedule")
