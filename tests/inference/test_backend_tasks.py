"""Control-plane jobs for the backend pool: publishing, probing, pre-warming."""

from __future__ import annotations

import json
import threading
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from django.core.management import call_command
from django.utils import timezone

from core import contract
from core.contract import api_key_record_key, snapshot_ready_key
from core.redis import get_redis
from inference import services, tasks
from inference.models import Backend


def _changed_an_hour_ago() -> None:
    from billing.models import Plan, TenantQuota
    from tenants.models import ApiKey, Tenant

    hour_ago = timezone.now() - timedelta(hours=1)
    for model in (ApiKey, Tenant, TenantQuota, Plan):
        model.objects.update(updated_at=hour_ago)


@pytest.mark.django_db
def test_publish_snapshots_rebuilds_unchanged_keys_only_when_redis_lost_them(acme, issue_key):
    raw = issue_key(acme)
    key_id = raw.split("_")[1]
    client = get_redis()
    _changed_an_hour_ago()
    tasks.publish_snapshots()  # the first run publishes everything and starts the reconciliation's watermark
    client.delete(api_key_record_key(key_id))
    tasks.publish_snapshots()
    assert client.get(api_key_record_key(key_id)) is None  # the snapshot was complete: left alone
    client.delete(snapshot_ready_key())
    tasks.publish_snapshots()
    assert client.get(api_key_record_key(key_id)) is not None
    assert contract.decode_backends(client.get(contract.backends_key())) == []


@pytest.mark.django_db
def test_probe_records_health_and_models(simulator):
    Backend.objects.create(name="up", base_url=simulator.base_url)
    Backend.objects.create(name="down", base_url="http://127.0.0.1:9")
    Backend.objects.create(name="off", base_url="http://127.0.0.1:9", enabled=False)
    assert tasks.probe_backends() == {"up": True, "down": False}
    up = services.backend_health("up")
    assert up["healthy"] and "mistralai/Mistral-7B-Instruct-v0.3" in up["models"]
    assert services.backend_health("down")["error"]
    assert services.backend_health("off") is None


@pytest.mark.django_db
def test_sync_backends_seeds_from_settings_idempotently(settings):
    settings.INFERENCE_BACKENDS = [{"name": "syd-1", "url": "http://10.0.0.5:8000", "region": "ap-southeast-2"}]
    call_command("sync_backends")
    call_command("sync_backends")
    backend = Backend.objects.get()
    assert (backend.name, backend.base_url, backend.region) == ("syd-1", "http://10.0.0.5:8000", "ap-southeast-2")
    assert contract.decode_backends(get_redis().get(contract.backends_key()))[0].name == "syd-1"


class _Hook(BaseHTTPRequestHandler):
    calls: list = []
    status = 202

    def do_POST(self):
        _Hook.calls.append(json.loads(self.rfile.read(int(self.headers["content-length"]))))
        self.send_response(_Hook.status)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def hook(settings):
    _Hook.calls, _Hook.status = [], 202
    server = HTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    settings.INFERENCE_WARMUP_URL = f"http://127.0.0.1:{server.server_port}/warm"
    yield _Hook
    server.shutdown()


@pytest.mark.django_db
def test_prewarm_calls_the_hook_for_each_configured_model(hook, settings):
    settings.INFERENCE_PREWARM_MODELS = []
    Backend.objects.create(name="a", base_url="http://x", served_models=["m-large", "m-small"])
    Backend.objects.create(name="b", base_url="http://y", served_models=["m-small"], enabled=False)
    assert tasks.prewarm_models() == ["m-large", "m-small"]
    assert hook.calls == [{"model": "m-large", "reason": "schedule"}, {"model": "m-small", "reason": "schedule"}]


@pytest.mark.django_db
def test_prewarm_names_refusals_and_does_nothing_without_a_hook(hook, settings):
    settings.INFERENCE_PREWARM_MODELS = ["m-large"]
    hook.status = 500
    assert tasks.prewarm_models() == []
    settings.INFERENCE_WARMUP_URL = ""
    assert tasks.prewarm_models() == []
    assert len(hook.calls) == 1


def test_prewarm_runs_before_business_hours_in_sydney(settings):
    schedule = settings.CELERY_BEAT_SCHEDULE["prewarm-models"]["schedule"]
    assert settings.CELERY_TIMEZONE == "Australia/Sydney"
    assert schedule.hour == {7} and schedule.minute == {0} and schedule.day_of_week == {1, 2, 3, 4, 5}
