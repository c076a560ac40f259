"""Mistral token counting: the project's single source of truth.

vLLM runs Mistral models with ``--tokenizer-mode mistral``, which renders chat prompts with
mistral-common's ``encode_chat_completion``. Counting with the same library and tokenizer version
therefore reproduces vLLM's ``usage.prompt_tokens`` for text-only chats without a network call
(mistral-common bundles the tokenizer files in its wheel).

Importing this module is cheap: mistral-common itself (about 0.7 s to import) and each tokenizer
(30-120 ms to build) are loaded on first use, once per process, and shared between threads.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import orjson

if TYPE_CHECKING:
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

__all__ = [
    "TokenizerVersion",
    "count_chat_prompt_tokens",
    "count_text_tokens",
    "decode_tokens",
    "encode_chat_prompt",
    "encode_text",
    "estimate_tokens",
    "get_tokenizer",
    "tokenizer_version_for",
]

logger = logging.getLogger(__name__)

TokenizerVersion = Literal["v1", "v3", "v7"]

# Checked in order against the lower-cased served name, so more specific names come first.
# Mistral-Large-2407 and other unknown names use v3, the most common modern SentencePiece vocabulary.
_MODEL_TOKENIZERS: tuple[tuple[str, TokenizerVersion], ...] = (
    ("mistral-large-instruct-2411", "v7"),
    ("mistral-7b-instruct-v0.3", "v3"),
    ("mistral-7b-instruct-v0.2", "v1"),
    ("mistral-7b-instruct-v0.1", "v1"),
    ("e5-mistral", "v1"),
)
_DEFAULT_VERSION: TokenizerVersion = "v3"

_tokenizers: dict[TokenizerVersion, MistralTokenizer] = {}
_tokenizers_lock = threading.Lock()

# Per message, the control tokens a Mistral template can add around a message body
# ([INST] [/INST], [SYSTEM_PROMPT] [/SYSTEM_PROMPT], [TOOL_CALLS], [TOOL_RESULTS] [/TOOL_RESULTS], EOS).
_FALLBACK_OVERHEAD_PER_MESSAGE = 4


def tokenizer_version_for(model: str) -> TokenizerVersion:
    """The mistral-common tokenizer version that a served model name uses."""
    name = model.lower()
    for needle, version in _MODEL_TOKENIZERS:
        if needle in name:
            return version
    return _DEFAULT_VERSION


def get_tokenizer(model: str) -> MistralTokenizer:
    """The (cached, process-wide) mistral-common tokenizer for a served model name."""
    version = tokenizer_version_for(model)
    tokenizer = _tokenizers.get(version)
    if tokenizer is None:
        with _tokenizers_lock:
            tokenizer = _tokenizers.get(version)
            if tokenizer is None:
                tokenizer = _build_tokenizer(version)
                _tokenizers[version] = tokenizer
    return tokenizer


def _build_tokenizer(version: TokenizerVersion) -> MistralTokenizer:
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

    builders = {"v1": MistralTokenizer.v1, "v3": MistralTokenizer.v3, "v7": MistralTokenizer.v7}
    return builders[version]()


def encode_text(model: str, text: str, *, bos: bool = False, eos: bool = False) -> list[int]:
    """Token ids of raw text (no chat template), as the model's SentencePiece vocabulary splits it."""
    return get_tokenizer(model).instruct_tokenizer.tokenizer.encode(text, bos=bos, eos=eos)


def count_text_tokens(model: str, text: str, *, bos: bool = False) -> int:
    """Number of tokens in raw text. Pass ``bos=True`` for a completions prompt (vLLM adds BOS)."""
    return len(encode_text(model, text, bos=bos))


def decode_tokens(model: str, token_ids: Sequence[int]) -> str:
    """Text for token ids; special tokens such as BOS/EOS are dropped, as vLLM does by default."""
    return get_tokenizer(model).decode(list(token_ids))


def encode_chat_prompt(
    model: str,
    messages: Sequence[Mapping[str, Any]],
    tools: Sequence[Mapping[str, Any]] | None = None,
) -> list[int]:
    """Token ids of the rendered chat prompt, exactly as vLLM's Mistral path builds it.

    Raises whatever mistral-common raises for input it refuses (see ``count_chat_prompt_tokens``
    for a variant that never raises).
    """
    from mistral_common.protocol.instruct.request import ChatCompletionRequest

    request = ChatCompletionRequest.from_openai(
        messages=[dict(m) for m in messages],
        tools=[dict(t) for t in tools] if tools else None,
    )
    return get_tokenizer(model).encode_chat_completion(request).tokens


