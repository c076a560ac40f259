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
import math
import re
import string
from dataclasses import dataclass, field
from typing import Any

import orjson
from pydantic import ValidationError

from inference import tokens
from inference.gateway import errors
from inference.gateway.errors import GatewayError, excerpt
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

# What each endpoint forwards to vLLM: OpenAI's request fields that vLLM honours (or, for the bookkeeping ones,
# ignores harmlessly), Mistral's names that are translated below, and the vLLM sampling extras Mistral documents
# or that only shape sampling. Anything else is refused as OpenAI refuses an unknown argument: in particular
# vLLM's engine controls (`priority`, `cache_salt`, `kv_transfer_params`, `ignore_eos`, `chat_template`,
# `chat_template_kwargs`, `stream_interval`, `use_beam_search`, `prompt_logprobs`, ...) and OpenAI fields vLLM
# would silently drop (`functions`, `audio`, `prediction`, the removed `guided_*`). docs/api.md lists them.
_BOOKKEEPING = frozenset({"user", "metadata", "store", "service_tier", "safety_identifier", "prompt_cache_key"})
_SAMPLING_EXTRAS = frozenset({
    "top_k", "min_p", "repetition_penalty", "min_tokens", "stop_token_ids", "include_stop_str_in_output",
    "skip_special_tokens", "spaces_between_special_tokens", "structured_outputs",
})
_GENERATION = frozenset({
    "model", "frequency_penalty", "logit_bias", "logprobs", "max_tokens", "n", "presence_penalty",
    "response_format", "seed", "stop", "stream", "stream_options", "temperature", "top_p", "random_seed",
})
ALLOWED_FIELDS = {
    "chat.completions": _GENERATION | _SAMPLING_EXTRAS | _BOOKKEEPING | {
        "messages", "max_completion_tokens", "top_logprobs", "tools", "tool_choice", "parallel_tool_calls",
        "safe_prompt", "add_generation_prompt", "continue_final_message",
    },
    "completions": _GENERATION | _SAMPLING_EXTRAS | {"prompt", "echo", "suffix", "user"},
    "embeddings": frozenset({"model", "input", "encoding_format", "dimensions", "user", "output_dimension",
                             "output_dtype"}),
}
_MAX_USER_CHARS = 256
_INT32_MAX = 2**31 - 1
# OpenAI's range where it documents one, vLLM's otherwise; (low, high, low excluded). Every value must be finite.
_RANGES = {
    "temperature": (0.0, 2.0, False),
    "top_p": (0.0, 1.0, True),
    "presence_penalty": (-2.0, 2.0, False),
    "frequency_penalty": (-2.0, 2.0, False),
    "repetition_penalty": (0.0, 2.0, True),
    "min_p": (0.0, 1.0, False),
}


@dataclass(frozen=True, slots=True)
class Rules:
    """The operator's bounds on a request (settings, copied once per process by the gateway)."""

    max_n: int
    default_max_tokens: int  # a chat request without max_tokens generates at most this many tokens per choice

    @classmethod
    def from_settings(cls) -> Rules:
        from django.conf import settings

        return cls(max_n=settings.INFERENCE_MAX_N, default_max_tokens=settings.INFERENCE_DEFAULT_COMPLETION_RESERVE)


@dataclass(slots=True)
class Prepared:
    payload: dict[str, Any]
    changed: bool  # the body must be re-encoded before it goes upstream
    prompt_tokens_upper: int  # never below the true prompt token count (all prompts of a batch together)
    max_tokens: int  # the most tokens each choice may generate: exactly what vLLM is told (0 for embeddings)
    n: int
    stream: bool = False
    prompts: int = 1  # prompts in a batched completion, each generating ``n`` choices
    longest_upper: int | None = None  # of a batch's prompts (each must fit the context), when there are several
    max_tokens_field: str | None = None  # the client's field that set ``max_tokens``; None: the default applies
    # Fields the gateway adds to the body it sends upstream (none of them is in ``payload``).
    added: dict[str, Any] = field(default_factory=dict)


def check_fields(endpoint: str, payload: dict) -> None:
    """Refuse any field outside the endpoint's allow-list, naming it (as OpenAI does)."""
    allowed = ALLOWED_FIELDS[endpoint]
    unknown = [name for name in payload if name not in allowed]
    if unknown:
        names = ", ".join(excerpt(name) for name in sorted(unknown)[:5])
        plural = "s" if len(unknown) > 1 else ""
        raise errors.bad_request(
            f"Unrecognized request argument{plural} supplied: {names}", param=excerpt(unknown[0]),
            code="unrecognized_request_argument",
        )


