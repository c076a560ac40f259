"""The `/v1` path end to end: a real uvicorn server, the real openai SDK, the simulator as the backend."""

from __future__ import annotations

import asyncio
import time

import httpx
import openai
import orjson
import pytest
from asgiref.sync import async_to_sync

from billing.models import UsageEvent
from tests.conftest import ingested, wait_for

MODEL = "mistralai/Mistral-7B-Instruct-v0.3"

pytestmark = pytest.mark.django_db(transaction=True)


def client_for(server, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=key, max_retries=0)


def test_chat_json_relays_and_records_one_usage_event(gateway_ready, acme, issue_key):
    key = issue_key(acme)
    reply = client_for(gateway_ready, key).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hello, how are you?"}], max_tokens=16, seed=7
    )
    assert reply.choices[0].message.content
    assert reply.usage.prompt_tokens == 9  # Mistral v3 tokenizer, as vLLM counts it
    ingested(1)
    event = UsageEvent.objects.get()
    assert event.tenant_id == acme.pk
    assert event.key_id == key.split("_")[1]
    assert (event.prompt_tokens, event.completion_tokens) == (9, reply.usage.completion_tokens)
    assert event.status == 200 and event.stream is False and event.backend == "sim-a"


def test_streaming_relays_chunks_and_bills_from_upstream_usage(gateway_ready, acme, issue_key):
    key = issue_key(acme)
    stream = client_for(gateway_ready, key).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hello, how are you?"}], max_tokens=20, stream=True
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    # The client did not ask for usage, so the usage chunk we forced upstream is stripped...
    assert all(c.usage is None for c in chunks)
    ingested(1)
    event = UsageEvent.objects.get()
    # ...but the event is billed from it.
    assert event.stream is True and event.prompt_tokens == 9 and event.completion_tokens > 0
    assert event.ttft_ms is not None and event.ttft_ms > 0


def test_streaming_with_include_usage_keeps_the_usage_chunk(gateway_ready, acme, issue_key):
    key = issue_key(acme)
    stream = client_for(gateway_ready, key).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=8, stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 8
    ingested(1)
    assert UsageEvent.objects.get().completion_tokens == 8


def test_stream_arrives_chunk_by_chunk(gateway_ready, acme, issue_key, simulator):
    """With 40 ms per token upstream, the first chunk must reach the client long before the last one."""
    key = issue_key(acme)
    httpx.post(f"{simulator.base_url}/sim/control", json={"tpot_ms": 40}).raise_for_status()
    try:
        arrivals = []
        with httpx.stream(
            "POST", f"{gateway_ready.base_url}/v1/chat/completions",
            headers={"Authorization": f"Bearer {key}"},
            json={"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 10, "stream": True},
            timeout=30,
        ) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            for line in response.iter_lines():
                if line.startswith("data: "):
                    arrivals.append(time.monotonic())
        assert len(arrivals) >= 10
        assert arrivals[-1] - arrivals[0] > 0.25  # spread over the generation, not delivered in one lump
    finally:
        httpx.post(f"{simulator.base_url}/sim/control", json={"tpot_ms": 0}).raise_for_status()


def test_prompt_reaches_the_backend_unchanged(gateway_ready, acme, issue_key):
    key = issue_key(acme)
    message = "/echo Kia ora, G'day — ünïcode & \"quotes\" stay intact"
    reply = client_for(gateway_ready, key).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": message}]
    )
    assert reply.choices[0].message.content == message


