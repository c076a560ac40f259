"""Prepare a `/v1` request body before any upstream call.

1. Translate what the Mistral SDK sends into what vLLM understands (``random_seed``, ``tool_choice: "any"``,
   ``safe_prompt``) and rewrite tool-call ids into the 9-character form Mistral's tokenizers require.
2. Reject, with an OpenAI-shaped 400, exactly what vLLM would reject (its own request rules, shared with the
   simulator through ``inference.vllm``), plus malformed messages that vLLM would fail to render.
3. Estimate the prompt's tokens cheaply (an upper bound from byte length) and count exactly with Mistral's
   tokenizer only when the estimate says the prompt might not fit the model's context.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import string
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import ValidationError

from inference import tokens
from inference.gateway import errors
from inference.gateway.errors import GatewayError
from inference.vllm import requests as vllm
from inference.vllm.errors import ApiError, VLLMValidationError

# Mistral's documented guardrail prompt, which La Plateforme prepends for ``safe_prompt: true``.
MISTRAL_SAFE_PROMPT = (
    "Always assist with care, respect, and truth. Respond with utmost utility yet securely. Avoid harmful, "
    "unethical, prejudiced, or negative content. Ensure replies promote fairness and positivity."
)
_ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})
_MISTRAL_TOOL_ID = re.compile(r"[A-Za-z0-9]{9}")
_ID_ALPHABET = string.ascii_letters + string.digits
# Above this many estimated tokens, exact counting runs in a thread so it never stalls the event loop.
_COUNT_IN_THREAD_ABOVE = 2_000


@dataclass(slots=True)
class Prepared:
    payload: dict[str, Any]
    changed: bool  # the body must be re-encoded before it goes upstream
    prompt_tokens_upper: int  # never below the true prompt token count
    max_tokens: int | None
    n: int
    stream: bool = False


def _pydantic_error(exc: ValidationError) -> GatewayError:
    first = exc.errors(include_url=False)[0]
    inner = first.get("ctx", {}).get("error")
    if isinstance(inner, VLLMValidationError):
        return errors.bad_request(str(inner), param=inner.parameter)
    location = ".".join(str(part) for part in first.get("loc", ()))
    message = first.get("msg", "Invalid value")
    return errors.bad_request(f"Invalid value for `{location}`: {message}.", param=location or None)


def _validate(model_class, payload: dict) -> Any:
    try:
        return model_class.model_validate(payload)
    except ValidationError as exc:
        raise _pydantic_error(exc) from None
    except VLLMValidationError as exc:
        raise errors.bad_request(str(exc), param=exc.parameter) from None


def _check_sampling(request, *, max_tokens: int | None) -> None:
    try:
        vllm.check_sampling(
            n=request.n if request.n is not None else 1, max_tokens=max_tokens, temperature=request.temperature,
            top_p=request.top_p, presence_penalty=request.presence_penalty,
            frequency_penalty=request.frequency_penalty,
        )
    except ApiError as exc:
        raise errors.bad_request(exc.message, param=exc.param) from None


_NUMBER = (int, float)
# The fields of an everyday chat request and the exact types they arrive as. A body with only these, so typed,
# passes vLLM's request model by construction, so the model (a few microseconds) is skipped for it; anything
# else — another field, a value pydantic would coerce or refuse — goes through the full vLLM rules.
_PLAIN_CHAT_FIELDS = {
    "model": str, "messages": list, "max_tokens": int, "max_completion_tokens": int, "temperature": _NUMBER,
    "top_p": _NUMBER, "stream": bool, "seed": int, "n": int, "user": str, "presence_penalty": _NUMBER,
    "frequency_penalty": _NUMBER, "stop": (str, list), "stream_options": dict,
}
_INT64 = 2**63


def _plain_chat(payload: dict) -> bool:
    for name, value in payload.items():
        kind = _PLAIN_CHAT_FIELDS.get(name)
        if kind is None:
            return False
        if value is None:
            if name in ("messages", "stream_options"):
                return False
            continue
        if (isinstance(value, bool) and kind is not bool) or not isinstance(value, kind):
            return False
    stop = payload.get("stop")
    if isinstance(stop, list) and not all(isinstance(item, str) for item in stop):
        return False
    seed = payload.get("seed")
    if seed is not None and not -_INT64 <= seed < _INT64:
        return False
    options = payload.get("stream_options")
    if options is None:
        return True
    return (
        payload.get("stream") is True
        and set(options) <= {"include_usage", "continuous_usage_stats"}
        and all(isinstance(v, bool) for v in options.values())
    )


class _PlainChat:
    """The few attributes of vLLM's request model that the checks below read, for a plain body."""

    __slots__ = ("frequency_penalty", "n", "presence_penalty", "stream", "temperature", "top_p")

    def __init__(self, payload: dict) -> None:
        self.n = payload.get("n", 1)
        self.temperature = payload.get("temperature")
        self.top_p = payload.get("top_p")
        self.presence_penalty = payload.get("presence_penalty")
        self.frequency_penalty = payload.get("frequency_penalty")
        self.stream = payload.get("stream") or False