def _integer(payload: dict, name: str) -> int | None:
    """A count (tokens, choices) as a JSON integer: "10", 10.0 or true are refused, as OpenAI refuses them, so
    that what is reserved and what the model is told are the same number."""
    value = payload.get(name)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise errors.bad_request(
            f"Invalid type for `{name}`: expected an integer, but got {type(value).__name__} instead.", param=name
        )
    return value


def _check_user(payload: dict) -> None:
    user = payload.get("user")
    if user is not None and (not isinstance(user, str) or len(user) > _MAX_USER_CHARS):
        raise errors.bad_request(f"`user` must be a string of at most {_MAX_USER_CHARS} characters.", param="user")


def _check_bounds(request, payload: dict, rules: Rules) -> None:
    """What the gateway refuses beyond vLLM's own rules: non-finite or out-of-range numbers, too many choices,
    an unbounded `user`, and token ids that are not token ids."""
    for name, (low, high, low_excluded) in _RANGES.items():
        value = getattr(request, name, None) if name in payload else None
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise errors.bad_request(f"Invalid type for `{name}`: expected a number.", param=name)
        if not math.isfinite(value) or value > high or value < low or (low_excluded and value == low):
            interval = f"({low:g}, {high:g}]" if low_excluded else f"[{low:g}, {high:g}]"
            raise errors.bad_request(f"`{name}` must be in {interval}, got {excerpt(value)}.", param=name)
    n = request.n if request.n is not None else 1
    if n > rules.max_n:
        raise errors.bad_request(f"`n` must be at most {rules.max_n}, got {excerpt(n)}.", param="n")
    top_k = getattr(request, "top_k", None) if "top_k" in payload else None
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or not -1 <= top_k <= _INT32_MAX):
        raise errors.bad_request("`top_k` must be -1 (no limit), 0 or a positive integer.", param="top_k")
    _check_user(payload)
    stop_ids = payload.get("stop_token_ids")
    if stop_ids is not None and not (
        isinstance(stop_ids, list)
        and all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i <= _INT32_MAX for i in stop_ids)
    ):
        raise errors.bad_request("`stop_token_ids` must be an array of token ids.", param="stop_token_ids")
    bias = payload.get("logit_bias")
    if isinstance(bias, dict) and not all(isinstance(k, str) and k.isdigit() and len(k) <= 10 for k in bias):
        raise errors.bad_request("`logit_bias` keys must be token ids.", param="logit_bias")


def _pydantic_error(exc: ValidationError) -> GatewayError:
    first = exc.errors(include_url=False)[0]
    inner = first.get("ctx", {}).get("error")
    if isinstance(inner, VLLMValidationError):
        return errors.bad_request(str(inner), param=inner.parameter)
    location = ".".join(str(part) for part in first.get("loc", ()))
    message = first.get("msg", "Invalid value")
    return errors.bad_request(f"Invalid value for `{excerpt(location)}`: {message}.", param=location or None)


def _validate(model_class, payload: dict) -> Any:
    try:
        return model_class.model_validate(payload)
    except ValidationError as exc:
        raise _pydantic_error(exc) from None
    except VLLMValidationError as exc:
        raise errors.bad_request(str(exc), param=exc.parameter) from None


def _check_sampling(request, payload: dict, rules: Rules, *, max_tokens: int | None) -> None:
    try:
        vllm.check_sampling(
            n=request.n if request.n is not None else 1, max_tokens=max_tokens, temperature=request.temperature,
            top_p=request.top_p, presence_penalty=request.presence_penalty,
            frequency_penalty=request.frequency_penalty, min_tokens=_integer(payload, "min_tokens") or 0,
        )
    except ApiError as exc:
        raise errors.bad_request(exc.message, param=exc.param) from None
    _check_bounds(request, payload, rules)


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
                    f"messages[{index}].content: only text parts are supported by this model, not "
                    f"`{excerpt(kind)}`.",
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
                f"messages[{index}].role must be one of system, developer, user, assistant, tool; "
                f"got {excerpt(repr(role))}.",
                param=f"messages.{index}.role",
            )
        content = message.get("content")
        if content is None and role != "assistant":
            raise errors.bad_request(f"messages[{index}].content is required.", param=f"messages.{index}.content")
        if role == "assistant" and not content and not message.get("tool_calls"):
            # Mistral's tokenizers refuse it (vLLM answers 400): say so before anything is reserved.
            raise errors.bad_request(
                f"messages[{index}]: an assistant message needs content or tool_calls.",
                param=f"messages.{index}.content",
            )
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


