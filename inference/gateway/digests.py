"""The access record's digests (R-AUD-1): SHA-256 of a request's prompt and of its reply, never the text.

- The prompt: the canonical JSON of the endpoint's prompt field as the client sent it, before redaction —
  ``messages`` (chat), ``prompt`` (completions) or ``input`` (embeddings) — with sorted keys, no whitespace and
  UTF-8 text (``orjson`` with ``OPT_SORT_KEYS``; the same bytes as Python's
  ``json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)`` for text, integers and
  booleans). A tenant holding the request can recompute it.
- The reply: the UTF-8 text the replica generated, in the order it was relayed — chat ``message.content`` or
  streamed ``delta.content``, completions ``text`` — for every choice (several choices: one after the other in
  a whole answer, interleaved as they arrived in a stream); for embeddings, the answer's JSON body as relayed.
  Taken before restore mode puts a redacted request's originals back. Empty when no answer was relayed.

Hashed incrementally as the answer goes by (``hashlib`` keeps 32 bytes of state, no copy of the reply).
"""

from __future__ import annotations

import hashlib

import orjson

from core import contract
from inference.gateway import errors

_PROMPT_FIELD = {"chat.completions": "messages", "completions": "prompt", "embeddings": "input"}
CUSTOMER_HEADER = b"x-wattle-customer-id"


def customer_id(payload: dict, header: bytes | None) -> str:
    """The end customer the request names: the ``x-wattle-customer-id`` header, else the body's ``user``; ""
    when neither. The header wins: it is the tenant's integration speaking on purpose, whereas ``user`` may be
    whatever an SDK passes along.

    A header that breaks ``contract.valid_customer_id`` (1 to 64 letters, digits or ``. _ : @ + -``) is an
    OpenAI-shaped 400: only our clients send it, and a mistake there should be seen. ``user`` is OpenAI's field,
    which takes any string (validation bounds it to 256 characters and refuses a non-string): a drop-in client
    must not start failing because its application passes a name or an email with a space. One that is a valid id
    is kept as sent; any other string is kept as ``user_digest(value)`` (``sha256:`` and 40 hex digits), so no raw
    text of arbitrary shape reaches the access record, and the tenant can compute the same id for a request."""
    if header is not None:
        try:
            value: object = header.decode()
        except UnicodeDecodeError:
            value = None
        if not contract.valid_customer_id(value):
            raise errors.bad_request(
                "`x-wattle-customer-id` is the end-customer id: 1 to 64 letters, digits or . _ : @ + -.",
                param="x-wattle-customer-id", code="invalid_customer_id")
        return value  # type: ignore[return-value]
    value = payload.get("user")
    if value is None or value == "":
        return ""
    if not isinstance(value, str):
        raise errors.bad_request("`user` must be a string.", param="user", code="invalid_customer_id")
    return value if contract.valid_customer_id(value) else user_digest(value)


def user_digest(value: str) -> str:
    """The end-customer id kept for a ``user`` that isn't a valid id: ``sha256:`` and the first 40 hex digits of
    the SHA-256 of its UTF-8 (160 bits; 47 characters, itself a valid id)."""
    return "sha256:" + hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:40]


def with_customer_id(line: bytes, customer_id: str) -> bytes:
    """The usage event ``line`` (encoded with an empty customer id, as the access-log line is: the customer id is
    personal and stays out of logs) with ``customer_id`` put in, for the usage stream. A JSON string value can't
    hold an unescaped quote, so the key's bytes occur once."""
    if not customer_id:
        return line
    return line.replace(b'"customer_id":""', b'"customer_id":' + orjson.dumps(customer_id), 1)


def prompt_sha256(endpoint: str, payload: dict) -> str:
    """The prompt's digest; "" for one nested past what the encoder takes (255 levels; the parser takes 1,024),
    which validation refuses anyway: never an error of its own."""
    value = payload.get(_PROMPT_FIELD[endpoint])
    try:
        encoded = orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError:
        return ""
    return hashlib.sha256(encoded).hexdigest()


class ReplyDigest:
    """SHA-256 of a reply's text, fed as the answer is relayed."""

    __slots__ = ("_hash", "_key")

    def __init__(self, endpoint: str) -> None:
        self._hash = hashlib.sha256()
        self._key = endpoint

    def answer(self, body: bytes, parsed: object) -> None:
        """A whole JSON answer (``parsed``: its decoded body, or None if it wasn't JSON)."""
        if self._key == "embeddings" or not isinstance(parsed, dict):
            self._hash.update(body)
            return
        update = self._hash.update
        chat = self._key == "chat.completions"
        for choice in parsed.get("choices") or ():
            if not isinstance(choice, dict):
                continue
            holder = choice.get("message") if chat else choice
            text = holder.get("content" if chat else "text") if isinstance(holder, dict) else None
            if isinstance(text, str) and text:
                update(text.encode())

    def sse(self, raw: bytes) -> None:
        """Whole SSE content events (``data: {...}`` each, separated by blank lines)."""
        update = self._hash.update
        chat = self._key == "chat.completions"
        for line in raw.split(b"\n\n"):
            if not line.startswith(b"data: {"):
                continue
            try:
                chunk = orjson.loads(line[6:])
            except orjson.JSONDecodeError:
                continue
            for choice in chunk.get("choices") or ():
                holder = choice.get("delta") if chat else choice
                if isinstance(holder, dict):
                    text = holder.get("content" if chat else "text")
                    if isinstance(text, str) and text:
                        update(text.encode())

    def hexdigest(self) -> str:
        return self._hash.hexdigest()
