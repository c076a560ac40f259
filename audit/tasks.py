from __future__ import annotations

from celery import shared_task


@shared_task(name="audit.tasks.audit_jobs", ignore_result=True)
def audit_jobs() -> None:
    """Chain the entries committed since the last run, then archive a segment if one is due (beat, every
    AUDIT_JOBS_INTERVAL_S)."""
    from audit.services import audit_jobs as run

    run()