def test_response_headers_carry_request_id_and_overhead(gateway_ready, acme, issue_key):
    key = issue_key(acme)
    response = httpx.post(
        f"{gateway_ready.base_url}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
        json={"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4},
    )
    assert response.status_code == 200
    assert response.headers["x-request-id"].startswith("req_")
    assert float(response.headers["x-wattle-overhead-ms"]) >= 0
    ingested(1)
    assert UsageEvent.objects.get().request_id == response.headers["x-request-id"]


# --- errors: OpenAI-shaped, right status, never a 500 ------------------------------------------------
def _post(server, *, key: str | None, body: bytes | str | None = None, content_type="application/json", path=None):
    headers = {"content-type": content_type}
    if key is not None:
        headers["authorization"] = f"Bearer {key}"
    if body is None:
        body = orjson.dumps({"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2})
    return httpx.post(f"{server.base_url}{path or '/v1/chat/completions'}", headers=headers, content=body)


def _assert_openai_error(response, status: int, code: str | None = None):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    if code is not None:
        assert error["code"] == code
    return error


def test_no_key_is_401(gateway_ready):
    _assert_openai_error(_post(gateway_ready, key=None), 401)


def test_wrong_key_is_401_and_the_key_is_not_echoed(gateway_ready, acme, issue_key):
    key = issue_key(acme)
    forged = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")
    error = _assert_openai_error(_post(gateway_ready, key=forged), 401, "invalid_api_key")
    assert forged not in error["message"]
    _assert_openai_error(_post(gateway_ready, key="sk-not-even-ours"), 401, "invalid_api_key")
    time.sleep(0.3)
    ingested(0)  # nothing to bill to anyone


def test_malformed_json_is_400(gateway_ready, acme, issue_key):
    key = issue_key(acme)
    _assert_openai_error(_post(gateway_ready, key=key, body=b'{"model": '), 400, "invalid_json")
    _assert_openai_error(_post(gateway_ready, key=key, body=b"[1, 2]"), 400, "invalid_json")
    error = _assert_openai_error(_post(gateway_ready, key=key, body=b'{"messages": []}'), 400)
    assert error["param"] == "model"
    ingested(3)
    assert set(UsageEvent.objects.values_list("status", flat=True)) == {400}


def test_unknown_model_is_404(gateway_ready, acme, issue_key):
    key = issue_key(acme)
    body = orjson.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "Hi"}]})
    error = _assert_openai_error(_post(gateway_ready, key=key, body=body), 404, "model_not_found")
    assert error["param"] == "model"
    with pytest.raises(openai.NotFoundError):
        client_for(gateway_ready, key).chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "Hi"}]
        )


def test_wrong_content_type_is_415_and_oversized_body_is_413(gateway_ready, acme, issue_key, settings):
    key = issue_key(acme)
    _assert_openai_error(_post(gateway_ready, key=key, body=b"a=b", content_type="application/x-www-form-urlencoded"),
                         415)
    huge = b'{"model": "x", "pad": "' + b"a" * (settings.INFERENCE_MAX_BODY_BYTES + 10) + b'"}'
    _assert_openai_error(_post(gateway_ready, key=key, body=huge), 413, "request_too_large")


def test_revoked_key_is_refused_within_a_second(gateway_ready, acme, issue_key, django_capture_on_commit_callbacks):
    from tenants.models import ApiKey
    from tenants.services import api_key_revoke

    key = issue_key(acme)
    assert _post(gateway_ready, key=key).status_code == 200
    with django_capture_on_commit_callbacks(execute=True):
        api_key_revoke(api_key=ApiKey.objects.get(key_id=key.split("_")[1]))
    revoked_at = time.monotonic()
    wait_for(lambda: _post(gateway_ready, key=key).status_code == 401, timeout=1.0)
    assert time.monotonic() - revoked_at < 1.0


def test_suspended_tenant_is_402(gateway_ready, acme, issue_key, django_capture_on_commit_callbacks):
    from tenants.services import tenant_set_status

    key = issue_key(acme)
    with django_capture_on_commit_callbacks(execute=True):
        tenant_set_status(tenant=acme, status="suspended", reason="unpaid invoice")
    wait_for(lambda: _post(gateway_ready, key=key).status_code == 402, timeout=1.0)
    _assert_openai_error(_post(gateway_ready, key=key), 402, "account_suspended")


