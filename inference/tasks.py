"""Periodic control-plane jobs for the data plane (scheduled by Celery beat)."""

from __future__ import annotations

from celery import shared_task

from inference.services import backends_publish
from portal.redis import get_redis, key
from tenants import snapshot


@shared_task(ignore_result=True)
def publish_snapshots() -> None:
    """Republish the backend list, and the key snapshot if Redis lost it (restart without persistence)."""
    backends_publish()
    if not get_redis().exists(key(snapshot.SNAPSHOT_READY)):
        snapshot.rebuild()
