"""Non-streaming /v1/chat/completions against the protocol reference (§2.1, §1.3)."""

from __future__ import annotations

import json
import re
import time

import pytest

from inference.tokens import count_chat_prompt_tokens, count_text_tokens, encode_chat_prompt
from tests.fakes.vllm import RawResponse, SimulatorProcess, raw_request, shared_simulator

MODEL = "mistralai/Mistral-7B-Instruct-v0.3"
LARGE = "mistralai/Mistral-Large-Instruct-2411"
HELLO = [{"role": "user", "content": "Hello, how are you?"}]


@pytest.fixture(scope="module")
def sim() -> SimulatorProcess:
    return shared_simulator()


def chat(sim: SimulatorProcess, **body) -> RawResponse:
    body.setdefault("model", MODEL)
    body.setdefault("messages", HELLO)
    return raw_request(sim.url("/v1/chat/completions"), json_body=body, headers=body.pop("_headers", None))


def ok(sim: SimulatorProcess, **body) -> dict:
    response = chat(sim, **body)
    assert response.status == 200, response.body
    return response.json()


def test_full_dump_has_every_vllm_field_in_order(sim):
    response = chat(sim, seed=1)
    assert response.status == 200
    assert response.headers["Content-Type"] == "application/json"
    body = response.json()
    assert list(body) == [
        "id", "object", "created", "model", "choices", "service_tier", "system_fingerprint", "usage",
        "prompt_logprobs", "prompt_token_ids", "prompt_text", "kv_transfer_params", "ec_transfer_params", "metrics",
    ]  # fmt: skip
    choice = body["choices"][0]
    assert list(choice) == [
        "index", "message", "logprobs", "finish_reason", "stop_reason", "token_ids", "routed_experts",
        "weight_versions",
    ]  # fmt: skip
    assert list(choice["message"]) == [
        "role",
        "content",
        "refusal",
        "annotations",
        "audio",
        "function_call",
        "reasoning",
    ]
    assert "tool_calls" not in choice["message"]
    assert list(body["usage"]) == [
        "prompt_tokens", "total_tokens", "completion_tokens", "prompt_tokens_details", "completion_tokens_details",
    ]  # fmt: skip
    nulls = ["service_tier", "prompt_logprobs", "prompt_token_ids", "prompt_text", "kv_transfer_params",
             "ec_transfer_params", "metrics"]  # fmt: skip
    assert all(body[k] is None for k in nulls)
    assert all(choice[k] is None for k in ("logprobs", "stop_reason", "token_ids", "routed_experts", "weight_versions"))
    assert body["object"] == "chat.completion"
    assert body["model"] == MODEL
    assert choice["index"] == 0
    assert choice["message"]["role"] == "assistant"
    assert re.fullmatch(r"chatcmpl-[0-9a-f]{16}", body["id"])
    assert re.fullmatch(r"vllm-0\.33\.0-[0-9a-f]{8}", body["system_fingerprint"])
    assert abs(body["created"] - time.time()) < 10
    # Compact separators, nothing escaped that need not be: byte-identical to a compact re-dump.
    assert response.body == json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def test_usage_counts_the_hello_prompt_as_nine_tokens_and_the_reply_exactly(sim):
    body = ok(sim, seed=2)
    usage = body["usage"]
    content = body["choices"][0]["message"]["content"]
    assert usage["prompt_tokens"] == 9
    assert usage["completion_tokens"] == count_text_tokens(MODEL, content)
    assert usage["total_tokens"] == 9 + usage["completion_tokens"]
    assert usage["prompt_tokens_details"] is None and usage["completion_tokens_details"] is None


def test_reply_is_plainly_simulated_and_ends_naturally(sim):
    for seed in range(20):
        body = ok(sim, seed=seed)
        content = body["choices"][0]["message"]["content"]
        assert "simulat" in content.lower() or "no model was run" in content.lower()
        assert content.endswith(".")
        assert body["choices"][0]["finish_reason"] == "stop"
        assert body["choices"][0]["stop_reason"] is None
        assert 12 <= body["usage"]["completion_tokens"] <= 48


def test_same_seed_and_prompt_give_the_same_text_and_seeds_vary_it(sim):
    first = ok(sim, seed=42)["choices"][0]["message"]["content"]
    assert ok(sim, seed=42)["choices"][0]["message"]["content"] == first
    texts = {ok(sim, seed=seed)["choices"][0]["message"]["content"] for seed in range(10)}
    assert len(texts) >= 5


def test_without_a_seed_the_text_is_derived_from_the_prompt(sim):
    messages = [{"role": "user", "content": "What are your opening hours?"}]
    first = ok(sim, messages=messages)["choices"][0]["message"]["content"]
    assert ok(sim, messages=messages)["choices"][0]["message"]["content"] == first
    others = {
        ok(sim, messages=[{"role": "user", "content": f"Question number {i}"}])["choices"][0]["message"]["content"]
        for i in range(10)
    }
    assert len(others) >= 5


