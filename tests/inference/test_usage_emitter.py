"""The data plane's usage emitter: batches to the stream, spools while Redis is away, and writes again what
Redis lost before it was ingested."""

from __future__ import annotations

import time

import pytest
from asgiref.sync import sync_to_async
from django.conf import settings

from billing.models import UsageEvent
from billing.services import usage_ingest
from core.redis import get_redis, new_async_redis
from inference.gateway.usage import UsageEmitter

pytestmark = pytest.mark.django_db(transaction=True)


def event(tenant, n: int) -> dict:
    return {"request_id": f"req_emit_{n}", "tenant": str(tenant.pk), "key_id": "k", "endpoint": "chat.completions",
            "model": "m", "backend": "b", "status": 200, "prompt_tokens": 1, "completion_tokens": 2,
            "duration_ms": 1.0, "created": time.time()}


@pytest.fixture
def spool_dir(settings, tmp_path):
    settings.INFERENCE_USAGE_SPOOL_DIR = tmp_path / "spool"
    return settings.INFERENCE_USAGE_SPOOL_DIR


async def test_events_stay_unconfirmed_until_ingested(acme, spool_dir):
    client = new_async_redis()
    emitter = UsageEmitter(client)
    await emitter.confirm()  # claims the epoch
    for n in range(3):
        emitter.emit(event(acme, n))
    await emitter.flush()
    assert emitter.unconfirmed == 1  # one stream entry carries the burst of three events
    assert get_redis().xlen(settings.INFERENCE_USAGE_STREAM) == 1
    await emitter.confirm()
    assert emitter.unconfirmed == 1  # nothing acknowledged yet
    await sync_to_async(usage_ingest)()
    await emitter.confirm()
    assert emitter.unconfirmed == 0
    await client.aclose()


async def test_events_redis_lost_before_ingest_are_written_again(acme, spool_dir):
    client = new_async_redis()
    emitter = UsageEmitter(client)
    await emitter.confirm()
    for n in range(4):
        emitter.emit(event(acme, n))
    await emitter.flush()
    # Redis restarts empty: the stream, the ingest group and the epoch are gone.
    get_redis().delete(settings.INFERENCE_USAGE_STREAM, f"{settings.REDIS_KEY_PREFIX}usage:epoch")
    await emitter.confirm()
    assert emitter.pending == 1 and emitter.resent == 4  # the lost entry, all four events in it
    await emitter.flush()
    await sync_to_async(usage_ingest)()
    assert await UsageEvent.objects.filter(request_id__startswith="req_emit_").acount() == 4
    await client.aclose()


async def test_events_are_spooled_to_disk_while_redis_is_away_and_replayed_later(acme, spool_dir):
    unreachable = new_async_redis("redis://127.0.0.1:1/0")
    emitter = UsageEmitter(unreachable)
    for n in range(5):
        emitter.emit(event(acme, n))
    await emitter.stop(grace_s=0.5)  # Redis never answered: the events must go to disk, not vanish
    assert emitter.spooled == 5
    assert [p.suffix for p in spool_dir.iterdir()] == [".jsonl"]
    await unreachable.aclose()

    client = new_async_redis()
    replayer = UsageEmitter(client)  # any worker replays any spool file
    assert await replayer.replay_spool() == 5
    assert list(spool_dir.iterdir()) == []
    await sync_to_async(usage_ingest)()
    assert await UsageEvent.objects.filter(request_id__startswith="req_emit_").acount() == 5
    await client.aclose()
