from __future__ import annotations

from celery import shared_task


@shared_task(name="audit.tasks.audit_jobs", ignore_result=True)
def audit_jobs() -> None:
    """Chain the entries committed since the last run, then archive a segment if one is due (beat, every
    AUDIT_JOBS_INTERVAL_S)."""
    from audit.services import audit_jobs as run

    run()


@shared_task(name="audit.tasks.transcripts_ingest", ignore_result=True)
def transcripts_ingest() -> int:
    """Store the data plane's transcript records, sealed (beat, every AUDIT_JOBS_INTERVAL_S)."""
    from audit.transcripts import transcripts_ingest as run

    return run(max_batches=100)


@shared_task(name="audit.tasks.retention_jobs", ignore_result=True)
def retention_jobs() -> None:
    """Destroy transcripts past their retention and shred off-boarded tenants' data keys now due (beat, daily)."""
    from audit.transcripts import retention_jobs as run

    run()
