"""Request preparation: Mistral-SDK translation, vLLM's rejections, and context-length checks."""

from __future__ import annotations

import asyncio

import orjson
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


# --- counts, numbers and the allow-list: refused before anything is reserved or forwarded -------------------
@pytest.mark.parametrize(
    ("payload", "param"),
    [
        (chat(max_tokens="10"), "max_tokens"),
        (chat(max_completion_tokens="5"), "max_completion_tokens"),
        (chat(max_tokens=10.0), "max_tokens"),
        (chat(max_tokens=True), "max_tokens"),
        (chat(n="2"), "n"),
        (chat(min_tokens="3"), "min_tokens"),
    ],
)
def test_token_and_choice_counts_must_be_json_integers(payload, param):
    error = rejected(payload)
    assert error.param == param and "expected an integer" in error.message


@pytest.mark.parametrize("prompt", [[], [[]], [""], ["Once", ""], [[1, 2], []]])
def test_an_empty_prompt_or_batch_is_refused(prompt):
    assert rejected({"model": MODEL, "prompt": prompt}, "completions").param == "prompt"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"temperature": 1e308}, "temperature"),
        ({"temperature": 2.5}, "temperature"),
        ({"top_p": 1e308}, "top_p"),
        ({"presence_penalty": -1e308}, "presence_penalty"),
        ({"repetition_penalty": 0}, "repetition_penalty"),
        ({"repetition_penalty": 1e308}, "repetition_penalty"),
        ({"min_p": 1.5}, "min_p"),
        ({"min_p": "low"}, "min_p"),
        ({"top_k": -2}, "top_k"),
        ({"top_k": 2**40}, "top_k"),
        ({"min_tokens": 50, "max_tokens": 10}, "min_tokens"),
        ({"min_tokens": 10**12}, "min_tokens"),  # above the default cap of 1024 sent upstream
        ({"stop_token_ids": ["2"]}, "stop_token_ids"),
        ({"logit_bias": {"hello": 5}}, "logit_bias"),
        ({"user": "u" * 257}, "user"),
    ],
)
def test_out_of_range_numbers_are_refused(fields, param):
    assert rejected(chat(**fields)).param == param
    if param not in ("min_p", "repetition_penalty", "logit_bias"):
        return
    # Fields only the chat model declares are checked on completions too.
    assert rejected({"model": MODEL, "prompt": "Hi", **fields}, "completions").param == param


def test_numbers_at_the_edges_of_their_ranges_are_accepted():
    validation.prepare_chat(chat(temperature=0, top_p=1, presence_penalty=-2, frequency_penalty=2,
                                 repetition_penalty=2, min_p=0, top_k=-1, min_tokens=16, max_tokens=16))
    validation.prepare_chat(chat(temperature=2.0, top_k=0))


@pytest.mark.parametrize("fields", [{"max_tokens": 10**12}, {"max_tokens": 2**70}, {"max_completion_tokens": 40_000}])
def test_max_tokens_above_the_context_is_refused(fields):
    prepared = validation.prepare_chat(chat(**fields))
    with pytest.raises(GatewayError) as caught:
        asyncio.run(validation.check_context_length("chat.completions", MODEL, prepared, 32768))
    assert caught.value.status == 400 and caught.value.param == next(iter(fields))
    assert "too large" in caught.value.message


def test_n_is_capped_by_the_setting():
    rules = validation.Rules(max_n=8, default_max_tokens=1024)
    assert validation.prepare_chat(chat(n=8), rules).n == 8
    with pytest.raises(GatewayError) as caught:
        validation.prepare_chat(chat(n=9), rules)
    assert caught.value.param == "n" and "at most 8" in caught.value.message
    with pytest.raises(GatewayError):
        validation.prepare_completion({"model": MODEL, "prompt": "Hi", "n": 100_000}, rules)


@pytest.mark.parametrize(
    "name",
    ["priority", "cache_salt", "ignore_eos", "chat_template", "chat_template_kwargs", "kv_transfer_params",
     "stream_interval", "use_beam_search", "prompt_logprobs", "guided_json", "functions", "request_id",
     "vllm_xargs", "made_up"],
)
def test_fields_outside_the_allow_list_are_refused_by_name(name):
    error = rejected(chat(**{name: "x"}))
    assert error.message == f"Unrecognized request argument supplied: {name}"
    assert error.param == name and error.code == "unrecognized_request_argument"


