"""Byte-exact response bodies and SSE events (protocol reference §2).

Non-stream bodies are full pydantic dumps in vLLM (every extra field present, mostly null), built
here as ordered dicts and serialised compactly by orjson (non-ASCII kept raw, like Starlette's
``ensure_ascii=False``). Stream events follow vLLM's ``exclude_unset`` rules: a field the code set
to null appears as null, a field it never set is absent. Because every content event of a stream
differs only in its index, delta and running usage, events are assembled from pre-built byte
fragments rather than serialised one by one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from .generation import ChoiceOutput

DONE = b"data: [DONE]\n\n"
_NULL_EXTRAS_MESSAGE = {"refusal": None, "annotations": None, "audio": None, "function_call": None, "reasoning": None}


def usage_full(prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "completion_tokens": completion_tokens,
        "prompt_tokens_details": None,
        "completion_tokens_details": None,
    }


def chat_completion_body(
    *,
    request_id: str,
    created: int,
    model: str,
    role: str,
    outputs: Sequence[ChoiceOutput],
    prompt_tokens: int,
    fingerprint: str,
) -> bytes:
    choices = [
        {
            "index": index,
            "message": {"role": role, "content": out.text, **_NULL_EXTRAS_MESSAGE},
            "logprobs": None,
            "finish_reason": out.finish_reason,
            "stop_reason": out.stop_reason,
            "token_ids": None,
            "routed_experts": None,
            "weight_versions": None,
        }
        for index, out in enumerate(outputs)
    ]
    return orjson.dumps(
        {
            "id": request_id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": choices,
            "service_tier": None,
            "system_fingerprint": fingerprint,
            "usage": usage_full(prompt_tokens, sum(o.num_tokens for o in outputs)),
            "prompt_logprobs": None,
            "prompt_token_ids": None,
            "prompt_text": None,
            "kv_transfer_params": None,
            "ec_transfer_params": None,
            "metrics": None,
        }
    )


def completion_body(
    *,
    request_id: str,
    created: int,
    model: str,
    outputs: Sequence[ChoiceOutput],
    prompt_tokens: int,
    fingerprint: str,
) -> bytes:
    choices = [
        {
            "index": index,
            "text": out.text,
            "logprobs": None,
            "finish_reason": out.finish_reason,
            "stop_reason": out.stop_reason,
            "token_ids": None,
            "prompt_logprobs": None,
            "prompt_token_ids": None,
            "routed_experts": None,
            "weight_versions": None,
        }
        for index, out in enumerate(outputs)
    ]
    return orjson.dumps(
        {
            "id": request_id,
            "object": "text_completion",
            "created": created,
            "model": model,
            "choices": choices,
            "service_tier": None,
            "system_fingerprint": fingerprint,
            "usage": usage_full(prompt_tokens, sum(o.num_tokens for o in outputs)),
            "kv_transfer_params": None,
            "ec_transfer_params": None,
            "metrics": None,
        }
    )


@dataclass(frozen=True, slots=True)
class StreamShape:
    """What a stream includes besides content (from ``stream_options``)."""

    include_usage: bool
    continuous_usage: bool


class ChatStreamRenderer:
    """SSE events of ``chat_completion_stream_generator`` for one request."""

    def __init__(
        self, *, request_id: str, created: int, model: str, role: str, fingerprint: str, shape: StreamShape,
        prompt_tokens: int,
    ) -> None:  # fmt: skip
        self._prefix = (
            b'data: {"id":' + orjson.dumps(request_id) + b',"object":"chat.completion.chunk","created":'
            + str(created).encode() + b',"model":' + orjson.dumps(model) + b',"choices":['
        )  # fmt: skip
        self._role = (
            b',"delta":{"role":' + orjson.dumps(role) + b',"content":""},"logprobs":null,"finish_reason":null}]'
        )
        self._fingerprint = b',"system_fingerprint":' + orjson.dumps(fingerprint)
        self._shape = shape
        self._prompt_tokens = prompt_tokens
        self._prompt = str(prompt_tokens).encode()

    def _running_usage(self, completion_tokens: int) -> bytes:
        if not self._shape.continuous_usage:
            return b""
        p = self._prompt_tokens
        return (
            b',"usage":{"prompt_tokens":' + self._prompt + b',"total_tokens":' + str(p + completion_tokens).encode()
            + b',"completion_tokens":' + str(completion_tokens).encode() + b',"completion_tokens_details":null}'
        )  # fmt: skip

    def role(self, index: int) -> bytes:
        return (
            self._prefix + b'{"index":' + str(index).encode() + self._role + self._running_usage(0)
            + b',"prompt_token_ids":null,"prompt_text":null}\n\n'
        )  # fmt: skip

    def content(self, index: int, delta_json: bytes, completion_tokens: int) -> bytes:
        return (
            self._prefix + b'{"index":' + str(index).encode() + b',"delta":{"content":' + delta_json
            + b'},"logprobs":null,"finish_reason":null,"token_ids":null}]' + self._running_usage(completion_tokens)
            + b',"kv_transfer_params":null}\n\n'
        )  # fmt: skip

    def final(self, index: int, delta_json: bytes, completion_tokens: int, output: ChoiceOutput) -> bytes:
        fingerprint = b"" if self._shape.include_usage else self._fingerprint
        return (
            self._prefix + b'{"index":' + str(index).encode() + b',"delta":{"content":' + delta_json
            + b'},"logprobs":null,"finish_reason":' + orjson.dumps(output.finish_reason)
            + b',"stop_reason":' + orjson.dumps(output.stop_reason)
            + b',"token_ids":null,"weight_versions":null}]' + self._running_usage(completion_tokens)
            + fingerprint + b',"kv_transfer_params":null}\n\n'
        )  # fmt: skip

    def usage(self, completion_tokens: int) -> bytes:
        p = self._prompt_tokens
        return (
            self._prefix + b'],"usage":{"prompt_tokens":' + self._prompt + b',"total_tokens":'
            + str(p + completion_tokens).encode() + b',"completion_tokens":' + str(completion_tokens).encode()
            + b"}" + self._fingerprint + b"}\n\n"
        )  # fmt: skip


class CompletionStreamRenderer:
    """SSE events of ``completion_stream_generator``: no role event, ``text`` deltas."""

    def __init__(
        self, *, request_id: str, created: int, model: str, fingerprint: str, shape: StreamShape,
    ) -> None:  # fmt: skip
        self._prefix = (
            b'data: {"id":' + orjson.dumps(request_id) + b',"object":"text_completion","created":'
            + str(created).encode() + b',"model":' + orjson.dumps(model) + b',"choices":['
        )  # fmt: skip
        self._fingerprint = b',"system_fingerprint":' + orjson.dumps(fingerprint)
        self._shape = shape

    def _running_usage(self, completion_tokens: int, prompt_tokens: int) -> bytes:
        if not self._shape.continuous_usage:
            return b""
        return (
            b',"usage":{"prompt_tokens":' + str(prompt_tokens).encode() + b',"total_tokens":'
            + str(prompt_tokens + completion_tokens).encode() + b',"completion_tokens":'
            + str(completion_tokens).encode() + b"}"
        )  # fmt: skip

    def content(self, index: int, delta_json: bytes, completion_tokens: int, prompt_tokens: int) -> bytes:
        return (
            self._prefix + b'{"index":' + str(index).encode() + b',"text":' + delta_json
            + b',"logprobs":null,"finish_reason":null,"stop_reason":null}]'
            + self._running_usage(completion_tokens, prompt_tokens) + b"}\n\n"
        )  # fmt: skip

    def final(
        self, index: int, delta_json: bytes, completion_tokens: int, prompt_tokens: int, output: ChoiceOutput
    ) -> bytes:
        fingerprint = b"" if self._shape.include_usage else self._fingerprint
        return (
            self._prefix + b'{"index":' + str(index).encode() + b',"text":' + delta_json
            + b',"logprobs":null,"finish_reason":' + orjson.dumps(output.finish_reason)
            + b',"stop_reason":' + orjson.dumps(output.stop_reason) + b"}]"
            + self._running_usage(completion_tokens, prompt_tokens) + fingerprint + b"}\n\n"
        )  # fmt: skip

    def usage(self, prompt_tokens: int, completion_tokens: int) -> bytes:
        return (
            self._prefix + b'],"usage":{"prompt_tokens":' + str(prompt_tokens).encode() + b',"total_tokens":'
            + str(prompt_tokens + completion_tokens).encode() + b',"completion_tokens":'
            + str(completion_tokens).encode() + b"}" + self._fingerprint + b"}\n\n"
        )  # fmt: skip


def model_list_body(*, names: Sequence[str], max_model_len: int, created: int, permission_ids: Sequence[str]) -> bytes:
    return orjson.dumps(
        {
            "object": "list",
            "data": [
                {
                    "id": name,
                    "object": "model",
                    "created": created,
                    "owned_by": "vllm",
                    "root": name,
                    "parent": None,
                    "max_model_len": max_model_len,
                    "permission": [
                        {
                            "id": f"modelperm-{permission_id}",
                            "object": "model_permission",
                            "created": created,
                            "allow_create_engine": False,
                            "allow_sampling": True,
                            "allow_logprobs": True,
                            "allow_search_indices": False,
                            "allow_view": True,
                            "allow_fine_tuning": False,
                            "organization": "*",
                            "group": None,
                            "is_blocking": False,
                        }
                    ],
                }
                for name, permission_id in zip(names, permission_ids, strict=True)
            ],
        }
    )