def count_chat_prompt_tokens(
    model: str,
    messages: Sequence[Mapping[str, Any]],
    tools: Sequence[Mapping[str, Any]] | None = None,
) -> int:
    """Prompt tokens for an OpenAI-style chat request; never raises for odd-but-valid input.

    Tried in order:

    1. the exact count (``ChatCompletionRequest.from_openai`` + ``encode_chat_completion``);
    2. the exact count after rewriting tool-call ids to the 9-character alphanumeric form Mistral
       tokenizers insist on (OpenAI ids such as ``call_abc123xyz`` are rejected, and a gateway
       rewrites them before forwarding anyway), mapping each id consistently so that assistant
       ``tool_calls`` and ``tool`` messages still match;
    3. a conservative estimate when mistral-common still refuses the conversation (for example one
       that starts with an assistant message, or ends without a user/tool turn): every message is
       serialised to JSON and counted with the real tokenizer, plus a few tokens per message for
       control tokens, plus the tool definitions and BOS. JSON keys and quoting make this larger than
       the rendered prompt, so admission control that uses it errs towards over-counting.
    """
    attempts = [messages]
    rewritten = _with_mistral_tool_call_ids(messages)
    if rewritten is not None:
        attempts.append(rewritten)
    for attempt in attempts:
        try:
            return len(encode_chat_prompt(model, attempt, tools))
        except Exception as exc:  # mistral-common raises many exception types for input it refuses
            reason = exc
    logger.debug("estimating prompt tokens for %s: mistral-common refused the chat (%s)", model, reason)
    return _estimate_chat_prompt_tokens(model, messages, tools)


def _with_mistral_tool_call_ids(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]] | None:
    """Messages with tool-call ids rewritten to ``[a-zA-Z0-9]{9}``, or None when nothing changes."""
    mapping: dict[str, str] = {}

    def short(call_id: Any) -> Any:
        if not isinstance(call_id, str) or (len(call_id) == 9 and call_id.isascii() and call_id.isalnum()):
            return call_id
        if call_id not in mapping:
            mapping[call_id] = hashlib.sha256(call_id.encode()).hexdigest()[:9]
        return mapping[call_id]

    out: list[dict[str, Any]] = []
    for message in messages:
        if not isinstance(message, Mapping):
            return None
        copy = dict(message)
        calls = copy.get("tool_calls")
        if isinstance(calls, list):
            copy["tool_calls"] = [
                {**call, "id": short(call.get("id"))} if isinstance(call, Mapping) else call for call in calls
            ]
        if "tool_call_id" in copy:
            copy["tool_call_id"] = short(copy["tool_call_id"])
        out.append(copy)
    return out if mapping else None


def _estimate_chat_prompt_tokens(
    model: str,
    messages: Iterable[Any],
    tools: Sequence[Mapping[str, Any]] | None,
) -> int:
    total = 1  # BOS
    for message in messages:
        total += _count_json_tokens(model, message) + _FALLBACK_OVERHEAD_PER_MESSAGE
    if tools:
        total += _count_json_tokens(model, list(tools)) + _FALLBACK_OVERHEAD_PER_MESSAGE
    return total


def _count_json_tokens(model: str, value: Any) -> int:
    try:
        text = orjson.dumps(value, default=str).decode()
    except TypeError:
        text = str(value)
    return count_text_tokens(model, text)


def estimate_tokens(text: str) -> int:
    """A tokenizer-free upper bound on the token count of raw text, for hot paths.

    Every SentencePiece token covers at least one UTF-8 byte of the input, except the single dummy
    prefix space the tokenizer adds in front, so ``len(utf8) + 1`` can never be exceeded, whatever
    the text (random identifiers and digit strings really do approach one token per byte). English
    prose runs at about four bytes per token, so reserve with this and settle with the exact count
    (``usage`` from vLLM, or ``count_text_tokens``) afterwards. BOS and chat control tokens are not
    included.
    """
    if not text:
        return 0
    return len(text.encode("utf-8", "surrogatepass")) + 1