def test_several_unrecognized_fields_are_named_and_long_names_shortened():
    error = rejected(chat(priority=1, ignore_eos=True))
    assert error.message == "Unrecognized request arguments supplied: ignore_eos, priority"
    error = rejected(chat(**{"x" * 100_000: 1}))
    assert len(error.message) < 200 and len(error.param) < 100


def test_the_documented_extras_are_accepted_on_each_endpoint():
    validation.prepare_chat(chat(
        top_k=20, min_p=0.05, repetition_penalty=1.1, min_tokens=1, stop_token_ids=[2], skip_special_tokens=True,
        include_stop_str_in_output=False, spaces_between_special_tokens=True, structured_outputs={"choice": ["a"]},
        user="agent-7", metadata={"ticket": "42"}, store=False, service_tier="auto", safety_identifier="u1",
        prompt_cache_key="k", random_seed=3, safe_prompt=False, parallel_tool_calls=True,
    ))
    validation.prepare_completion({"model": MODEL, "prompt": "Hi", "echo": True, "top_k": 5, "min_tokens": 1,
                                   "user": "u", "logprobs": 1})
    validation.prepare_embeddings({"model": MODEL, "input": "x", "dimensions": 8, "encoding_format": "float",
                                   "user": "u", "output_dimension": 8})
    rejected({"model": MODEL, "prompt": "Hi", "messages": []}, "completions")  # another endpoint's field
    rejected({"model": MODEL, "input": "x", "top_k": 5}, "embeddings")


# --- reservations: never below what vLLM can bill ----------------------------------------------------------
def test_a_batch_reserves_every_prompt_and_every_choice_of_each():
    prepared = validation.prepare_completion(
        {"model": MODEL, "prompt": ["a" * 100, "b" * 200, "c" * 300], "n": 3, "max_tokens": 10}
    )
    prompt, completion = validation.reservation(prepared, 32768)
    assert prompt >= 600  # the sum, not the largest
    assert completion == 3 * 3 * 10
    tokens = validation.prepare_completion({"model": MODEL, "prompt": [[1] * 50, [2] * 70], "max_tokens": 4})
    assert validation.reservation(tokens, 32768) == (120, 8)


def test_chat_choices_share_one_prompt_and_multiply_the_completion():
    prepared = validation.prepare_chat(chat(n=4, max_tokens=25))
    prompt, completion = validation.reservation(prepared, 32768)
    assert prompt == prepared.prompt_tokens_upper and completion == 100


def test_without_max_tokens_the_reserved_cap_is_sent_upstream():
    rules = validation.Rules(max_n=8, default_max_tokens=300)
    prepared = validation.prepare_chat(chat(), rules)
    assert prepared.max_tokens == 300 and prepared.added == {"max_tokens": 300} and not prepared.changed
    assert validation.reservation(prepared, 32768)[1] == 300
    # Present as null: the payload itself is rewritten (a spliced key would be overridden by the client's null).
    nulled = validation.prepare_chat(chat(max_tokens=None, max_completion_tokens=None), rules)
    assert nulled.changed and nulled.added == {}
    assert nulled.payload["max_tokens"] == 300 and "max_completion_tokens" not in nulled.payload
    completion = validation.prepare_completion({"model": MODEL, "prompt": "Hi"}, rules)
    assert completion.added == {"max_tokens": 16}
    # A model whose whole context is shorter than the default: told, and reserved, its context.
    short = validation.prepare_chat(chat(), rules)
    asyncio.run(validation.check_context_length("chat.completions", MODEL, short, 100))
    assert short.max_tokens == 100 and short.added == {"max_tokens": 100}


def test_spliced_fields_leave_the_clients_bytes_untouched():
    body = b' \n{"model": "m",  "messages": [{"role": "user", "content": "caf\\u00e9 1e308"}]}'
    spliced = validation.splice_fields(body, {"max_tokens": 7, "cache_salt": "abc"})
    assert orjson.loads(spliced) == {**orjson.loads(body), "max_tokens": 7, "cache_salt": "abc"}
    assert spliced.endswith(body[3:])  # everything after the opening brace, byte for byte
    large = orjson.dumps({"model": "m", "pad": "x" * 100_000})
    assert orjson.loads(validation.splice_fields(large, {"cache_salt": "s"}))["cache_salt"] == "s"
    assert validation.splice_fields(body, {}) is body