def test_max_tokens_cuts_the_reply_with_finish_reason_length(sim):
    full = ok(sim, seed=7)["choices"][0]["message"]["content"]
    body = ok(sim, seed=7, max_tokens=5)
    choice = body["choices"][0]
    assert choice["finish_reason"] == "length"
    assert choice["stop_reason"] is None
    assert body["usage"]["completion_tokens"] == 5
    assert full.startswith(choice["message"]["content"])
    assert count_text_tokens(MODEL, choice["message"]["content"]) == 5


def test_max_completion_tokens_takes_precedence_over_max_tokens(sim):
    body = ok(sim, seed=7, max_tokens=9, max_completion_tokens=3)
    assert body["usage"]["completion_tokens"] == 3


def test_stop_string_ends_the_reply_before_the_match(sim):
    full = ok(sim, seed=11)["choices"][0]["message"]["content"]
    body = ok(sim, seed=11, stop=["never-appears", "."])
    choice = body["choices"][0]
    assert choice["message"]["content"] == full[: full.index(".")]
    assert choice["finish_reason"] == "stop"
    assert choice["stop_reason"] == "."
    assert body["usage"]["completion_tokens"] == count_text_tokens(MODEL, full[: full.index(".") + 1])


def test_stop_as_a_single_string(sim):
    full = ok(sim, seed=11)["choices"][0]["message"]["content"]
    choice = ok(sim, seed=11, stop=".")["choices"][0]
    assert (choice["message"]["content"], choice["stop_reason"]) == (full[: full.index(".")], ".")


def test_n_returns_independent_choices_and_sums_usage(sim):
    body = ok(sim, seed=5, n=3)
    assert [c["index"] for c in body["choices"]] == [0, 1, 2]
    contents = [c["message"]["content"] for c in body["choices"]]
    assert body["usage"]["completion_tokens"] == sum(count_text_tokens(MODEL, c) for c in contents)
    assert body["usage"]["prompt_tokens"] == 9
    assert len(set(contents)) > 1


def test_echo_returns_the_message_byte_for_byte(sim):
    text = "/echo  héllo wörld 🎉 日本語\n\ttabs  and  spaces "
    response = chat(sim, messages=[{"role": "user", "content": text}])
    body = response.json()
    assert body["choices"][0]["message"]["content"] == text
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"]["completion_tokens"] == count_text_tokens(MODEL, text)
    assert "héllo wörld 🎉 日本語".encode() in response.body  # raw UTF-8, not \u escapes


def test_echo_uses_the_last_user_message_and_still_honours_max_tokens(sim):
    messages = [
        {"role": "user", "content": "/echo first"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "/echo second message here"},
    ]
    assert ok(sim, messages=messages)["choices"][0]["message"]["content"] == "/echo second message here"
    body = ok(sim, messages=messages, max_tokens=3)
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 3
    assert body["choices"][0]["message"]["content"] == "/echo second"


def test_model_is_optional_and_defaults_to_the_first_served_model(sim):
    response = raw_request(sim.url("/v1/chat/completions"), json_body={"messages": HELLO})
    assert response.status == 200
    assert response.json()["model"] == MODEL


def test_large_2411_counts_its_prompt_with_the_v7_tokenizer(sim):
    messages = [{"role": "system", "content": "Be brief."}, *HELLO]
    body = ok(sim, model=LARGE, messages=messages)
    assert body["model"] == LARGE
    assert body["usage"]["prompt_tokens"] == count_chat_prompt_tokens(LARGE, messages) == 14
    # v7 renders the system prompt up front as [SYSTEM_PROMPT]...; v3 folds it into the last [INST].
    assert encode_chat_prompt(LARGE, messages)[:2] != encode_chat_prompt(MODEL, messages)[:2]


def test_unknown_fields_including_legacy_guided_ones_are_ignored(sim):
    body = ok(
        sim,
        safe_prompt=True,
        random_seed=7,
        metadata={"tenant": "acme"},
        service_tier="auto",
        guided_json={"type": "object"},
        guided_choice=["a", "b"],
        some_future_field=[1, 2, 3],
    )
    assert body["choices"][0]["finish_reason"] == "stop"


def test_x_request_id_header_becomes_the_completion_id(sim):
    body = ok(sim, _headers={"X-Request-Id": "req-abc-123"})
    assert body["id"] == "chatcmpl-req-abc-123"


def test_tool_histories_with_openai_ids_are_accepted(sim):
    messages = [
        {"role": "user", "content": "weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "call_abc123xyz", "type": "function", "function": {"name": "w", "arguments": '{"c":"P"}'}}
            ],
        },
        {"role": "tool", "tool_call_id": "call_abc123xyz", "content": "sunny"},
    ]
    tools = [{"type": "function", "function": {"name": "w", "parameters": {"type": "object"}}}]
    body = ok(sim, messages=messages, tools=tools)
    assert body["usage"]["prompt_tokens"] == count_chat_prompt_tokens(MODEL, messages, tools)
