"""Streaming /v1/chat/completions: SSE framing and chunk bytes per the protocol reference §2.2."""

from __future__ import annotations

import json

import pytest

from inference.tokens import count_text_tokens
from tests.fakes.vllm import SimulatorProcess, raw_request, shared_simulator, sse_payloads

MODEL = "mistralai/Mistral-7B-Instruct-v0.3"
HELLO = [{"role": "user", "content": "Hello, how are you?"}]
DONE = b"[DONE]"


@pytest.fixture(scope="module")
def sim() -> SimulatorProcess:
    return shared_simulator()


def stream(sim: SimulatorProcess, **body) -> list[bytes]:
    """Payloads of a streamed chat completion; asserts the transport-level framing on the way."""
    body = {"model": MODEL, "messages": HELLO, "stream": True, **body}
    response = raw_request(sim.url("/v1/chat/completions"), json_body=body, headers=body.pop("_headers", None))
    assert response.status == 200, response.body
    assert response.headers["Content-Type"] == "text/event-stream; charset=utf-8"
    assert response.headers["Transfer-Encoding"] == "chunked"
    assert b"\nevent:" not in response.body and b"\nid:" not in response.body
    payloads = sse_payloads(response.body)
    assert payloads[-1] == DONE
    assert DONE not in payloads[:-1]
    return payloads


def non_stream(sim: SimulatorProcess, **body) -> dict:
    response = raw_request(sim.url("/v1/chat/completions"), json_body={"model": MODEL, "messages": HELLO, **body})
    assert response.status == 200, response.body
    return response.json()


def head(chunk: dict) -> bytes:
    return (
        b'{"id":' + json.dumps(chunk["id"]).encode() + b',"object":"chat.completion.chunk","created":'
        + str(chunk["created"]).encode() + b',"model":"' + MODEL.encode() + b'","choices":['
    )  # fmt: skip


def test_event_bytes_match_vllm_exactly(sim):
    payloads = stream(sim, seed=3, max_tokens=3)
    chunks = [json.loads(p) for p in payloads[:-1]]
    assert len(chunks) == 1 + 3
    first = chunks[0]
    h = head(first)
    fingerprint = chunks[-1]["system_fingerprint"]
    assert fingerprint.startswith("vllm-0.33.0-")
    deltas = [c["choices"][0]["delta"]["content"] for c in chunks[1:]]
    expected = [
        h + b'{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}],'
        b'"prompt_token_ids":null,"prompt_text":null}',
        h + b'{"index":0,"delta":{"content":' + json.dumps(deltas[0]).encode()
        + b'},"logprobs":null,"finish_reason":null,"token_ids":null}],"kv_transfer_params":null}',
        h + b'{"index":0,"delta":{"content":' + json.dumps(deltas[1]).encode()
        + b'},"logprobs":null,"finish_reason":null,"token_ids":null}],"kv_transfer_params":null}',
        h + b'{"index":0,"delta":{"content":' + json.dumps(deltas[2]).encode()
        + b'},"logprobs":null,"finish_reason":"length","stop_reason":null,"token_ids":null,"weight_versions":null}],'
        b'"system_fingerprint":"' + fingerprint.encode() + b'","kv_transfer_params":null}',
    ]  # fmt: skip
    assert payloads[:-1] == expected


def test_one_content_event_per_token_and_deltas_concatenate_to_the_non_stream_reply(sim):
    for seed in (1, 2, 3):
        reference = non_stream(sim, seed=seed)
        chunks = [json.loads(p) for p in stream(sim, seed=seed)[:-1]]
        content_chunks = chunks[1:]
        text = "".join(c["choices"][0]["delta"]["content"] for c in content_chunks)
        assert text == reference["choices"][0]["message"]["content"]
        assert len(content_chunks) == reference["usage"]["completion_tokens"] == count_text_tokens(MODEL, text)
        assert [c["choices"][0]["finish_reason"] for c in content_chunks] == [None] * (len(content_chunks) - 1) + [
            "stop"
        ]


def test_id_and_created_are_the_same_on_every_chunk_and_id_honours_x_request_id(sim):
    chunks = [json.loads(p) for p in stream(sim, _headers={"X-Request-Id": "stream-1"})[:-1]]
    assert {c["id"] for c in chunks} == {"chatcmpl-stream-1"}
    assert len({c["created"] for c in chunks}) == 1