def test_key_limited_to_other_models_is_403(gateway_ready, acme, issue_key):
    key = issue_key(acme, allowed_models=["mistralai/Mistral-Large-Instruct-2411"])
    error = _assert_openai_error(_post(gateway_ready, key=key), 403, "model_not_allowed")
    assert error["param"] == "model"


def test_key_without_inference_scope_is_403(gateway_ready, acme, issue_key):
    key = issue_key(acme, scopes=["management:read"])
    _assert_openai_error(_post(gateway_ready, key=key), 403, "insufficient_scope")


def test_models_lists_only_what_the_key_may_use(gateway_ready, acme, issue_key):
    everything = client_for(gateway_ready, issue_key(acme)).models.list()
    assert {m.id for m in everything.data} >= {MODEL, "mistralai/Mistral-Large-Instruct-2411"}
    limited = client_for(gateway_ready, issue_key(acme, allowed_models=[MODEL])).models.list()
    assert [m.id for m in limited.data] == [MODEL]


@pytest.mark.parametrize("method", ["POST", "DELETE", "PUT"])
def test_models_answers_only_get(gateway_ready, acme, issue_key, method):
    response = httpx.request(method, f"{gateway_ready.base_url}/v1/models",
                             headers={"Authorization": f"Bearer {issue_key(acme)}"}, timeout=10)
    _assert_openai_error(response, 405, "method_not_allowed")


def test_key_snapshot_is_rebuilt_after_redis_loses_it(gateway_ready, acme, issue_key, settings):
    """Redis restarted empty: the data plane, which never reads the database, raises the rebuild job through
    the broker and holds the request; a worker's rebuild lets it through. In the embedded default (no broker)
    the web process's own repair loop does the worker's part."""
    import threading

    from billing.tasks import rebuild_snapshot
    from core import contract, jobs
    from core.redis import get_redis
    from core.redis import key as redis_key

    key = issue_key(acme)
    client = get_redis()
    client.delete(*client.keys(redis_key("*")))
    time.sleep(0.6)  # past the in-process cache
    answers = []
    held = threading.Thread(target=lambda: answers.append(_post(gateway_ready, key=key)))
    held.start()
    broker = settings.CELERY_BROKER_URL
    if not settings.CELERY_TASK_ALWAYS_EAGER and broker.startswith("redis"):
        import redis

        queue = redis.Redis.from_url(broker)

        def raised() -> bool:
            return any(jobs.REBUILD_SNAPSHOT.encode() in message for message in queue.lrange("celery", 0, -1))

        wait_for(raised, timeout=3)  # the job is in the broker's queue for a worker
        queue.delete("celery")
    else:
        wait_for(lambda: not client.exists(contract.snapshot_ready_key()) and held.is_alive(), timeout=3)
    rebuild_snapshot()  # what the worker (or the embedded repair loop) runs
    held.join(timeout=10)
    assert [a.status_code for a in answers] == [200]
    assert _post(gateway_ready, key=key).status_code == 200


def test_many_concurrent_requests_each_produce_exactly_one_event(gateway_ready, acme, issue_key, unthrottled):
    unthrottled(acme)  # more at once than a Trial plan admits
    key = issue_key(acme)

    async def fire(n: int):
        async with httpx.AsyncClient(timeout=30) as client:
            async def one(i):
                return await client.post(
                    f"{gateway_ready.base_url}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                    json={"model": MODEL, "messages": [{"role": "user", "content": f"n{i}"}], "max_tokens": 4,
                          "stream": i % 2 == 0},
                )
            return await asyncio.gather(*(one(i) for i in range(n)))

    responses = async_to_sync(fire)(40)
    assert [r.status_code for r in responses] == [200] * 40
    ingested(40)
    assert set(UsageEvent.objects.values_list("request_id", flat=True)) == {
        r.headers["x-request-id"] for r in responses
    }
