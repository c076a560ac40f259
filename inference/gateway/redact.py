"""Redaction on the data plane (``core.redaction``, R-RED-1): the texts of a validated request are redacted in
place before its body is encoded for the replica, and in restore mode the answer's events get the originals back
on their way to the caller's sink.

Only a request whose texts changed is re-encoded; any other keeps the zero-copy path. The placeholders' mapping
lives on the request's context and goes with it; only counts per type reach the usage event and access log.
"""

from __future__ import annotations

import orjson

from core import redaction
from inference.gateway import errors
from inference.gateway.exchange import Answer, Delta, Done, Event, Failed, RequestContext, Sink, Usage


def apply(ctx: RequestContext, prepared, *, mode: str) -> None:
    """Redact ``prepared.payload``'s texts (chat message contents, completion prompts and suffix, embedding inputs) for
    ``mode`` (redact or restore). Marks the body changed only when something was replaced."""
    redactor = redaction.Redactor()
    payload = prepared.payload
    grown = 0
    if ctx.endpoint == "chat.completions":
        for message in payload["messages"]:
            content = message.get("content")
            if isinstance(content, str):
                message["content"], delta = _redact(redactor, content)
                grown += delta
            elif isinstance(content, list):
                for part in content:
                    part["text"], delta = _redact(redactor, part["text"])
                    grown += delta
            for call in message.get("tool_calls") or ():
                # Earlier turns' tool-call arguments (a JSON string) carry what the customer said, too.
                function = call["function"]
                if isinstance(function.get("arguments"), str):
                    function["arguments"], delta = _redact(redactor, function["arguments"])
                    grown += delta
    else:
        name = "prompt" if ctx.endpoint == "completions" else "input"
        texts = payload.get(name)
        if isinstance(texts, str):
            payload[name], grown = _redact(redactor, texts)
        elif isinstance(texts, list) and texts and isinstance(texts[0], str):
            for index, text in enumerate(texts):
                texts[index], delta = _redact(redactor, text)
                grown += delta
        elif isinstance(texts, list) and texts:
            # Token ids can't be read for identifiers: refused, never passed on unredacted (fails closed).
            raise errors.bad_request(
                f"Personal-information redaction is on for this request, so `{name}` must be text, not token ids.",
                param=name, code="redaction_needs_text")
        if isinstance(payload.get("suffix"), str):  # a completion's text after the insertion point
            payload["suffix"], delta = _redact(redactor, payload["suffix"])
            grown += delta
    ctx.redactions = redactor.counts
    if redactor:
        prepared.changed = True
        # A placeholder can be longer than what it replaced: keep the reservation's bound at a token per byte.
        prepared.prompt_tokens_upper += grown
        if mode == redaction.RESTORE:
            ctx.redactor = redactor


def _redact(redactor: redaction.Redactor, text: str) -> tuple[str, int]:
    redacted = redactor.redact(text)
    if redacted is text:
        return text, 0
    return redacted, max(0, len(redacted.encode()) - len(text.encode()))


class RestoringSink:
    """A sink that puts the request's originals back into the answer before the caller's sink sees it: the
    JSON answer's strings, and a stream's content pieces per choice (a placeholder split between events is held
    back until it is whole, and flushed at the choice's end)."""

    __slots__ = ("_inner", "_last", "_restorer", "_text_key", "redactor")

    def __init__(self, inner: Sink, redactor: redaction.Redactor, endpoint: str) -> None:
        self._inner = inner
        self.redactor = redactor
        self._restorer = redactor.stream_restorer()
        self._text_key = "delta" if endpoint == "chat.completions" else "text"
        self._last: dict | None = None  # the last chunk's envelope, for a closing chunk with what is held back

    async def delta(self, delta: Delta) -> None:
        await self._inner.delta(self._restore_delta(delta))

    async def events(self, events: list[Event]) -> None:
        out: list[Event] = []
        for event in events:
            kind = event.__class__
            if kind is Delta:
                out.append(self._restore_delta(event))
            elif kind is Answer:
                out.append(Answer(self.redactor.restore_json(event.body)))
            else:
                if kind in (Done, Usage, Failed):
                    held = self._held_back()
                    if held is not None:
                        out.append(held)
                out.append(event)
        await self._inner.events(out)

    def _restore_delta(self, delta: Delta) -> Delta:
        out = []
        for raw in delta.raw.split(b"\n\n"):
            if raw.startswith(b"data: {"):
                chunk = orjson.loads(raw[6:])
                self._restore_chunk(chunk)
                raw = b"data: " + orjson.dumps(chunk)
            if raw:
                out.append(raw + b"\n\n")
        return Delta(b"".join(out), delta.events)

    def _restore_chunk(self, chunk: dict) -> None:
        restorer = self._restorer
        for choice in chunk.get("choices") or ():
            index = choice.get("index", 0)
            if self._text_key == "delta":
                holder, field = choice.get("delta"), "content"
            else:
                holder, field = choice, "text"
            if not isinstance(holder, dict):
                continue
            text = holder.get(field)
            if isinstance(text, str):
                holder[field] = text = restorer.feed(index, text)
            for call in (holder.get("tool_calls") or ()) if field == "content" else ():
                function = call.get("function") if isinstance(call, dict) else None
                if isinstance(function, dict) and isinstance(function.get("arguments"), str):
                    key = (index, "tool", call.get("index", 0))
                    function["arguments"] = restorer.feed(key, function["arguments"])
            if choice.get("finish_reason") is not None:
                self._flush_into(index, holder, field)
        self._last = chunk

    def _flush_into(self, index: int, holder: dict, field: str) -> None:
        """Add what is held back for choice ``index`` (its text, its tool calls' arguments) to ``holder``."""
        restorer = self._restorer
        tail = restorer.flush(index)
        if tail:
            holder[field] = (holder.get(field) or "") + tail
        for key in restorer.pending():
            if isinstance(key, tuple) and key[0] == index:
                holder.setdefault("tool_calls", []).append(
                    {"index": key[2], "function": {"arguments": restorer.flush(key)}})

    def _held_back(self) -> Delta | None:
        """A closing chunk for choices whose stream ended with a piece held back (no finish_reason came)."""
        pending = self._restorer.pending()
        if not pending or self._last is None:
            return None
        choices = []
        for index in sorted({key[0] if isinstance(key, tuple) else key for key in pending}):
            if self._text_key == "delta":
                choice = {"index": index, "delta": {}, "finish_reason": None}
                self._flush_into(index, choice["delta"], "content")
            else:
                choice = {"index": index, "text": "", "finish_reason": None}
                self._flush_into(index, choice, "text")
            choices.append(choice)
        chunk = {k: v for k, v in self._last.items() if k in ("id", "object", "created", "model")}
        chunk["choices"] = choices
        return Delta(b"data: " + orjson.dumps(chunk) + b"\n\n", 1)
