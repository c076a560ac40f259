"""A key or tenant change whose publish to Redis failed after commit is repaired by the reconciliation job: the
data plane sees it within two runs (about 20 s), never later. Redis fails at the network edge: the client's
first write raises the ConnectionError a dropped connection gives."""

from __future__ import annotations

import threading
from datetime import timedelta

import httpx
import pytest
import redis
from django.utils import timezone

from billing import snapshot
from core.contract import api_key_record_key
from core.redis import get_redis
from inference import tasks
from tenants import keys
from tenants.models import ApiKey, Tenant
from tenants.services import api_key_revoke, tenant_set_status
from tests.conftest import published_caller, wait_for

MODEL = "mistralai/Mistral-7B-Instruct-v0.3"


class NextWriteFails:
    """A Redis client whose next pipeline write, once armed, fails as if the connection had dropped; the writes
    after it work again."""

    def __init__(self, client) -> None:
        self._client = client
        self.armed = False
        self.failures = 0

    def __getattr__(self, name):
        return getattr(self._client, name)

    def pipeline(self, *args, **kwargs):
        pipe = self._client.pipeline(*args, **kwargs)
        if not self.armed:
            return pipe
        outer = self

        class Pipe:
            def __getattr__(self, name):
                return getattr(pipe, name)

            def execute(self):
                outer.armed = False
                outer.failures += 1
                pipe.reset()
                raise redis.exceptions.ConnectionError("Connection reset by peer")

        return Pipe()


@pytest.fixture
def flaky_redis(monkeypatch):
    """flaky_redis.armed = True: the control plane's next write to Redis fails once."""
    import core.redis

    flaky = NextWriteFails(get_redis())
    monkeypatch.setattr(core.redis, "_sync_client", flaky)
    return flaky


def _record(key_id: str) -> dict:
    """What the data plane reads for a key: its record joined with its tenant's."""
    caller = published_caller(key_id)
    return {"key_id": caller.key_id, "revoked": caller.revoked, "tenant_status": caller.tenant_status,
            "limits": {"tenant": caller.tenant_limits, "key": caller.key_limits}}


def _reconciled_an_hour_ago() -> None:
    """Everything was published and last changed an hour ago (the reconciliation's watermark is set)."""
    from billing.models import Plan, TenantQuota

    hour_ago = timezone.now() - timedelta(hours=1)
    for model in (ApiKey, Tenant, TenantQuota, Plan):
        model.objects.update(updated_at=hour_ago)
    snapshot.reconcile()


@pytest.mark.django_db(transaction=True)
def test_a_revoked_key_whose_publish_failed_is_refused_by_v1_after_the_reconciliation(gateway_ready, acme, issue_key,
                                                                                     flaky_redis,
                                                                                     django_capture_on_commit_callbacks):
    plaintext = issue_key(acme)
    key_id = keys.parse_key(plaintext)[0]
    tasks.publish_snapshots()

    def status() -> int:
        return httpx.post(f"{gateway_ready.base_url}/v1/chat/completions",
                          headers={"Authorization": f"Bearer {plaintext}"},
                          json={"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2},
                          timeout=30).status_code

    assert status() == 200
    flaky_redis.armed = True
    with django_capture_on_commit_callbacks(execute=True):
        api_key_revoke(api_key=ApiKey.objects.get(key_id=key_id))  # committed; its publish fails (logged)
    assert flaky_redis.failures == 1
    assert ApiKey.objects.get(key_id=key_id).revoked_at is not None
    assert _record(key_id)["revoked"] is False  # what the data plane still sees: the key would keep working
    tasks.publish_snapshots()  # the beat job, every REDIS_REPAIR_INTERVAL_S
    assert _record(key_id)["revoked"] is True
    wait_for(lambda: status() == 401, timeout=3)  # past the gateway's sub-second key cache


@pytest.mark.django_db
def test_the_reconciliation_republishes_only_what_changed_since_its_last_run(acme, bluegum, issue_key, flaky_redis,
                                                                            django_capture_on_commit_callbacks):
    changed, unchanged = (keys.parse_key(issue_key(t))[0] for t in (acme, bluegum))
    _reconciled_an_hour_ago()
    flaky_redis.armed = True
    with django_capture_on_commit_callbacks(execute=True):
        api_key_revoke(api_key=ApiKey.objects.get(key_id=changed))
    assert flaky_redis.failures == 1
    get_redis().delete(api_key_record_key(unchanged))  # would come back only through a full rebuild
    assert snapshot.reconcile() == 1
    assert _record(changed)["revoked"] is True
    assert get_redis().get(api_key_record_key(unchanged)) is None


@pytest.mark.django_db
def test_a_suspension_whose_publish_failed_heals(acme, issue_key, flaky_redis, django_capture_on_commit_callbacks):
    key_id = keys.parse_key(issue_key(acme))[0]
    _reconciled_an_hour_ago()
    flaky_redis.armed = True
    with django_capture_on_commit_callbacks(execute=True):
        tenant_set_status(tenant=acme, status=Tenant.Status.SUSPENDED, reason="Card declined")
    assert flaky_redis.failures == 1 and _record(key_id)["tenant_status"] == "active"
    snapshot.reconcile()
    assert _record(key_id)["tenant_status"] == "suspended"


@pytest.mark.django_db
def test_a_limit_change_whose_publish_failed_heals(acme, issue_key, flaky_redis, django_capture_on_commit_callbacks):
    from billing.services import tenant_quota_set

    key_id = keys.parse_key(issue_key(acme))[0]
    _reconciled_an_hour_ago()
    flaky_redis.armed = True
    with django_capture_on_commit_callbacks(execute=True):
        tenant_quota_set(tenant=acme, rpm_limit=5)
    assert flaky_redis.failures == 1 and _record(key_id)["limits"]["tenant"]["rpm"] == 20
    snapshot.reconcile()
    assert _record(key_id)["limits"]["tenant"]["rpm"] == 5


@pytest.mark.django_db
def test_the_reconciliation_runs_every_ten_seconds_under_beat_and_in_the_embedded_web_process(acme, issue_key,
                                                                                             settings):
    from portal.lifespan import redis_repair_loop

    [entry] = [e for e in settings.CELERY_BEAT_SCHEDULE.values() if e["task"] == "inference.tasks.publish_snapshots"]
    assert entry["schedule"] <= 10
    key_id = keys.parse_key(issue_key(acme))[0]
    get_redis().delete(api_key_record_key(key_id))
    stop = threading.Event()
    stop.set()  # one round of the jobs, then the loop ends
    redis_repair_loop(stop=stop, interval=0.01)
    assert _record(key_id)["key_id"] == key_id
