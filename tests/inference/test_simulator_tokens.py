"""inference/tokens.py: Mistral token counting shared by the simulator and the gateway."""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest

from inference import tokens
from tests.fakes.vllm import REPO_ROOT

V03 = "mistralai/Mistral-7B-Instruct-v0.3"
LARGE = "mistralai/Mistral-Large-Instruct-2411"
E5 = "intfloat/e5-mistral-7b-instruct"
HELLO = [{"role": "user", "content": "Hello, how are you?"}]


def test_importing_the_module_loads_no_tokenizer():
    code = (
        "import sys, inference.tokens as t; "
        "assert 'mistral_common' not in sys.modules, 'mistral_common imported eagerly'; "
        "assert t._tokenizers == {}"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("model", "version"),
    [
        (V03, "v3"),
        (LARGE, "v7"),
        ("mistralai/Mistral-7B-Instruct-v0.1", "v1"),
        ("mistralai/Mistral-7B-Instruct-v0.2", "v1"),
        (E5, "v1"),
        ("Mistral-7B-Instruct-v0.3", "v3"),
        ("some-org/unknown-model", "v3"),
    ],
)
def test_served_names_map_to_tokenizer_versions(model, version):
    assert tokens.tokenizer_version_for(model) == version


def test_hello_prompt_is_nine_tokens_with_v3():
    assert tokens.count_chat_prompt_tokens(V03, HELLO) == 9
    assert tokens.encode_chat_prompt(V03, HELLO) == [1, 3, 23325, 29493, 1678, 1228, 1136, 29572, 4]


def test_large_2411_renders_system_prompt_with_v7_control_tokens():
    messages = [{"role": "system", "content": "Be brief."}, *HELLO]
    text = tokens.get_tokenizer(LARGE).decode(tokens.encode_chat_prompt(LARGE, messages), special_token_policy="keep")
    assert "[SYSTEM_PROMPT]" in text
    assert tokens.count_chat_prompt_tokens(LARGE, messages) == len(tokens.encode_chat_prompt(LARGE, messages))


def test_tokenizers_are_built_once_and_shared_across_threads():
    results = []
    threads = [threading.Thread(target=lambda: results.append(tokens.get_tokenizer(V03))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({id(t) for t in results}) == 1
    assert tokens.get_tokenizer("Mistral-7B-Instruct-v0.3") is results[0]
    assert tokens.get_tokenizer(E5) is not results[0]


def test_text_parts_are_counted_exactly():
    messages = [{"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": "there"}]}]
    # <s>[INST]▁Hi<0x0A><0x0A>there[/INST]
    assert tokens.count_chat_prompt_tokens(V03, messages) == 7


def test_system_message_in_the_middle_is_counted_without_error():
    messages = [
        {"role": "user", "content": "a"},
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "b"},
    ]
    assert tokens.count_chat_prompt_tokens(V03, messages) == 10


def test_openai_style_tool_call_ids_are_counted_as_their_mistral_equivalent():
    tools = [{"type": "function", "function": {"name": "f", "description": "d", "parameters": {"type": "object"}}}]

    def conversation(call_id: str) -> list[dict]:
        return [
            {"role": "user", "content": "weather?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"id": call_id, "type": "function", "function": {"name": "f", "arguments": "{}"}}],
            },
            {"role": "tool", "tool_call_id": call_id, "content": "42"},
        ]

    with pytest.raises(Exception, match="must be a-z, A-Z, 0-9"):
        tokens.encode_chat_prompt(V03, conversation("call_abc123xyz"), tools)
    exact = tokens.count_chat_prompt_tokens(V03, conversation("a1B2c3D4e"), tools)
    assert tokens.count_chat_prompt_tokens(V03, conversation("call_abc123xyz"), tools) == exact


def test_conversation_mistral_refuses_falls_back_to_an_over_estimate():
    refused = [{"role": "assistant", "content": "Hello there, how can I help you today?"}]
    with pytest.raises(Exception):  # noqa: B017, PT011 - mistral-common's own exception type
        tokens.encode_chat_prompt(V03, refused)
    as_user = [{"role": "user", "content": "Hello there, how can I help you today?"}]
    assert tokens.count_chat_prompt_tokens(V03, refused) > tokens.count_chat_prompt_tokens(V03, as_user)


def test_text_counting_encoding_and_decoding_round_trip():
    text = "Hello, how are you? héllo 🎉"
    ids = tokens.encode_text(V03, text)
    assert tokens.count_text_tokens(V03, text) == len(ids)
    assert tokens.count_text_tokens(V03, text, bos=True) == len(ids) + 1
    assert tokens.encode_text(V03, text, bos=True)[0] == 1
    assert tokens.decode_tokens(V03, ids) == text
    assert tokens.decode_tokens(V03, [1, *ids, 2]) == text


@pytest.mark.parametrize(
    "text",
    [
        "The quick brown fox jumps over the lazy dog.",
        "0412 345 678 / account 99887766554433",
        "aZ9kQ+/x7Pq2Lm0sVb8nR3tYw==" * 5,
        "!@#$%^&*()_+-=[]{};:,./<>?|~`" * 3,
        "a\n\n\n\n\tb\t\t\tc",
        "日本語のテキストです。中文文本。한국어",
        "🎉🔥👍🏽😀" * 5,
        " " * 40,
    ],
)
def test_estimate_is_an_upper_bound_from_byte_length(text):
    estimate = tokens.estimate_tokens(text)
    assert estimate == len(text.encode()) + 1
    for model in (V03, LARGE, E5):
        assert estimate >= tokens.count_text_tokens(model, text)


def test_estimate_of_empty_text_is_zero():
    assert tokens.estimate_tokens("") == 0