def _max_tokens_of(payload: dict) -> tuple[int | None, str | None]:
    """The client's cap on each choice's tokens, and its field (vLLM reads max_completion_tokens first)."""
    value = _integer(payload, "max_completion_tokens")
    if value is not None:
        return value, "max_completion_tokens"
    value = _integer(payload, "max_tokens")
    return value, "max_tokens" if value is not None else None


def _explicit_max_tokens(payload: dict, requested: int | None, default: int, added: dict[str, Any]) -> tuple[int, bool]:
    """The cap each choice generates up to, always told to vLLM: the client's, or ``default`` sent upstream as
    ``max_tokens``, so no request generates more than it reserved. Returns (cap, whether the payload changed)."""
    if requested is not None:
        return requested, False
    if "max_tokens" in payload or "max_completion_tokens" in payload:  # present as null: rewrite, don't duplicate
        payload.pop("max_completion_tokens", None)
        payload["max_tokens"] = default
        return default, True
    added["max_tokens"] = default
    return default, False


def _stream_flag(payload: dict, request) -> tuple[bool, bool]:
    """vLLM coerces ``stream`` as pydantic does ("true", 1, ...); send it a plain boolean so that what we relay
    and what vLLM answers agree. Returns (stream, whether the payload was rewritten)."""
    stream = bool(request.stream)
    if "stream" in payload and payload["stream"] is not stream:
        payload["stream"] = stream
        return stream, True
    return stream, False


def prepare_chat(payload: dict, rules: Rules | None = None) -> Prepared:
    rules = rules or Rules.from_settings()
    check_fields("chat.completions", payload)
    changed = _translate_mistral_fields(payload)
    size, rewritten = _prepare_messages(payload)
    request = _PlainChat(payload) if _plain_chat(payload) else _validate(vllm.ChatCompletionRequest, payload)
    _integer(payload, "n")
    added: dict[str, Any] = {}
    requested, field_name = _max_tokens_of(payload)
    max_tokens, capped = _explicit_max_tokens(payload, requested, rules.default_max_tokens, added)
    _check_sampling(request, payload, rules, max_tokens=max_tokens)
    tools_size = len(orjson.dumps(payload["tools"])) if payload.get("tools") else 0
    # Upper bound: every token covers at least one byte of text, plus each message's control tokens.
    upper = size + tools_size + 4 * len(payload["messages"]) + 2
    stream, normalised = _stream_flag(payload, request)
    return Prepared(
        payload, changed or rewritten or normalised or capped, upper, max_tokens, request.n or 1, stream,
        added=added, max_tokens_field=field_name,
    )


def _prompts_of(prompt: Any) -> list:
    """The prompts of a completion request (a batch is a list of strings or of token lists)."""
    if isinstance(prompt, str) or (isinstance(prompt, list) and prompt and isinstance(prompt[0], int)):
        return [prompt]
    return list(prompt or ())


def prepare_completion(payload: dict, rules: Rules | None = None) -> Prepared:
    rules = rules or Rules.from_settings()
    check_fields("completions", payload)
    changed = _translate_mistral_fields(payload)
    request = _validate(vllm.CompletionRequest, payload)
    prompts = _prompts_of(request.prompt)
    if not prompts or any(len(p) == 0 for p in prompts):
        raise errors.bad_request("`prompt` must not be empty, nor contain an empty prompt.", param="prompt")
    # Every prompt of a batch is generated from, and billed: reserve them all.
    uppers = [len(p.encode()) + 2 if isinstance(p, str) else len(p) for p in prompts]
    _integer(payload, "n")
    added: dict[str, Any] = {}
    # vLLM's default for completions is 16 (OpenAI's too); said explicitly all the same.
    requested = _integer(payload, "max_tokens")
    max_tokens, capped = _explicit_max_tokens(payload, requested, 16, added)
    _check_sampling(request, payload, rules, max_tokens=max_tokens)
    stream, normalised = _stream_flag(payload, request)
    return Prepared(
        payload, changed or normalised or capped, sum(uppers), max_tokens, request.n or 1, stream,
        prompts=len(prompts), longest_upper=max(uppers), added=added,
        max_tokens_field="max_tokens" if requested is not None else None,
    )


