"""The dispatch without a transport: what the playground and the conversation API will call. A fresh gateway
in the test's own event loop, a sink that collects events, the real simulator, Redis and limits."""

from __future__ import annotations

import asyncio

import orjson
import pytest
from asgiref.sync import sync_to_async

from inference.gateway import dispatch
from inference.gateway.app import Gateway

pytestmark = pytest.mark.django_db(transaction=True)
MODEL = "mistralai/Mistral-7B-Instruct-v0.3"


class Collect:
    """A sink that keeps every event, and can hang up after a number of deltas."""

    def __init__(self, hang_up_after: int | None = None) -> None:
        self.seen: list = []
        self.hang_up_after = hang_up_after
        self.call = None

    async def delta(self, delta) -> None:
        self.seen.append(delta)
        deltas = sum(1 for e in self.seen if isinstance(e, dispatch.Delta))
        if self.hang_up_after is not None and deltas >= self.hang_up_after:
            self.call.cancel()

    async def events(self, events) -> None:
        self.seen.extend(events)

    def kinds(self) -> list[str]:
        return [type(e).__name__ for e in self.seen]


@pytest.fixture
async def gateway(backend):
    gw = Gateway()
    await gw.startup()
    yield gw
    await gw.shutdown()


@pytest.fixture
def one_request_a_minute(acme, django_capture_on_commit_callbacks):
    """Acme may send one request a minute (its key, issued after this, is first read with that limit)."""
    from billing.services import tenant_quota_set

    with django_capture_on_commit_callbacks(execute=True):
        tenant_quota_set(tenant=acme, rpm_limit=1)


async def _caller(gw, tenant, issue_key):
    plaintext = await sync_to_async(issue_key)(tenant)
    return await gw.auth.authenticate(f"Bearer {plaintext}".encode())


async def _run(gw, caller, payload: dict, sink: Collect, endpoint: str = "chat.completions"):
    ctx = dispatch.RequestContext(endpoint, gw.next_request_id())
    ctx.key = caller
    call = await gw.dispatcher.prepare(ctx, payload, orjson.dumps(payload))
    sink.call = call
    await gw.dispatcher.run(call, sink)
    return ctx


def _events_in_usage_stream(request_id: str) -> list[dict]:
    from django.conf import settings

    from core.redis import get_redis

    found = []
    for _id, fields in get_redis().xrange(settings.INFERENCE_USAGE_STREAM):
        for line in fields[b"e"].split(b"\n"):
            event = orjson.loads(line)
            if event["request_id"] == request_id:
                found.append(event)
    return found


async def _usage_events(gw, request_id: str) -> list[dict]:
    await gw.usage.flush()
    for _ in range(100):
        found = await sync_to_async(_events_in_usage_stream)(request_id)
        if found:
            return found
        await asyncio.sleep(0.02)  # the emitter writes its buffer every few milliseconds
    return []


async def test_a_json_answer_is_one_answer_event_and_one_usage_event(gateway, acme, issue_key):
    caller = await _caller(gateway, acme, issue_key)
    sink = Collect()
    ctx = await _run(gateway, caller, {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}],
                                       "max_tokens": 5}, sink)
    assert sink.kinds() == ["Answer"]
    body = orjson.loads(sink.seen[0].body)
    assert body["object"] == "chat.completion" and body["usage"]["completion_tokens"] == ctx.completion_tokens
    [event] = await _usage_events(gateway, ctx.request_id)
    assert (event["status"], event["tenant"], event["completion_tokens"]) == (200, str(acme.pk), 5)


async def test_a_stream_opens_relays_deltas_reports_usage_and_ends(gateway, acme, issue_key):
    caller = await _caller(gateway, acme, issue_key)
    sink = Collect()
    ctx = await _run(gateway, caller, {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}],
                                       "max_tokens": 6, "stream": True,
                                       "stream_options": {"include_usage": True}}, sink)
    kinds = sink.kinds()
    assert kinds[0] == "Opened" and kinds[-1] == "Done" and "Usage" in kinds
    deltas = [e for e in sink.seen if isinstance(e, dispatch.Delta)]
    chunks = [c for d in deltas for c in d.chunks()]
    assert chunks[0]["choices"][0]["delta"].get("role") == "assistant"  # the role comes first
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    usage = next(e for e in sink.seen if isinstance(e, dispatch.Usage))
    assert text and usage.raw is not None and usage.completion_tokens == 6 == ctx.completion_tokens


