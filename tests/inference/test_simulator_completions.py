"""/v1/completions, JSON and SSE, per the protocol reference §2.3."""

from __future__ import annotations

import json
import re

import pytest

from inference.tokens import count_text_tokens
from tests.fakes.vllm import RawResponse, SimulatorProcess, raw_request, shared_simulator, sse_payloads

MODEL = "mistralai/Mistral-7B-Instruct-v0.3"


@pytest.fixture(scope="module")
def sim() -> SimulatorProcess:
    return shared_simulator()


def complete(sim: SimulatorProcess, **body) -> RawResponse:
    return raw_request(sim.url("/v1/completions"), json_body={"model": MODEL, **body})


def ok(sim: SimulatorProcess, **body) -> dict:
    response = complete(sim, **body)
    assert response.status == 200, response.body
    return response.json()


def test_full_dump_shape_and_prompt_counted_with_bos(sim):
    response = complete(sim, prompt="Once upon a time", seed=1, max_tokens=100)
    body = response.json()
    assert list(body) == [
        "id", "object", "created", "model", "choices", "service_tier", "system_fingerprint", "usage",
        "kv_transfer_params", "ec_transfer_params", "metrics",
    ]  # fmt: skip
    assert re.fullmatch(r"cmpl-[0-9a-f]{16}", body["id"])
    assert body["object"] == "text_completion"
    choice = body["choices"][0]
    assert list(choice) == [
        "index", "text", "logprobs", "finish_reason", "stop_reason", "token_ids", "prompt_logprobs",
        "prompt_token_ids", "routed_experts", "weight_versions",
    ]  # fmt: skip
    assert body["usage"]["prompt_tokens"] == count_text_tokens(MODEL, "Once upon a time", bos=True) == 5
    assert body["usage"]["completion_tokens"] == count_text_tokens(MODEL, choice["text"])
    assert choice["finish_reason"] == "stop"
    assert response.body == json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def test_max_tokens_defaults_to_sixteen(sim):
    for seed in range(8):
        full = ok(sim, prompt="Tell me a story", seed=seed, max_tokens=1000)
        default = ok(sim, prompt="Tell me a story", seed=seed)
        expected = min(16, full["usage"]["completion_tokens"])
        assert default["usage"]["completion_tokens"] == expected
        cut = full["usage"]["completion_tokens"] > 16
        assert default["choices"][0]["finish_reason"] == ("length" if cut else "stop")
        assert full["choices"][0]["text"].startswith(default["choices"][0]["text"])


def test_list_of_prompts_with_n_orders_choices_prompt_major(sim):
    body = ok(sim, prompt=["first prompt", "second one"], n=2, seed=3, max_tokens=50)
    assert [c["index"] for c in body["choices"]] == [0, 1, 2, 3]
    single = ok(sim, prompt="second one", n=2, seed=3, max_tokens=50)
    assert [c["text"] for c in body["choices"][2:]] == [c["text"] for c in single["choices"]]
    assert body["usage"]["prompt_tokens"] == count_text_tokens(MODEL, "first prompt", bos=True) + count_text_tokens(
        MODEL, "second one", bos=True
    )
    assert body["usage"]["completion_tokens"] == sum(count_text_tokens(MODEL, c["text"]) for c in body["choices"])


def test_token_id_prompts_are_counted_as_given(sim):
    body = ok(sim, prompt=[1, 23325, 29493], max_tokens=4)
    assert body["usage"]["prompt_tokens"] == 3


def test_echo_prompt_is_returned_verbatim(sim):
    text = "/echo naïve café ☕ text"
    body = ok(sim, prompt=text, max_tokens=100)
    assert body["choices"][0]["text"] == text
    assert body["usage"]["completion_tokens"] == count_text_tokens(MODEL, text)


def test_stream_has_no_role_chunk_and_exact_chunk_bytes(sim):
    response = complete(sim, prompt="Hi", seed=2, max_tokens=3, stream=True)
    assert response.status == 200
    assert response.headers["Content-Type"] == "text/event-stream; charset=utf-8"
    payloads = sse_payloads(response.body)
    assert payloads[-1] == b"[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]
    assert len(chunks) == 3
    head = (
        b'{"id":"' + chunks[0]["id"].encode() + b'","object":"text_completion","created":'
        + str(chunks[0]["created"]).encode() + b',"model":"' + MODEL.encode() + b'","choices":['
    )  # fmt: skip
    texts = [c["choices"][0]["text"] for c in chunks]
    assert payloads[0] == head + b'{"index":0,"text":' + json.dumps(texts[0]).encode() + (
        b',"logprobs":null,"finish_reason":null,"stop_reason":null}]}'
    )
    assert payloads[2] == head + b'{"index":0,"text":' + json.dumps(texts[2]).encode() + (
        b',"logprobs":null,"finish_reason":"length","stop_reason":null}],"system_fingerprint":"'
        + chunks[2]["system_fingerprint"].encode()
        + b'"}'
    )
    reference = ok(sim, prompt="Hi", seed=2, max_tokens=3)
    assert "".join(texts) == reference["choices"][0]["text"]


def test_stream_usage_chunk_and_continuous_usage(sim):
    response = complete(
        sim,
        prompt="Hi",
        seed=2,
        stream=True,
        stream_options={"include_usage": True, "continuous_usage_stats": True},
    )
    payloads = sse_payloads(response.body)
    chunks = [json.loads(p) for p in payloads[:-2]]
    prompt = count_text_tokens(MODEL, "Hi", bos=True)
    assert [c["usage"] for c in chunks] == [
        {"prompt_tokens": prompt, "total_tokens": prompt + i, "completion_tokens": i} for i in range(1, len(chunks) + 1)
    ]
    assert "system_fingerprint" not in chunks[-1]
    usage = json.loads(payloads[-2])
    assert list(usage) == ["id", "object", "created", "model", "choices", "usage", "system_fingerprint"]
    assert usage["choices"] == []
    assert usage["usage"] == {
        "prompt_tokens": prompt,
        "total_tokens": prompt + len(chunks),
        "completion_tokens": len(chunks),
    }


def test_stream_of_several_prompts_interleaves_indices(sim):
    response = complete(sim, prompt=["a", "b"], seed=1, max_tokens=2, stream=True)
    chunks = [json.loads(p) for p in sse_payloads(response.body)[:-1]]
    assert [c["choices"][0]["index"] for c in chunks] == [0, 1, 0, 1]


def test_missing_prompt_is_a_validation_error(sim):
    response = complete(sim)
    assert response.status == 400
    error = response.json()["error"]
    assert (error["type"], error["param"], error["code"]) == ("Bad Request", "prompt", 400)
    assert "Either prompt or prompt_embeds must be provided and non-empty." in error["message"]


def test_out_of_vocabulary_token_prompt_is_a_400(sim):
    response = complete(sim, prompt=[1, 40000])
    assert response.status == 400
    assert response.json()["error"] == {
        "message": "Token id 40000 is out of vocabulary",
        "type": "BadRequestError",
        "param": "prompt",
        "code": 400,
    }
