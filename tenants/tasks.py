"""Periodic jobs for tenants and accounts (scheduled by Celery beat, see CELERY_BEAT_SCHEDULE)."""

from __future__ import annotations

from celery import shared_task

from tenants import services


@shared_task(ignore_result=True)
def close_expired_support_sessions() -> int:
    """Close (and audit the end of) staff "act as" sessions that ran out while nobody was looking."""
    return services.act_as_close_expired()