def mistral_tool_call_id(original: str) -> str:
    """A stable 9-character alphanumeric id for any tool-call id (Mistral's tokenizers accept no other)."""
    number = int.from_bytes(hashlib.sha256(original.encode()).digest()[:8], "big")
    chars = []
    for _ in range(9):
        number, rest = divmod(number, len(_ID_ALPHABET))
        chars.append(_ID_ALPHABET[rest])
    return "".join(chars)


def _text_of(content: Any, index: int) -> str:
    """The text of a message's content, rejecting shapes a text-only Mistral model cannot take."""
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise errors.bad_request(
                    f"messages[{index}].content: only text parts are supported by this model, not `{kind}`.",
                    param=f"messages.{index}.content",
                )
            parts.append(part["text"])
        return "".join(parts)
    raise errors.bad_request(
        f"messages[{index}].content must be a string or a list of text parts.", param=f"messages.{index}.content"
    )


def _prepare_messages(payload: dict) -> tuple[int, bool]:
    """Validate messages in place; returns (bytes of text, whether anything was rewritten)."""
    messages = payload.get("messages")
    if not isinstance(messages, list) or not messages:
        raise errors.bad_request("`messages` must be a non-empty array of message objects.", param="messages")
    size = 0
    changed = False
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise errors.bad_request(f"messages[{index}] must be an object.", param=f"messages.{index}")
        role = message.get("role")
        if role not in _ROLES:
            raise errors.bad_request(
                f"messages[{index}].role must be one of system, developer, user, assistant, tool; got {role!r}.",
                param=f"messages.{index}.role",
            )
        content = message.get("content")
        if content is None and role != "assistant":
            raise errors.bad_request(f"messages[{index}].content is required.", param=f"messages.{index}.content")
        size += len(_text_of(content, index).encode())
        tool_calls = message.get("tool_calls")
        if tool_calls is not None:
            if role != "assistant" or not isinstance(tool_calls, list):
                raise errors.bad_request(
                    f"messages[{index}].tool_calls must be an array on an assistant message.",
                    param=f"messages.{index}.tool_calls",
                )
            for call in tool_calls:
                if not isinstance(call, dict) or not isinstance(call.get("function"), dict):
                    raise errors.bad_request(
                        f"messages[{index}].tool_calls entries need a `function` object.",
                        param=f"messages.{index}.tool_calls",
                    )
                call_id = call.get("id")
                if isinstance(call_id, str) and not _MISTRAL_TOOL_ID.fullmatch(call_id):
                    call["id"] = mistral_tool_call_id(call_id)
                    changed = True
                size += len(str(call["function"].get("arguments", "")).encode()) + len(
                    str(call["function"].get("name", "")).encode()
                )
        if role == "tool":
            call_id = message.get("tool_call_id")
            if not isinstance(call_id, str) or not call_id:
                raise errors.bad_request(
                    f"messages[{index}].tool_call_id is required on a tool message.",
                    param=f"messages.{index}.tool_call_id",
                )
            if not _MISTRAL_TOOL_ID.fullmatch(call_id):
                message["tool_call_id"] = mistral_tool_call_id(call_id)
                changed = True
        if role == "developer":
            # Mistral's templates know no developer role; OpenAI treats it as the system prompt.
            message["role"] = "system"
            changed = True
    return size, changed


def _translate_mistral_fields(payload: dict) -> bool:
    changed = False
    if "random_seed" in payload:
        seed = payload.pop("random_seed")
        if seed is not None and payload.get("seed") is None:
            payload["seed"] = seed
        changed = True
    if payload.get("tool_choice") == "any":
        payload["tool_choice"] = "required"
        changed = True
    if "safe_prompt" in payload:
        if payload.pop("safe_prompt") is True and isinstance(payload.get("messages"), list):
            messages = payload["messages"]
            first = messages[0] if messages else None
            if isinstance(first, dict) and first.get("role") == "system" and isinstance(first.get("content"), str):
                messages[0] = {**first, "content": f"{MISTRAL_SAFE_PROMPT}\n\n{first['content']}"}
            else:
                messages.insert(0, {"role": "system", "content": MISTRAL_SAFE_PROMPT})
        changed = True
    return changed


def _max_tokens_of(payload: dict) -> int | None:
    value = payload.get("max_completion_tokens")
    if value is None:
        value = payload.get("max_tokens")
    return value


def _stream_flag(payload: dict, request) -> tuple[bool, bool]:
    """vLLM coerces ``stream`` as pydantic does ("true", 1, ...); send it a plain boolean so that what we relay
    and what vLLM answers agree. Returns (stream, whether the payload was rewritten)."""
    stream = bool(request.stream)
    if "stream" in payload and payload["stream"] is not stream:
        payload["stream"] = stream
        return stream, True
    return stream, False


