"""Failure injection, latency knobs, admission queueing and client disconnects (simulator-only control)."""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from tests.fakes.vllm import (
    RawResponse,
    SimulatorProcess,
    raw_request,
    run_simulator,
    shared_simulator,
    sse_payloads,
)

MODEL = "mistralai/Mistral-7B-Instruct-v0.3"
HELLO = [{"role": "user", "content": "Hello, how are you?"}]
INTERNAL_ERROR = b'{"error":{"message":"Internal server error","type":"InternalServerError","param":null,"code":500}}'
STREAM_ERROR_FRAME = (
    b'data: {"error": {"message": "Internal server error", "type": "InternalServerError", "param": null, "code": 500}}'
    b"\n\n"
)
DEFAULT_KNOBS = {
    "ttft_ms": 0, "tpot_ms": 0, "max_num_seqs": 256, "error_rate": 0, "abort_after_tokens": None, "down": False,
    "startup_delay_s": 0, "stamp_chunks": False, "invalid_structured_outputs": 0,
}  # fmt: skip


@pytest.fixture(scope="module")
def sim() -> SimulatorProcess:
    return shared_simulator()


@pytest.fixture(autouse=True)
def _reset_knobs(sim: SimulatorProcess) -> Iterator[None]:
    # The simulator is shared with read-only test modules, so every knob goes back to its default.
    sim.control(**DEFAULT_KNOBS)
    yield
    sim.control(**DEFAULT_KNOBS)


def chat(sim: SimulatorProcess, **body) -> RawResponse:
    return raw_request(sim.url("/v1/chat/completions"), json_body={"model": MODEL, "messages": HELLO, **body})


def metric(sim: SimulatorProcess, name: str, **labels: str) -> float:
    text = raw_request(sim.url("/metrics"), method="GET").body.decode()
    rendered = ",".join(f'{k}="{v}"' for k, v in sorted({"engine": "0", "model_name": MODEL, **labels}.items()))
    match = re.search(rf"^{re.escape(name)}\{{{re.escape(rendered)}\}} (\S+)$", text, re.MULTILINE)
    assert match, name
    return float(match.group(1))


