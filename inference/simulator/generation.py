"""Deterministic, plainly simulated output text, split into real tokens.

Every reply is a ``TokenizedText``: the text plus, for each token the model's real tokenizer produces
for it, the character offset where that token's text ends. A stream sends one delta per token
(``text[ends[i-1]:ends[i]]``), the usage counts the tokens, and the non-stream content is the same
string, so all three agree by construction.

Replies are drawn from a bank built once per tokenizer version, so the zero-delay path never touches
the tokenizer. Only ``/echo`` replies are tokenized per request, behind a small LRU cache.
"""

from __future__ import annotations

import codecs
import hashlib
import random
import re
import threading
from bisect import bisect_left
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property

import orjson

from inference import tokens

ECHO_PREFIX = "/echo "
BANK_SIZE = 256
MIN_REPLY_TOKENS = 12
MAX_REPLY_TOKENS = 48
# Replies are composed with the most common vocabulary; other versions count them exactly afterwards.
_BANK_REFERENCE_MODEL = "mistralai/Mistral-7B-Instruct-v0.3"

_OPENERS = (
    "This is a simulated reply.",
    "Simulated response, no model was run.",
    "This text comes from the vLLM simulator.",
    "A simulated assistant is answering.",
)
_SUBJECTS = ("The simulator", "This test server", "The stand-in engine", "A fake model", "The test double")
_VERBS = ("returns", "streams", "writes", "sends", "repeats", "builds")
_OBJECTS = (
    "deterministic words",
    "placeholder text",
    "a predictable answer",
    "one token at a time",
    "the same reply for the same seed",
    "plain sentences",
)
_TAILS = (".", ".", " for testing.", " without a GPU.", " on purpose.", " so tests stay fast.", " instead of vLLM.")


@dataclass(frozen=True)
class TokenizedText:
    """Text with the end offset (in characters) of each token that encodes it."""

    text: str
    ends: tuple[int, ...]

    @property
    def num_tokens(self) -> int:
        return len(self.ends)

    @cached_property
    def deltas(self) -> tuple[str, ...]:
        text, out, start = self.text, [], 0
        for end in self.ends:
            out.append(text[start:end])
            start = end
        return tuple(out)

    @cached_property
    def delta_json(self) -> tuple[bytes, ...]:
        return tuple(orjson.dumps(d) for d in self.deltas)


@dataclass(frozen=True, slots=True)
class ChoiceOutput:
    """What one sequence produced: its per-token deltas and how it finished."""

    deltas: Sequence[str]
    delta_json: Sequence[bytes]
    text: str
    finish_reason: str
    stop_reason: str | None

    @property
    def num_tokens(self) -> int:
        return len(self.deltas)


_BYTE_PIECE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


def tokenize_with_offsets(model: str, text: str) -> TokenizedText:
    """Tokenize ``text`` and map every token to the characters it completes.

    Tokens that end in the middle of a multi-byte character (SentencePiece byte fallback for emoji,
    say) complete no character, so their delta is empty, exactly as vLLM's incremental detokenizer
    reports them; the character appears with the token that finishes it.
    """
    if not text:
        return TokenizedText(text, ())
    spm = tokens.get_tokenizer(model).instruct_tokenizer.tokenizer
    ids = spm.encode(text, bos=False, eos=False)
    pieces: list[bytes] = []
    for token_id in ids:
        piece = spm.id_to_piece(token_id)
        match = _BYTE_PIECE.match(piece)
        pieces.append(bytes([int(match.group(1), 16)]) if match else piece.replace("\u2581", " ").encode())
    expected = text.encode()
    # SentencePiece prepends a dummy space to the first piece and strips it again when decoding.
    if pieces and pieces[0].startswith(b" ") and b"".join(pieces) == b" " + expected:
        pieces[0] = pieces[0][1:]
    if b"".join(pieces) != expected:
        return _proportional_offsets(text, len(ids))
    decoder = codecs.getincrementaldecoder("utf-8")()
    ends, position = [], 0
    for piece in pieces:
        position += len(decoder.decode(piece))
        ends.append(position)
    return TokenizedText(text, tuple(ends))


def _proportional_offsets(text: str, num_tokens: int) -> TokenizedText:
    # Only reached for a tokenizer whose pieces do not spell the text back (not the case for the
    # bundled SentencePiece vocabularies); keeps the token count exact and the concatenation intact.
    length = len(text)
    return TokenizedText(text, tuple(round(length * (i + 1) / num_tokens) for i in range(num_tokens)))