def prepare_chat(payload: dict) -> Prepared:
    changed = _translate_mistral_fields(payload)
    size, rewritten = _prepare_messages(payload)
    request = _PlainChat(payload) if _plain_chat(payload) else _validate(vllm.ChatCompletionRequest, payload)
    max_tokens = _max_tokens_of(payload)
    _check_sampling(request, max_tokens=max_tokens)
    tools_size = len(orjson.dumps(payload["tools"])) if payload.get("tools") else 0
    # Upper bound: every token covers at least one byte of text, plus each message's control tokens.
    upper = size + tools_size + 4 * len(payload["messages"]) + 2
    stream, normalised = _stream_flag(payload, request)
    return Prepared(payload, changed or rewritten or normalised, upper, max_tokens, request.n or 1, stream)


def prepare_completion(payload: dict) -> Prepared:
    changed = _translate_mistral_fields(payload)
    request = _validate(vllm.CompletionRequest, payload)
    prompt = payload.get("prompt")
    if isinstance(prompt, str):
        upper = len(prompt.encode()) + 2
    elif isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
        upper = max(len(p.encode()) for p in prompt) + 2
    elif isinstance(prompt, list) and prompt and isinstance(prompt[0], list):
        upper = max(len(p) for p in prompt)
    else:
        upper = len(prompt or ())
    max_tokens = payload.get("max_tokens")
    _check_sampling(request, max_tokens=max_tokens)
    stream, normalised = _stream_flag(payload, request)
    return Prepared(
        payload, changed or normalised, upper, max_tokens if max_tokens is not None else 16, request.n or 1, stream
    )


def prepare_embeddings(payload: dict) -> Prepared:
    changed = False
    if "output_dimension" in payload:  # Mistral's name for OpenAI's `dimensions`
        dimension = payload.pop("output_dimension")
        if dimension is not None and payload.get("dimensions") is None:
            payload["dimensions"] = dimension
        changed = True
    if "output_dtype" in payload:
        if payload.pop("output_dtype") not in (None, "float"):
            raise errors.bad_request("Only `float` embeddings are available.", param="output_dtype")
        changed = True
    request = _validate(vllm.EmbeddingRequest, payload)
    value = request.input
    if value == [] or value == "":
        raise errors.bad_request("`input` must not be empty.", param="input")
    if isinstance(value, str):
        upper = len(value.encode()) + 2
    elif value and isinstance(value[0], str):
        upper = sum(len(v.encode()) + 2 for v in value)
    elif value and isinstance(value[0], list):
        upper = sum(len(v) for v in value)
    else:
        upper = len(value)
    return Prepared(payload, changed, upper, 0, 1)


PREPARERS = {"chat.completions": prepare_chat, "completions": prepare_completion, "embeddings": prepare_embeddings}


def _exact_prompt_tokens(endpoint: str, model: str, payload: dict) -> int:
    if endpoint == "chat.completions":
        return tokens.count_chat_prompt_tokens(model, payload["messages"], payload.get("tools"))
    prompt = payload.get("prompt") if endpoint == "completions" else payload.get("input")
    if isinstance(prompt, str):
        return tokens.count_text_tokens(model, prompt, bos=True)
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
        return max(tokens.count_text_tokens(model, p, bos=True) for p in prompt)
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], list):
        return max(len(p) for p in prompt)
    return len(prompt or ())


async def check_context_length(endpoint: str, model: str, prepared: Prepared, max_model_len: int) -> int | None:
    """Refuse a prompt longer than the model's context, counting exactly only when the estimate can't decide.

    Returns the exact prompt token count when it had to count, else None.
    """
    if prepared.prompt_tokens_upper <= max_model_len:
        return None
    if prepared.prompt_tokens_upper > _COUNT_IN_THREAD_ABOVE:
        exact = await asyncio.to_thread(_exact_prompt_tokens, endpoint, model, prepared.payload)
    else:
        exact = _exact_prompt_tokens(endpoint, model, prepared.payload)
    if exact > max_model_len:
        raise GatewayError(
            400,
            f"This model's maximum context length is {max_model_len} tokens. However, your prompt contains "
            f"{exact} input tokens, which exceeds this limit even without any output tokens. Please reduce the "
            "length of the input prompt.",
            param="messages" if endpoint == "chat.completions" else "prompt",
            code="context_length_exceeded",
        )
    return exact


def _billed_prompt_tokens(endpoint: str, model: str, payload: dict) -> int:
    if endpoint == "chat.completions":
        return tokens.count_chat_prompt_tokens(model, payload["messages"], payload.get("tools"))
    prompt = payload.get("prompt") if endpoint == "completions" else payload.get("input")
    bos = payload.get("add_special_tokens", True) is not False
    if isinstance(prompt, str) or (isinstance(prompt, list) and prompt and isinstance(prompt[0], int)):
        prompt = [prompt]
    # vLLM bills every prompt of a batch once, whatever ``n`` is.
    return sum(tokens.count_text_tokens(model, p, bos=bos) if isinstance(p, str) else len(p) for p in prompt or ())


async def billed_prompt_tokens(endpoint: str, model: str, payload: dict) -> int:
    """The prompt tokens vLLM counts for this request (as sent upstream), with the model's own tokenizer; in a
    thread, since a long prompt takes milliseconds. For a stream that ended before upstream said."""
    return await asyncio.to_thread(_billed_prompt_tokens, endpoint, model, payload)
