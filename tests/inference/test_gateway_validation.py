"""Request preparation: Mistral-SDK translation, vLLM's rejections, and context-length checks."""

from __future__ import annotations

import asyncio

import pytest

from inference.gateway import validation
from inference.gateway.errors import GatewayError

MODEL = "mistralai/Mistral-7B-Instruct-v0.3"


def chat(**fields) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": "Hello"}], **fields}


def rejected(payload: dict, endpoint: str = "chat.completions") -> GatewayError:
    with pytest.raises(GatewayError) as caught:
        validation.PREPARERS[endpoint](payload)
    assert caught.value.status == 400
    return caught.value


def test_plain_chat_passes_unchanged():
    prepared = validation.prepare_chat(chat(max_tokens=16))
    assert not prepared.changed
    assert prepared.max_tokens == 16 and prepared.n == 1
    assert prepared.prompt_tokens_upper >= 9  # "Hello" is 5 bytes, plus control tokens


def test_mistral_random_seed_becomes_seed():
    prepared = validation.prepare_chat(chat(random_seed=7))
    assert prepared.changed
    assert prepared.payload["seed"] == 7 and "random_seed" not in prepared.payload


def test_explicit_seed_wins_over_random_seed():
    assert validation.prepare_chat(chat(random_seed=7, seed=3)).payload["seed"] == 3


def test_tool_choice_any_becomes_required():
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    prepared = validation.prepare_chat(chat(tools=tools, tool_choice="any"))
    assert prepared.payload["tool_choice"] == "required"


def test_safe_prompt_prepends_mistrals_guardrail():
    prepared = validation.prepare_chat(chat(safe_prompt=True))
    first = prepared.payload["messages"][0]
    assert first == {"role": "system", "content": validation.MISTRAL_SAFE_PROMPT}
    assert "safe_prompt" not in prepared.payload
    with_system = validation.prepare_chat(
        {"model": MODEL, "safe_prompt": True,
         "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]}
    )
    assert with_system.payload["messages"][0]["content"].endswith("\n\nBe brief.")
    assert len(with_system.payload["messages"]) == 2


def test_safe_prompt_false_is_dropped_quietly():
    prepared = validation.prepare_chat(chat(safe_prompt=False))
    assert prepared.payload["messages"] == [{"role": "user", "content": "Hello"}]


def test_tool_call_ids_are_rewritten_to_mistrals_form_consistently():
    messages = [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_abc123xyz789", "type": "function", "function": {"name": "w", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_abc123xyz789", "content": "sunny"},
    ]
    prepared = validation.prepare_chat({"model": MODEL, "messages": messages})
    new_id = prepared.payload["messages"][1]["tool_calls"][0]["id"]
    assert prepared.changed
    assert len(new_id) == 9 and new_id.isalnum()
    assert prepared.payload["messages"][2]["tool_call_id"] == new_id


def test_mistral_shaped_tool_call_ids_are_left_alone():
    messages = [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "a1B2c3D4e", "type": "function", "function": {"name": "w", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "a1B2c3D4e", "content": "sunny"},
    ]
    assert not validation.prepare_chat({"model": MODEL, "messages": messages}).changed


def test_stream_flag_is_coerced_as_vllm_would_and_sent_as_a_boolean():
    prepared = validation.prepare_chat(chat(stream="true"))
    assert prepared.stream is True and prepared.payload["stream"] is True and prepared.changed


def test_developer_role_is_sent_as_system():
    prepared = validation.prepare_chat({"model": MODEL, "messages": [
        {"role": "developer", "content": "Be brief."}, {"role": "user", "content": "Hi"}]})
    assert prepared.payload["messages"][0]["role"] == "system"