def _bank_texts(count_tokens: Callable[[str], int]) -> tuple[str, ...]:
    texts = []
    for index in range(BANK_SIZE):
        rng = random.Random(index)
        target = rng.randint(MIN_REPLY_TOKENS, MAX_REPLY_TOKENS)
        text = rng.choice(_OPENERS)
        # Whole sentences only, so every reply ends naturally on a full stop.
        while True:
            sentence = f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)}{rng.choice(_TAILS)}"
            longer = f"{text} {sentence}"
            if count_tokens(longer) > target and count_tokens(text) >= MIN_REPLY_TOKENS:
                break
            text = longer
        texts.append(text)
    return tuple(texts)


class ReplyBank:
    """Pre-tokenized simulated replies, one bank per tokenizer version."""

    def __init__(self) -> None:
        self._texts: tuple[str, ...] | None = None
        self._banks: dict[str, tuple[TokenizedText, ...]] = {}
        self._lock = threading.Lock()

    def for_model(self, model: str) -> tuple[TokenizedText, ...]:
        version = tokens.tokenizer_version_for(model)
        bank = self._banks.get(version)
        if bank is None:
            with self._lock:
                bank = self._banks.get(version)
                if bank is None:
                    if self._texts is None:
                        self._texts = _bank_texts(lambda text: tokens.count_text_tokens(_BANK_REFERENCE_MODEL, text))
                    bank = tuple(tokenize_with_offsets(model, t) for t in self._texts)
                    for entry in bank:
                        _ = entry.delta_json  # warm the cached serialisations
                    self._banks[version] = bank
        return bank

    def pick(self, model: str, key: bytes, choice_index: int) -> TokenizedText:
        digest = hashlib.blake2b(key, digest_size=8, person=choice_index.to_bytes(16, "little")).digest()
        bank = self.for_model(model)
        return bank[int.from_bytes(digest, "little") % len(bank)]


class EchoCache:
    """Small LRU of tokenized ``/echo`` texts, keyed by tokenizer version; long texts are not kept."""

    MAX_CACHED_CHARS = 4096

    def __init__(self, maxsize: int = 1024) -> None:
        self._maxsize = maxsize
        self._items: OrderedDict[tuple[str, str], TokenizedText] = OrderedDict()

    def get(self, model: str, text: str) -> TokenizedText:
        key = (tokens.tokenizer_version_for(model), text)
        item = self._items.get(key)
        if item is not None:
            self._items.move_to_end(key)
            return item
        item = tokenize_with_offsets(model, text)
        if len(text) > self.MAX_CACHED_CHARS:
            return item
        self._items[key] = item
        if len(self._items) > self._maxsize:
            self._items.popitem(last=False)
        return item


def request_key(prompt_fingerprint: bytes, seed: int | None) -> bytes:
    """What makes two requests produce the same text: the prompt, and the seed when one is given."""
    if seed is None:
        return b"noseed\x00" + prompt_fingerprint
    return b"seed\x00" + str(seed).encode() + b"\x00" + prompt_fingerprint


def finish(source: TokenizedText, *, max_tokens: int, stop: Sequence[str]) -> ChoiceOutput:
    """Apply stop strings and the token budget to a full reply, as vLLM's engine would.

    A stop string ends generation at the token that completes it; the text is cut before the match
    (``include_stop_str_in_output`` is false) and ``stop_reason`` names it. A stop string matched on
    the same token that reaches ``max_tokens`` still wins, as in vLLM, where the detokenizer's stop
    check overrides the scheduler's length cap. Otherwise running out of budget gives "length", and
    a complete reply gives "stop" with a null stop_reason (EOS).
    """
    ends = source.ends
    num_tokens = len(ends)
    cut = len(source.text)
    finish_reason, stop_reason = "stop", None
    best: tuple[int, int] | None = None  # (token index, match position)
    for candidate in stop:
        if not candidate:
            continue
        position = source.text.find(candidate)
        if position < 0:
            continue
        token_index = bisect_left(ends, position + len(candidate))
        if best is None or token_index < best[0]:
            best = (token_index, position)
            stop_reason = candidate
    if best is not None and best[0] < max_tokens:
        num_tokens, cut = best[0] + 1, best[1]
    else:
        stop_reason = None
        if num_tokens > max_tokens:
            # A length cut falls on a token boundary, so the precomputed deltas stay valid.
            text = source.text[: ends[max_tokens - 1]] if max_tokens else ""
            return ChoiceOutput(source.deltas[:max_tokens], source.delta_json[:max_tokens], text, "length", None)
    if num_tokens == len(ends) and cut == len(source.text):
        return ChoiceOutput(source.deltas, source.delta_json, source.text, finish_reason, stop_reason)
    text = source.text[:cut]
    deltas, start = [], 0
    for end in ends[:num_tokens]:
        end = min(end, cut)
        deltas.append(text[start:end])
        start = max(start, end)
    return ChoiceOutput(deltas, [orjson.dumps(d) for d in deltas], text, finish_reason, stop_reason)