def wait_for(predicate, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


# --- error injection --------------------------------------------------------------------------


def test_error_rate_one_fails_every_generation_request_before_any_byte(sim):
    sim.control(error_rate=1.0)
    for body in ({}, {"stream": True}):
        response = chat(sim, **body)
        assert response.status == 500
        assert response.headers["Content-Type"] == "application/json"
        assert response.body == INTERNAL_ERROR
    completion = raw_request(sim.url("/v1/completions"), json_body={"prompt": "x"})
    assert (completion.status, completion.body) == (500, INTERNAL_ERROR)
    assert raw_request(sim.url("/v1/models"), method="GET").status == 200


def test_error_rate_is_a_fraction_of_requests(sim):
    sim.control(error_rate=0.5)
    statuses = [chat(sim, max_tokens=1).status for _ in range(200)]
    assert set(statuses) == {200, 500}
    assert 60 <= statuses.count(500) <= 140


def test_abort_after_tokens_sends_the_spaced_error_frame_then_done(sim):
    sim.control(abort_after_tokens=3)
    before = metric(sim, "vllm:request_success_total", finished_reason="error")
    response = chat(sim, stream=True, seed=1)
    assert response.status == 200
    payloads = sse_payloads(response.body)
    chunks = [json.loads(p) for p in payloads[:4]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[1:])
    assert response.body.endswith(STREAM_ERROR_FRAME + b"data: [DONE]\n\n")
    assert len(payloads) == 1 + 3 + 2
    assert metric(sim, "vllm:request_success_total", finished_reason="error") == before + 1


def test_openai_sdk_raises_api_error_on_the_mid_stream_error_frame(sim):
    sim.control(abort_after_tokens=2)
    client = openai.OpenAI(base_url=sim.openai_base_url, api_key="x", max_retries=0)
    received: list = []

    def consume() -> None:
        received.extend(client.chat.completions.create(model=MODEL, messages=HELLO, stream=True))

    with pytest.raises(openai.APIError, match="Internal server error"):
        consume()
    assert len(received) == 3  # the role chunk and two content chunks arrive first


def test_abort_after_zero_tokens_still_sends_the_role_chunk(sim):
    sim.control(abort_after_tokens=0)
    payloads = sse_payloads(chat(sim, stream=True).body)
    assert len(payloads) == 3
    assert b'"role":"assistant"' in payloads[0]
    assert b"data: " + payloads[1] + b"\n\n" == STREAM_ERROR_FRAME


def test_abort_knob_fails_non_stream_requests_with_500(sim):
    sim.control(abort_after_tokens=3)
    response = chat(sim)
    assert (response.status, response.body) == (500, INTERNAL_ERROR)


def test_abort_knob_spares_replies_shorter_than_the_limit(sim):
    sim.control(abort_after_tokens=4)
    response = chat(sim, stream=True, max_tokens=4)
    assert response.status == 200
    assert STREAM_ERROR_FRAME not in response.body
    assert chat(sim, max_tokens=4).status == 200


# --- down and cold start ----------------------------------------------------------------------


def test_down_engine_fails_health_and_generation_but_not_the_frontend(sim):
    sim.control(down=True)
    assert raw_request(sim.url("/health"), method="GET").status == 503
    assert raw_request(sim.url("/ping"), method="POST").status == 503
    assert raw_request(sim.url("/health"), method="GET").body == b""
    response = chat(sim)
    assert response.status == 500
    assert response.json()["error"] == {
        "message": "EngineCore encountered an issue. See stack trace (above) for the root cause.",
        "type": "InternalServerError",
        "param": None,
        "code": 500,
    }
    assert raw_request(sim.url("/v1/embeddings"), json_body={"input": "x"}).status == 500
    assert raw_request(sim.url("/v1/models"), method="GET").status == 200
    assert raw_request(sim.url("/tokenize"), json_body={"prompt": "x"}).status == 200
    sim.control(down=False)
    assert raw_request(sim.url("/health"), method="GET").status == 200
    assert chat(sim).status == 200


def test_cold_start_answers_503_until_the_delay_has_passed(sim):
    sim.control(startup_delay_s=0.6)
    assert sim.health_status() == 503
    assert raw_request(sim.url("/ping"), method="GET").status == 503
    response = raw_request(sim.url("/v1/models"), method="GET")
    assert response.status == 503
    assert response.json()["error"]["type"] == "ServiceUnavailableError"
    assert response.json()["error"]["code"] == 503
    assert chat(sim).status == 503
    assert raw_request(sim.url("/version"), method="GET").status == 200
    assert raw_request(sim.url("/metrics"), method="GET").status == 200
    assert sim.state()["cold"] is True
    wait_for(lambda: sim.health_status() == 200, timeout=3)
    assert chat(sim).status == 200


def test_startup_delay_flag_makes_a_fresh_simulator_cold():
    started = time.monotonic()
    with run_simulator(startup_delay_s=0.5, embedding_model="") as cold:
        port_open = time.monotonic()
        assert cold.health_status() == 503
        assert raw_request(cold.url("/v1/models"), method="GET").status == 503
        cold.wait_healthy(timeout=5)
        assert time.monotonic() - port_open >= 0.4
        assert time.monotonic() - started >= 0.5
        models = raw_request(cold.url("/v1/models"), method="GET").json()
        assert [m["id"] for m in models["data"]] == [MODEL, "mistralai/Mistral-Large-Instruct-2411"]


# --- latency and admission --------------------------------------------------------------------


def test_ttft_delays_the_first_token_and_shows_in_the_histogram(sim):
    sim.control(ttft_ms=150)
    before = metric(sim, "vllm:time_to_first_token_seconds_sum")
    started = time.monotonic()
    assert chat(sim, max_tokens=2).status == 200
    assert time.monotonic() - started >= 0.15
    assert metric(sim, "vllm:time_to_first_token_seconds_sum") - before >= 0.15


def test_tpot_paces_every_further_token(sim):
    sim.control(tpot_ms=30)
    for body in ({"stream": True}, {}):
        started = time.monotonic()
        assert chat(sim, max_tokens=6, **body).status == 200
        assert 0.15 <= time.monotonic() - started < 2.0


def test_stamp_chunks_replaces_each_token_with_the_time_it_left(sim):
    sim.control(tpot_ms=20, stamp_chunks=True)
    before = time.time()
    response = chat(sim, stream=True, max_tokens=5)
    after = time.time()
    texts = [json.loads(p)["choices"][0]["delta"].get("content") for p in sse_payloads(response.body)[1:-1]]
    stamps = [float(re.fullmatch(r"@(\d+\.\d{6});", text).group(1)) for text in texts]
    assert len(stamps) == 5 and before <= stamps[0] and stamps == sorted(stamps) and stamps[-1] <= after
    assert stamps[-1] - stamps[0] >= 0.07  # stamped as each chunk left, 20 ms apart, not when the reply began


def test_requests_beyond_max_num_seqs_wait_in_the_queue(sim):
    sim.control(max_num_seqs=1, ttft_ms=250)
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = [pool.submit(chat, sim, max_tokens=1) for _ in range(3)]
        wait_for(lambda: sim.state()["models"][MODEL]["waiting"] == 2)
        state = sim.state()
        assert state["counters"]["running"] == 1
        assert state["counters"]["waiting"] == 2
        assert metric(sim, "vllm:num_requests_waiting") == 2
        assert metric(sim, "vllm:num_requests_running") == 1
        assert metric(sim, "vllm:kv_cache_usage_perc") == 1.0
        assert [f.result().status for f in futures] == [200, 200, 200]
    assert sim.state()["models"][MODEL] == {"running": 0, "waiting": 0, "kv_cache_usage_perc": 0.0}


def test_client_disconnect_mid_stream_stops_generation_and_counts_an_abort(sim):
    sim.control(tpot_ms=100)
    aborts = metric(sim, "vllm:request_success_total", finished_reason="abort")
    disconnects = sim.state()["counters"]["client_disconnects"]
    body = json.dumps({"model": MODEL, "messages": HELLO, "stream": True, "seed": 3}).encode()
    with socket.create_connection(("127.0.0.1", sim.port), timeout=5) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )
        received = b""
        while received.count(b"data: ") < 2:
            received += sock.recv(65536)
        assert sim.state()["models"][MODEL]["running"] == 1
    wait_for(lambda: sim.state()["counters"]["client_disconnects"] == disconnects + 1)
    assert sim.state()["models"][MODEL]["running"] == 0
    assert metric(sim, "vllm:request_success_total", finished_reason="abort") == aborts + 1


# --- the control plane itself -----------------------------------------------------------------


def test_control_refuses_unknown_or_mistyped_knobs_without_changing_anything(sim):
    for body in ({"nonsense": 1}, {"tpot_ms": "fast"}, {"tpot_ms": 5, "error_rate": 7}, ["not", "an", "object"]):
        response = raw_request(sim.url("/sim/control"), json_body=body)
        assert response.status == 400
        assert response.json()["error"]["type"] == "BadRequestError"
    assert sim.state()["knobs"]["tpot_ms"] == 0


def test_state_reports_knobs_and_counters(sim):
    seen = sim.state()["counters"]["requests_seen"]
    chat(sim, max_tokens=1)
    state = sim.control(tpot_ms=1.5)
    assert state["knobs"] == {**DEFAULT_KNOBS, "tpot_ms": 1.5, "max_num_seqs": 256}
    assert state["counters"]["requests_seen"] == seen + 1
    assert state["counters"]["by_endpoint"]["chat.completions"] >= 1
    assert state["healthy"] is True
