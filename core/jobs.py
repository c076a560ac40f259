"""Jobs the data plane raises for the control plane's workers, by task name through the Celery broker (Redis).

The data plane never runs control-plane code (it has no database access on any path): when it finds that Redis
lost what the control plane publishes, it asks a worker to publish it again, and goes on meanwhile.
"""

from __future__ import annotations

import threading

from celery import Celery

# Task names the workers register (``billing.tasks``).
REBUILD_SNAPSHOT = "billing.tasks.rebuild_snapshot"
REBUILD_LIMIT_COUNTERS = "billing.tasks.rebuild_limit_counters"
PUBLISH_TENANT = "billing.tasks.publish_tenant_record"  # one argument: the tenant's id

_lock = threading.Lock()
_senders: dict[str, Celery] = {}


def raise_job(task_name: str, *args: str, broker_url: str | None, eager: bool) -> bool:
    """Queue ``task_name`` for a worker. False (and nothing sent) when there is no worker to run it: the
    embedded default (eager tasks, an in-memory broker), whose web process runs the repair jobs itself."""
    if eager or not broker_url or broker_url.startswith("memory://"):
        return False
    with _lock:
        sender = _senders.get(broker_url)
        if sender is None:
            sender = _senders[broker_url] = Celery("wattle-data-plane", broker=broker_url, set_as_current=False)
    sender.send_task(task_name, args=list(args))
    return True
