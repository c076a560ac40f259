"""The bench's load generator: its statistics add up, and a response an OpenAI client would reject is an error."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from aiohttp import web

from bench.loadgen import (
    InvalidResponse,
    LoadGenerator,
    LoadSpec,
    StreamValidator,
    percentile,
    run_load,
    validate_json_body,
)
from tests.fakes.vllm import SimulatorProcess, free_port, run_simulator

MODEL = "mistralai/Mistral-7B-Instruct-v0.3"
MESSAGES = [{"role": "user", "content": "/echo one two three four five six seven eight nine ten"}]


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorProcess]:
    with run_simulator() as simulator:
        yield simulator


def spec(url: str, **overrides) -> LoadSpec:
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 4, **overrides.pop("body", {})}
    fields = {"concurrency": 4, "duration_s": 0.8, "warmup_s": 0.2, "request_timeout_s": 10.0, **overrides}
    return LoadSpec(url=url + "/v1/chat/completions", body=body, **fields)


# --- against the simulator -------------------------------------------------------------------------
async def test_json_run_counts_requests_in_the_window(sim):
    result = await run_load(spec(sim.base_url))

    assert result.errors_total == 0 and result.error_kinds == {}
    assert result.ok > 10
    assert result.rps == pytest.approx(result.ok / result.window_s)
    assert result.sent >= result.ok  # warm-up requests are sent but not measured
    latency = result.latency_ms
    assert latency is not None and latency.count == result.ok
    assert 0 < latency.p50 <= latency.p95 <= latency.p99 <= latency.max
    assert result.ttft_ms is None  # only streams have a first token to time
    assert result.overhead_ms is None  # the simulator sends no x-wattle-overhead-ms


async def test_stream_run_times_first_content_and_checks_usage(sim):
    body = {"stream": True, "stream_options": {"include_usage": True}}
    result = await run_load(spec(sim.base_url, body=body, expect_usage=True))

    assert result.errors_total == 0, result.error_samples
    assert result.stream and result.ok > 10
    assert result.ttft_ms is not None and result.ttft_ms.count == result.ok
    assert result.ttft_ms.p50 <= result.latency_ms.p50


async def test_usage_missing_or_unrequested_counts_as_error(sim):
    missing = await run_load(spec(sim.base_url, body={"stream": True}, expect_usage=True, duration_s=0.3))
    unrequested = await run_load(
        spec(sim.base_url, body={"stream": True, "stream_options": {"include_usage": True}}, duration_s=0.3)
    )

    assert missing.ok == 0 and set(missing.error_kinds) == {"no usage"}
    assert unrequested.ok == 0 and set(unrequested.error_kinds) == {"unrequested usage"}


async def test_mid_stream_failure_counts_as_error(sim):
    sim.control(abort_after_tokens=2)
    try:
        result = await run_load(spec(sim.base_url, body={"stream": True}, duration_s=0.3))
    finally:
        sim.control(abort_after_tokens=None)

    assert result.ok == 0
    assert set(result.error_kinds) == {"stream error frame"}
    assert result.error_samples


async def test_max_requests_bounds_the_run(sim):
    result = await run_load(spec(sim.base_url, concurrency=2, max_requests=5, duration_s=5.0, warmup_s=0.0))

    assert result.sent == 5
    assert result.ok == 5


def test_only_loopback_targets():
    with pytest.raises(ValueError, match=r"127\.0\.0\.1"):
        LoadGenerator(LoadSpec(url="http://example.com/v1/chat/completions", body={}))


# --- against a server that gets things wrong -------------------------------------------------------
CONTENT = b'data: {"choices":[{"index":0,"delta":{"content":"Hi"}}]}\n\n'


@pytest.fixture
async def broken() -> AsyncIterator[str]:
    """Answers by the ``mode`` of the request's ``user`` field, each in a way a client must refuse."""

    async def handler(request: web.Request) -> web.StreamResponse:
        mode = (await request.json()).get("user")
        headers = {"x-wattle-overhead-ms": "0.250"}
        if mode == "status":
            return web.json_response({"error": {"message": "boom"}}, status=500)
        if mode == "no-content":
            return web.json_response({"choices": [{"message": {"content": ""}}], "usage": {}}, headers=headers)
        if mode == "ok-json":
            body = {"choices": [{"message": {"content": "Hi"}}], "usage": {"completion_tokens": 1}}
            return web.json_response(body, headers=headers)
        response = web.StreamResponse(headers={"content-type": "text/event-stream", **headers})
        await response.prepare(request)
        await response.write(CONTENT)
        if mode == "ok-stream":
            await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@pytest.mark.parametrize(
    ("mode", "stream", "kind"),
    [
        ("no-done", True, "no [DONE]"),
        ("status", False, "http 500"),
        ("no-content", False, "no content"),
    ],
)
async def test_bad_responses_are_errors(broken, mode, stream, kind):
    body = {"user": mode, "stream": stream}
    result = await run_load(spec(broken, body=body, concurrency=2, max_requests=6, warmup_s=0.0, duration_s=5.0))

    assert result.sent == 6
    assert result.ok == 0
    assert result.errors_total == 6
    assert result.error_kinds == {kind: 6}
    assert result.latency_ms is None