async def test_an_unknown_model_or_a_forbidden_one_is_refused_before_anything_runs(gateway, acme, issue_key):
    from inference.gateway.errors import GatewayError

    caller = await _caller(gateway, acme, issue_key)
    ctx = dispatch.RequestContext("chat.completions", gateway.next_request_id())
    ctx.key = caller
    with pytest.raises(GatewayError) as refused:
        await gateway.dispatcher.prepare(ctx, {"model": "x" * 300, "messages": []}, b"{}")
    assert refused.value.status == 404 and ctx.model == ""


async def test_a_refusal_by_the_limits_is_a_failed_event_and_runs_nothing(gateway, acme, issue_key,
                                                                         one_request_a_minute):
    caller = await _caller(gateway, acme, issue_key)
    payload = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    first, second = Collect(), Collect()
    await _run(gateway, caller, payload, first)
    ctx = await _run(gateway, caller, dict(payload), second)
    assert first.kinds() == ["Answer"]
    assert second.kinds() == ["Failed"] and second.seen[0].error.status == 429
    assert second.seen[0].started is False
    [event] = await _usage_events(gateway, ctx.request_id)
    assert event["status"] == 429 and event["prompt_tokens"] == 0 and event["completion_tokens"] == 0


async def test_a_cancelled_stream_stops_upstream_and_bills_what_ran(gateway, acme, issue_key, simulator):
    simulator.control(tpot_ms=20)
    try:
        caller = await _caller(gateway, acme, issue_key)
        sink = Collect(hang_up_after=3)
        ctx = await _run(gateway, caller, {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}],
                                           "max_tokens": 200, "stream": True}, sink)
    finally:
        simulator.control(tpot_ms=0)
    assert ctx.client_disconnected and ctx.status == 499
    assert "Done" not in sink.kinds()
    [event] = await _usage_events(gateway, ctx.request_id)
    assert event["client_disconnected"] is True
    assert event["prompt_tokens"] > 0 and 0 < event["completion_tokens"] < 200  # the prefill and what ran


class Breaks(Collect):
    """A sink whose transport fails after a few deltas (a WebSocket gone bad)."""

    async def delta(self, delta) -> None:
        await super().delta(delta)
        if sum(1 for e in self.seen if isinstance(e, dispatch.Delta)) >= 3:
            raise ConnectionResetError("the socket went away")


async def test_a_sink_that_fails_mid_stream_still_bills_what_the_replica_did(gateway, acme, issue_key, simulator):
    simulator.control(tpot_ms=20)
    try:
        caller = await _caller(gateway, acme, issue_key)
        ctx = await _run(gateway, caller, {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}],
                                           "max_tokens": 200, "stream": True}, Breaks())
    finally:
        simulator.control(tpot_ms=0)
    [event] = await _usage_events(gateway, ctx.request_id)
    assert event["status"] == 500
    assert event["prompt_tokens"] > 0 and event["completion_tokens"] >= 2  # the prefill and what was relayed


async def test_a_request_the_limits_refuse_never_asks_for_a_cold_start(gateway, acme, issue_key,
                                                                      one_request_a_minute):
    """No replica free (the model looks scaled to zero): a request is held for a warm-up only once admitted."""
    caller = await _caller(gateway, acme, issue_key)
    payload = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    assert (await _run(gateway, caller, payload, Collect())).status == 200
    warmups = []
    gateway.pool.request_warmup = lambda model, reason="request": warmups.append(model)
    for replica in gateway.pool.backends.values():
        replica.outstanding = replica.max_concurrency  # none can take another request
    refused = Collect()
    await _run(gateway, caller, dict(payload), refused)
    assert refused.kinds() == ["Failed"] and refused.seen[0].error.status == 429
    assert warmups == []


def test_one_tenants_refused_playground_leaves_anothers_checked_in_parallel(settings):
    """Every tenant's playground caller has the key id "playground": a refusal remembered for one tenant must not
    make another tenant's playground requests wait for the limits check before calling the model."""
    from types import SimpleNamespace

    from core.keys import PLAYGROUND_KEY_ID
    from inference.gateway.dispatch import Dispatcher
    from inference.gateway.errors import GatewayError

    async def refuse(_pending):
        raise GatewayError(429, "Rate limit reached", code="rate_limit_exceeded")

    limiter = SimpleNamespace(failing=False, finish=refuse)
    dispatcher = Dispatcher(pool=None, limiter=limiter, upstream=None, usage=None, access_log=None)
    dispatcher._limits_parallel = True

    def ctx(tenant):
        return SimpleNamespace(key=SimpleNamespace(tenant=tenant, key_id=PLAYGROUND_KEY_ID), admitting=object())

    refused = ctx("tenant-a")
    with pytest.raises(GatewayError):
        asyncio.run(dispatcher._finish_admission(refused))
    assert dispatcher._admit_in_parallel(ctx("tenant-a")) is False
    assert dispatcher._admit_in_parallel(ctx("tenant-b")) is True