def test_include_usage_moves_the_fingerprint_to_a_trailing_usage_chunk(sim):
    payloads = stream(sim, seed=4, stream_options={"include_usage": True})
    final, usage_payload = json.loads(payloads[-3]), payloads[-2]
    assert final["choices"][0]["finish_reason"] == "stop"
    assert "system_fingerprint" not in final
    assert list(final) == ["id", "object", "created", "model", "choices", "kv_transfer_params"]
    usage = json.loads(usage_payload)
    completion = len(payloads) - 3  # minus role chunk, usage chunk, [DONE]
    assert usage_payload == (
        head(usage)[:-1] + b'[],"usage":{"prompt_tokens":9,"total_tokens":' + str(9 + completion).encode()
        + b',"completion_tokens":' + str(completion).encode() + b'},"system_fingerprint":"'
        + usage["system_fingerprint"].encode() + b'"}'
    )  # fmt: skip


def test_without_include_usage_there_is_no_usage_anywhere(sim):
    payloads = stream(sim, seed=4)
    assert all(b'"usage"' not in p for p in payloads)
    assert b'"system_fingerprint":"vllm-0.33.0-' in payloads[-2]


def test_continuous_usage_stats_put_running_usage_on_every_chunk(sim):
    payloads = stream(sim, seed=6, stream_options={"include_usage": True, "continuous_usage_stats": True})
    chunks = [json.loads(p) for p in payloads[:-2]]
    running = [c["usage"] for c in chunks]
    assert running == [
        {"prompt_tokens": 9, "total_tokens": 9 + i, "completion_tokens": i, "completion_tokens_details": None}
        for i in range(len(chunks))
    ]
    assert b',"usage":{"prompt_tokens":9,"total_tokens":9,"completion_tokens":0,"completion_tokens_details":null},' \
        b'"prompt_token_ids":null,"prompt_text":null}' in payloads[0]  # fmt: skip
    assert list(chunks[1]) == ["id", "object", "created", "model", "choices", "usage", "kv_transfer_params"]
    trailing = json.loads(payloads[-2])
    assert trailing["choices"] == []
    assert trailing["usage"]["completion_tokens"] == len(chunks) - 1


def test_continuous_usage_without_include_usage_does_nothing(sim):
    payloads = stream(sim, seed=6, stream_options={"continuous_usage_stats": True})
    assert all(b'"usage"' not in p for p in payloads)


def test_n_choices_each_get_a_role_chunk_and_a_finish_chunk(sim):
    payloads = stream(sim, seed=8, n=2, stream_options={"include_usage": True})
    chunks = [json.loads(p) for p in payloads[:-2]]
    assert [c["choices"][0]["index"] for c in chunks[:2]] == [0, 1]
    assert all(c["choices"][0]["delta"] == {"role": "assistant", "content": ""} for c in chunks[:2])
    finishes = [c["choices"][0]["index"] for c in chunks if c["choices"][0]["finish_reason"]]
    assert sorted(finishes) == [0, 1]
    reference = non_stream(sim, seed=8, n=2)
    for index in (0, 1):
        text = "".join(
            c["choices"][0]["delta"].get("content", "") for c in chunks[2:] if c["choices"][0]["index"] == index
        )
        assert text == reference["choices"][index]["message"]["content"]
    usage = json.loads(payloads[-2])["usage"]
    assert usage["completion_tokens"] == reference["usage"]["completion_tokens"] == len(chunks) - 2


def test_stop_string_in_a_stream(sim):
    reference = non_stream(sim, seed=11, stop=["."])
    chunks = [json.loads(p) for p in stream(sim, seed=11, stop=["."])[:-1]]
    assert (
        "".join(c["choices"][0]["delta"]["content"] for c in chunks[1:])
        == (reference["choices"][0]["message"]["content"])
    )
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"][0]["stop_reason"] == "."
    assert len(chunks) - 1 == reference["usage"]["completion_tokens"]


def test_echo_streams_non_ascii_token_by_token_exactly(sim):
    text = "/echo héllo 🎉 日本語  done"
    response = raw_request(
        sim.url("/v1/chat/completions"),
        json_body={"messages": [{"role": "user", "content": text}], "stream": True},
    )
    payloads = sse_payloads(response.body)
    deltas = [json.loads(p)["choices"][0]["delta"]["content"] for p in payloads[1:-1]]
    assert "".join(deltas) == text
    assert len(deltas) == count_text_tokens(MODEL, text)
    assert "🎉".encode() in response.body and b"\\u" not in response.body