@pytest.mark.parametrize(("mode", "stream"), [("ok-json", False), ("ok-stream", True)])
async def test_overhead_header_is_collected(broken, mode, stream):
    body = {"user": mode, "stream": stream}
    result = await run_load(spec(broken, body=body, concurrency=1, max_requests=4, warmup_s=0.0, duration_s=5.0))

    assert result.ok == 4 and result.errors_total == 0
    assert result.overhead_ms is not None
    assert result.overhead_ms.count == 4 and result.overhead_ms.p50 == pytest.approx(0.25)


# --- the pieces ------------------------------------------------------------------------------------
def finish(*events: bytes, expect_usage: bool = False) -> StreamValidator:
    validator = StreamValidator(expect_usage=expect_usage)
    for event in events:
        validator.feed(event)
    validator.finish()
    return validator


def test_stream_validator_accepts_a_well_formed_stream_split_anywhere():
    whole = CONTENT + b'data: {"choices":[],"usage":{"completion_tokens":1}}\n\n' + b"data: [DONE]\n\n"
    validator = StreamValidator(expect_usage=True)
    firsts = [validator.feed(whole[i : i + 7]) for i in range(0, len(whole), 7)]
    validator.finish()

    assert firsts.count(True) == 1  # the first content event is reported once, when it completes
    assert validator.usage_seen and validator.done and validator.events == 3


@pytest.mark.parametrize(
    ("events", "kind"),
    [
        ([CONTENT, b"data: [DONE]\n\n", CONTENT], "event after [DONE]"),
        ([CONTENT, b'data: {"error": {"message": "x"}}\n\n', b"data: [DONE]\n\n"], "stream error frame"),
        ([b'data: {"choices":[{"delta":{"role":"assistant","content":""}}]}\n\n', b"data: [DONE]\n\n"], "no content"),
        ([CONTENT, b"data: [DO"], "truncated event"),
        ([b"event: x\n\n"], "malformed sse"),
    ],
)
def test_stream_validator_rejects(events, kind):
    with pytest.raises(InvalidResponse) as caught:
        finish(*events)
    assert caught.value.kind == kind


def test_json_validator_needs_content_and_usage():
    validate_json_body(b'{"choices":[{"message":{"content":"Hi"}}],"usage":{"completion_tokens":1}}')
    with pytest.raises(InvalidResponse, match="no usage"):
        validate_json_body(b'{"choices":[{"message":{"content":"Hi"}}]}')
    with pytest.raises(InvalidResponse, match="no choices"):
        validate_json_body(b'{"choices":[]}')
    with pytest.raises(InvalidResponse, match="invalid json"):
        validate_json_body(b"<html>")


def test_percentile_is_nearest_rank():
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile([7.0], 99) == 7.0


def test_paced_and_throughput_scenarios_stagger_their_clients_over_the_warm_up():
    from bench.scenarios import SCENARIOS

    for key in ("P2", "P3", "P4/64", "P4/256"):
        scenario = SCENARIOS[key]
        for timing in (scenario.timing, scenario.quick):
            # Every client is running before the measured window opens.
            assert 0 < timing.ramp_s <= timing.warmup_s, key
    assert SCENARIOS["P1"].concurrency == 1


async def test_staggered_clients_start_one_after_another(sim):
    sim.control(tpot_ms=20.0)
    try:
        # 4 clients over 0.6 s: the first requests start ~0.15 s apart, so the early window sees fewer sent.
        staggered = await run_load(spec(sim.base_url, warmup_s=0.0, duration_s=0.3, ramp_s=0.6,
                                        body={"max_tokens": 2}))
        together = await run_load(spec(sim.base_url, warmup_s=0.0, duration_s=0.3, body={"max_tokens": 2}))
    finally:
        sim.control(tpot_ms=0.0)
    assert together.sent > staggered.sent >= 2
