"""A stream that ends before upstream's usage chunk is billed for what the replica did: its whole prompt (the
prefill ran) counted exactly, and every token it generated, for any number of choices."""

from __future__ import annotations

import httpx
import pytest

from inference import tokens
from tests.conftest import ingested

MODEL = "mistralai/Mistral-7B-Instruct-v0.3"
# Long enough that a prompt billed as zero, or as its byte-length estimate, is plainly wrong.
LONG_PROMPT = " ".join(f"Customer {i} asked about their bill, their plan and the Ballarat outage." for i in range(150))
MESSAGES = [{"role": "system", "content": "You are a contact-centre assistant."},
            {"role": "user", "content": LONG_PROMPT}]

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def key(acme, issue_key):
    return issue_key(acme)


def _generated(simulator) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(simulator.url("/metrics"), timeout=10).text
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == "vllm:generation_tokens_total")


@pytest.fixture
def slow_tokens(simulator):
    simulator.control(tpot_ms=20.0)
    yield
    simulator.control(tpot_ms=0.0)


def test_a_dropped_stream_bills_its_whole_prompt_exactly(gateway_ready, simulator, key, slow_tokens):
    before = _generated(simulator)
    received = 0
    with httpx.stream(
        "POST", f"{gateway_ready.base_url}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
        json={"model": MODEL, "messages": MESSAGES, "max_tokens": 400, "stream": True}, timeout=30,
    ) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: "):
                received += 1
                if received == 6:
                    break  # the client hangs up mid-stream

    [event] = ingested(1)
    assert event.status == 499 and event.error_code == "client_closed_request"
    prompt = tokens.count_chat_prompt_tokens(MODEL, MESSAGES)
    assert prompt > 1_000
    assert event.prompt_tokens == prompt
    # Every token the client saw is billed, and nothing the replica did not generate.
    assert received - 1 <= event.completion_tokens <= _generated(simulator) - before


def test_a_failed_stream_with_three_choices_bills_every_generated_token(gateway_ready, simulator, key):
    simulator.control(abort_after_tokens=5)  # vLLM fails the request after five engine steps: no usage chunk
    try:
        with httpx.stream(
            "POST", f"{gateway_ready.base_url}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
            json={"model": MODEL, "messages": MESSAGES, "max_tokens": 50, "n": 3, "stream": True}, timeout=30,
        ) as response:
            body = response.read()
    finally:
        simulator.control(abort_after_tokens=None)
    assert b'"error"' in body and body.endswith(b"data: [DONE]\n\n")
    [event] = ingested(1)
    assert event.status == 502
    assert event.completion_tokens == 5 * 3  # five steps of three choices; the three role events carry none
    assert event.prompt_tokens == tokens.count_chat_prompt_tokens(MODEL, MESSAGES)


def test_a_dropped_batched_completion_stream_bills_every_prompt(gateway_ready, simulator, key, slow_tokens):
    prompts = ["Summarise the call about the NBN outage.", LONG_PROMPT]
    with httpx.stream(
        "POST", f"{gateway_ready.base_url}/v1/completions", headers={"Authorization": f"Bearer {key}"},
        json={"model": MODEL, "prompt": prompts, "max_tokens": 200, "stream": True}, timeout=30,
    ) as response:
        for index, _line in enumerate(response.iter_lines()):
            if index == 4:
                break
    [event] = ingested(1)
    assert event.status == 499
    assert event.prompt_tokens == sum(tokens.count_text_tokens(MODEL, p, bos=True) for p in prompts)