@pytest.mark.parametrize(
    ("payload", "param"),
    [
        (chat(stream_options={"include_usage": True}), "stream_options"),
        (chat(tools=[]), "tools"),
        (chat(tool_choice="auto"), "tool_choice"),
        (chat(tools=[{"type": "function", "function": {"name": "a"}}],
              tool_choice={"type": "function", "function": {"name": "b"}}), "tool_choice"),
        (chat(top_logprobs=3), "top_logprobs"),
        (chat(response_format={"type": "json_schema"}), "response_format"),
        (chat(temperature=-1), "temperature"),
        (chat(top_p=0), "top_p"),
        (chat(n=0), "n"),
        (chat(max_tokens=0), "max_tokens"),
        (chat(presence_penalty=3), "presence_penalty"),
        (chat(max_tokens="many"), "max_tokens"),
        (chat(stream="maybe"), "stream"),
        ({"model": MODEL, "messages": []}, "messages"),
        ({"model": MODEL, "messages": "Hello"}, "messages"),
        ({"model": MODEL}, "messages"),
        ({"model": MODEL, "messages": [{"role": "robot", "content": "x"}]}, "messages.0.role"),
        ({"model": MODEL, "messages": [{"role": "user"}]}, "messages.0.content"),
        ({"model": MODEL, "messages": [{"role": "user", "content": 42}]}, "messages.0.content"),
        ({"model": MODEL, "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}]}, "messages.0.content"),
        ({"model": MODEL, "messages": [{"role": "tool", "content": "x"}]}, "messages.0.tool_call_id"),
        ({"model": MODEL, "messages": ["hello"]}, "messages.0"),
    ],
)
def test_what_vllm_would_reject_is_a_400_naming_the_field(payload, param):
    error = rejected(payload)
    assert error.param == param
    assert error.message


def test_both_continue_and_generation_prompt_is_rejected():
    error = rejected(chat(continue_final_message=True, add_generation_prompt=True))
    assert "continue_final_message" in error.message


def test_completions_need_a_prompt():
    rejected({"model": MODEL}, "completions")
    rejected({"model": MODEL, "prompt": ""}, "completions")
    prepared = validation.prepare_completion({"model": MODEL, "prompt": "Once upon a time"})
    assert prepared.max_tokens == 16  # OpenAI's and vLLM's default for completions


def test_embeddings_need_input():
    rejected({"model": "intfloat/e5-mistral-7b-instruct"}, "embeddings")
    rejected({"model": "intfloat/e5-mistral-7b-instruct", "input": []}, "embeddings")
    rejected({"model": "intfloat/e5-mistral-7b-instruct", "input": "x", "encoding_format": "hex"}, "embeddings")


def test_text_parts_are_accepted():
    prepared = validation.prepare_chat({"model": MODEL, "messages": [
        {"role": "user", "content": [{"type": "text", "text": "Hello"}, {"type": "text", "text": " there"}]}]})
    assert prepared.prompt_tokens_upper >= 11


def test_context_length_is_counted_exactly_only_when_the_estimate_cannot_decide():
    short = validation.prepare_chat(chat())
    assert asyncio.run(validation.check_context_length("chat.completions", MODEL, short, 32768)) is None

    # 40 bytes estimate above a 20-token context, but the true count (9) fits: counted, then allowed.
    borderline = validation.prepare_chat({"model": MODEL, "messages": [
        {"role": "user", "content": "Hello, how are you?"}]})
    assert borderline.prompt_tokens_upper > 20
    assert asyncio.run(validation.check_context_length("chat.completions", MODEL, borderline, 20)) == 9


def test_prompt_over_the_context_is_refused_with_vllms_message():
    long = validation.prepare_chat({"model": MODEL, "messages": [{"role": "user", "content": "word " * 5000}]})
    with pytest.raises(GatewayError) as caught:
        asyncio.run(validation.check_context_length("chat.completions", MODEL, long, 1024))
    error = caught.value
    assert error.status == 400 and error.code == "context_length_exceeded"
    assert error.message.startswith("This model's maximum context length is 1024 tokens. However, your prompt")


def test_tool_call_id_mapping_is_stable_and_alphanumeric():
    first = validation.mistral_tool_call_id("call_1")
    assert first == validation.mistral_tool_call_id("call_1")
    assert first != validation.mistral_tool_call_id("call_2")
    assert len(first) == 9 and first.isalnum()


@pytest.mark.parametrize(
    "payload",
    [
        chat(max_tokens=16, temperature=0.7, stream=True, stream_options={"include_usage": True}),
        chat(seed=3, stop=["\n"], n=2, user="agent-7", presence_penalty=0.5),
        chat(top_p=1, frequency_penalty=0),
    ],
)
def test_everyday_bodies_take_the_fast_path_and_agree_with_vllms_rules(payload):
    from inference.vllm import requests as vllm_requests

    assert validation._plain_chat(payload)
    vllm_requests.ChatCompletionRequest.model_validate(payload)  # what the fast path skips would accept it too
    validation.prepare_chat(payload)


@pytest.mark.parametrize(
    "payload",
    [
        chat(max_tokens=True), chat(stream="true"), chat(stop=[1, 2]), chat(seed=2**64),
        chat(stream_options={"include_usage": True}), chat(stream=True, stream_options={"other": 1}),
        chat(logprobs=True, top_logprobs=2), chat(tools=[{"type": "function", "function": {"name": "f"}}]),
        chat(temperature="hot"),
    ],
)
def test_anything_else_gets_the_full_rules(payload):
    assert not validation._plain_chat(payload)
