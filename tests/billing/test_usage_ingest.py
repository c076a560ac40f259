"""Usage ingest from the Redis stream: idempotent, never loses a well-formed event, survives crashes."""

from __future__ import annotations

import time
import uuid

import orjson
import pytest
from django.conf import settings

from billing.models import UsageEvent
from billing.services import INGEST_GROUP, usage_ingest
from core.redis import get_redis


def event(tenant, **fields) -> dict:
    return {
        "request_id": fields.pop("request_id", f"req_{uuid.uuid4().hex[:24]}"),
        "tenant": str(tenant.pk), "key_id": "abcdefghijkl", "endpoint": "chat.completions",
        "model": "mistralai/Mistral-7B-Instruct-v0.3", "backend": "sim-a", "status": 200, "error_code": "",
        "stream": False, "client_disconnected": False, "prompt_tokens": 9, "completion_tokens": 5,
        "ttft_ms": 12.5, "duration_ms": 40.0, "created": time.time(), **fields,
    }


def push(*events: dict) -> None:
    client = get_redis()
    for item in events:
        client.xadd(settings.INFERENCE_USAGE_STREAM, {"e": orjson.dumps(item)})


@pytest.mark.django_db
def test_events_land_in_the_database_and_leave_the_stream(acme):
    push(*(event(acme) for _ in range(5)))
    assert usage_ingest() == 5
    assert UsageEvent.objects.filter(tenant=acme).count() == 5
    assert get_redis().xlen(settings.INFERENCE_USAGE_STREAM) == 0


@pytest.mark.django_db
def test_a_replayed_event_is_stored_once(acme):
    duplicate = event(acme, request_id="req_same")
    push(duplicate, duplicate)
    usage_ingest()
    push(duplicate)  # e.g. a spool replayed after Redis came back
    usage_ingest()
    assert UsageEvent.objects.filter(request_id="req_same").count() == 1


@pytest.mark.django_db
def test_fields_are_kept_exactly(acme):
    push(event(acme, request_id="req_exact", stream=True, client_disconnected=True, status=499,
               error_code="client_closed_request", prompt_tokens=123, completion_tokens=45, ttft_ms=None))
    usage_ingest()
    stored = UsageEvent.objects.get(request_id="req_exact")
    assert (stored.stream, stored.client_disconnected, stored.status, stored.error_code) == (
        True, True, 499, "client_closed_request")
    assert (stored.prompt_tokens, stored.completion_tokens, stored.ttft_ms) == (123, 45, None)


@pytest.mark.django_db
def test_malformed_and_unknown_tenant_events_do_not_block_the_rest(acme):
    client = get_redis()
    client.xadd(settings.INFERENCE_USAGE_STREAM, {"e": b"{not json"})
    push(event(acme, request_id="req_good"), {**event(acme), "tenant": str(uuid.uuid4())})
    assert usage_ingest() == 3
    assert list(UsageEvent.objects.values_list("request_id", flat=True)) == ["req_good"]


@pytest.mark.django_db
def test_events_a_crashed_ingester_held_are_taken_over(acme, settings):
    settings.USAGE_INGEST_CLAIM_IDLE_MS = 0
    push(event(acme, request_id="req_held"))
    client = get_redis()
    usage_ingest()  # creates the group; nothing pending
    push(event(acme, request_id="req_orphan"))
    # Another ingester reads the entry and dies before storing it.
    client.xreadgroup(INGEST_GROUP, "dead-consumer", {settings.INFERENCE_USAGE_STREAM: ">"}, count=10)
    usage_ingest()
    assert set(UsageEvent.objects.values_list("request_id", flat=True)) == {"req_held", "req_orphan"}


@pytest.mark.django_db
def test_the_group_is_recreated_after_redis_lost_the_stream(acme):
    push(event(acme))
    usage_ingest()
    get_redis().delete(settings.INFERENCE_USAGE_STREAM)  # Redis restarted empty
    push(event(acme, request_id="req_after_restart"))
    usage_ingest()
    assert UsageEvent.objects.filter(request_id="req_after_restart").exists()


@pytest.mark.django_db
def test_an_entry_may_carry_many_events(acme):
    burst = b"\n".join(orjson.dumps(event(acme, request_id=f"req_burst_{n}")) for n in range(3))
    get_redis().xadd(settings.INFERENCE_USAGE_STREAM, {"e": burst + b"\n{broken"})
    usage_ingest()
    assert sorted(UsageEvent.objects.values_list("request_id", flat=True)) == [f"req_burst_{n}" for n in range(3)]