def prepare_embeddings(payload: dict, rules: Rules | None = None) -> Prepared:
    check_fields("embeddings", payload)
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
    _check_user(payload)
    value = request.input
    if value == [] or value == "":
        raise errors.bad_request("`input` must not be empty.", param="input")
    if isinstance(value, str):
        uppers = [len(value.encode()) + 2]
    elif value and isinstance(value[0], str):
        uppers = [len(v.encode()) + 2 for v in value]
    elif value and isinstance(value[0], list):
        uppers = [len(v) for v in value]
    else:
        uppers = [len(value)]
    # A batch is billed for every input, and each must fit the context: reserve them all, check the longest.
    return Prepared(payload, changed, sum(uppers), 0, 1, prompts=len(uppers), longest_upper=max(uppers))


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
    if prepared.max_tokens > max_model_len:
        name = prepared.max_tokens_field
        if name is None:  # our default, for a model with a shorter context: said and reserved as the context
            prepared.max_tokens = max_model_len
            if "max_tokens" in prepared.added:
                prepared.added["max_tokens"] = max_model_len
            else:
                prepared.payload["max_tokens"] = max_model_len
        else:
            # vLLM would quietly shorten it to fit; OpenAI refuses it. Refused, so that an absurd value (10**12,
            # or beyond int64) never reaches a reservation or a replica.
            raise errors.bad_request(
                f"{name} is too large: {prepared.max_tokens}. This model supports at most {max_model_len} "
                f"completion tokens, whereas you provided {prepared.max_tokens}.",
                param=name,
            )
    longest = prepared.longest_upper if prepared.longest_upper is not None else prepared.prompt_tokens_upper
    if longest <= max_model_len:
        return None
    if longest > _COUNT_IN_THREAD_ABOVE:
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


_SPLICE_BY_VIEW_ABOVE = 32 * 1024


def splice_fields(body: bytes, fields: dict[str, Any]) -> bytes:
    """``body`` (a JSON object none of whose keys is in ``fields``) with ``fields`` added at its start, keeping
    the client's bytes as they came. Only whitespace can come before the object's ``{``, and the object is never
    empty (it names a model), so the fields go right after it, followed by a comma. Measured against re-encoding
    the decoded body: 0.2 against 0.4 µs for a 0.7 kB chat, 0.3 against 2.1 µs for 9 kB of 40 turns, 2.5 against
    3.1 µs at 100 kB (copied once, through a memoryview, above 32 kB)."""
    if not fields:
        return body
    start = body.index(b"{") + 1
    fragment = orjson.dumps(fields)[1:-1] + b","
    if len(body) <= _SPLICE_BY_VIEW_ABOVE:
        return body[:start] + fragment + body[start:]
    view = memoryview(body)
    return b"".join((view[:start], fragment, view[start:]))


def upstream_body(body: bytes, prepared: Prepared, *, cache_salt: str) -> bytes:
    """What goes to vLLM: the client's body with the tenant's prefix-cache salt (a client's own is refused) and
    the max_tokens that was reserved when the client set none. A body we changed (or a stream, whose
    stream_options we set) is encoded again; any other keeps the client's bytes, the fields spliced in."""
    added = prepared.added
    added["cache_salt"] = cache_salt
    if prepared.stream or prepared.changed:
        prepared.payload.update(added)
        return orjson.dumps(prepared.payload)
    return splice_fields(body, added)


def reservation(prepared: Prepared, max_model_len: int) -> tuple[int, int]:
    """(prompt, completion) tokens to reserve: the most vLLM can bill for this request.

    vLLM bills every prompt once, whatever ``n`` is (the choices share its prefill), and each choice for the
    tokens it generates, which never exceed the ``max_tokens`` it was told (``Prepared.max_tokens``, sent
    explicitly) nor the room the prompt leaves in the context.
    """
    prompt = min(prepared.prompt_tokens_upper, max_model_len * prepared.prompts)
    completion = min(prepared.max_tokens, max_model_len) * prepared.n * prepared.prompts
    return prompt, completion


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
