"""Start-up and shutdown of a web process: the data plane's clients, and (embedded mode) usage ingest and the
jobs that repair what Redis holds."""

from __future__ import annotations

import gc
import logging
import threading

from asgiref.sync import sync_to_async
from django.conf import settings

from inference.gateway.app import gateway
from inference.tasks import publish_snapshots

logger = logging.getLogger("wattle.lifespan")


_gc_tuned = False


def tune_gc() -> None:
    """Keep the garbage collector off the request path. Everything loaded at start-up (Django, the apps,
    the tokenizer) stays for the life of the process: freezing it means full collections no longer scan it.
    Requests allocate many short-lived containers that reference counting frees; a larger first generation
    runs the collector less often and promotes fewer of them."""
    global _gc_tuned
    if _gc_tuned:  # once per process: a second freeze would also pin whatever garbage came since
        return
    _gc_tuned = True
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)


def _run_every(jobs, *, stop: threading.Event, interval: float, what: str) -> None:
    """Run ``jobs`` now and every ``interval`` until ``stop``. One that fails is logged and runs again next time;
    the others still run."""
    from django.db import close_old_connections

    while True:
        for job in jobs:
            try:
                job()
            except Exception:
                name = getattr(job, "name", None) or job.__name__
                logger.exception("%s job %s failed; it runs again in %ss", what, name, interval)
            finally:
                close_old_connections()
        if stop.wait(interval):
            return


def redis_repair_loop(*, stop: threading.Event, interval: float) -> None:
    """Embedded mode has no Celery beat: run the jobs that repair Redis (republish key records changed since
    the last run and the model prices, rebuild the limit counters if Redis lost them) now and every
    ``interval`` until ``stop``."""
    from billing.tasks import publish_prices, rebuild_limit_counters
    from inference.tasks import ingest_adm_decisions

    # The escalation decisions' audit entries ride along: like the rest, they move what Redis holds into place.
    _run_every((publish_snapshots, publish_prices, rebuild_limit_counters, ingest_adm_decisions), stop=stop,
               interval=interval, what="Redis repair")


def billing_jobs_loop(*, stop: threading.Event, interval: float) -> None:
    """Embedded mode has no Celery beat: build the usage rollups (the console reads them), then plan and send the
    Stripe meter reports; retry Stripe events still waiting, send payment notices now due and sync plans out of
    step with Stripe; seal the access log into the audit chain; now and every ``interval`` until ``stop``."""
    from billing.access_log import access_jobs
    from billing.meters import meter_jobs
    from billing.payment_notices import payment_notices_send
    from billing.plan_sync import plans_sync_due
    from billing.stripe_events import events_retry

    _run_every((meter_jobs, events_retry, payment_notices_send, plans_sync_due, access_jobs), stop=stop,
               interval=interval, what="billing")


def audit_jobs_loop(*, stop: threading.Event, interval: float) -> None:
    """Embedded mode has no Celery beat: chain new audit entries and archive a segment when one is due, store
    transcripts and run the daily retention job when due, now and every ``interval`` until ``stop``."""
    from audit.services import audit_jobs
    from audit.transcripts import retention_jobs_due, transcripts_ingest

    # Transcripts: stored within seconds of the request; the retention job (destruction, key shredding) daily.
    _run_every((audit_jobs, transcripts_ingest, retention_jobs_due), stop=stop, interval=interval, what="audit")


def analytics_jobs_loop(*, stop: threading.Event, interval: float) -> None:
    """Embedded mode has no Celery beat: take closed conversations in for post-call analytics (the analyses run
    eagerly, in this thread), now and every ``interval`` until ``stop``."""
    from inference.tasks import ingest_closed_conversations

    _run_every((ingest_closed_conversations,), stop=stop, interval=interval, what="analytics")


class Lifespan:
    def __init__(self) -> None:
        self._stop = threading.Event()
        self._ingest_thread: threading.Thread | None = None
        self._repair_thread: threading.Thread | None = None
        self._billing_thread: threading.Thread | None = None
        self._audit_thread: threading.Thread | None = None
        self._analytics_thread: threading.Thread | None = None

    def _start_ingest(self) -> None:
        from billing.services import usage_ingest_loop

        self._ingest_thread = threading.Thread(
            target=usage_ingest_loop, kwargs={"stop": self._stop}, name="usage-ingest", daemon=True
        )
        self._ingest_thread.start()

    async def __call__(self, scope, receive, send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    if settings.INFERENCE_PUBLISH_ON_START:
                        await sync_to_async(publish_snapshots, thread_sensitive=False)()
                    await gateway.startup()
                    if settings.USAGE_INGEST_IN_PROCESS:
                        self._start_ingest()
                    if settings.REDIS_REPAIR_IN_PROCESS:
                        self._repair_thread = threading.Thread(
                            target=redis_repair_loop, name="redis-repair", daemon=True,
                            kwargs={"stop": self._stop, "interval": settings.REDIS_REPAIR_INTERVAL_S},
                        )
                        self._repair_thread.start()
                    if settings.BILLING_JOBS_IN_PROCESS:
                        self._billing_thread = threading.Thread(
                            target=billing_jobs_loop, name="billing-jobs", daemon=True,
                            kwargs={"stop": self._stop, "interval": settings.BILLING_JOBS_INTERVAL_S},
                        )
                        self._billing_thread.start()
                    if settings.AUDIT_JOBS_IN_PROCESS:
                        self._audit_thread = threading.Thread(
                            target=audit_jobs_loop, name="audit-jobs", daemon=True,
                            kwargs={"stop": self._stop, "interval": settings.AUDIT_JOBS_INTERVAL_S},
                        )
                        self._audit_thread.start()
                    if settings.INFERENCE_ANALYTICS_IN_PROCESS:
                        self._analytics_thread = threading.Thread(
                            target=analytics_jobs_loop, name="analytics-jobs", daemon=True,
                            kwargs={"stop": self._stop, "interval": settings.INFERENCE_ANALYTICS_INGEST_INTERVAL_S},
                        )
                        self._analytics_thread.start()
                    tune_gc()
                except Exception as exc:
                    logger.exception("start-up failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await gateway.shutdown()  # flushes buffered usage events to the stream first
                self._stop.set()
                for thread in (self._ingest_thread, self._repair_thread, self._billing_thread, self._audit_thread,
                               self._analytics_thread):
                    if thread is not None:
                        thread.join(timeout=10)
                await send({"type": "lifespan.shutdown.complete"})
                return
