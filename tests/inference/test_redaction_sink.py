"""Restore mode on the dispatch's events (R-RED-1): a placeholder split over streamed events reaches the caller
whole with its original value, per choice; what is held back when a stream ends without a finish_reason is
flushed before the end; JSON answers are restored; events other than content pass unchanged."""

from __future__ import annotations

import orjson

from core.redaction import Redactor
from inference.gateway.exchange import Answer, Delta, Done, Usage
from inference.gateway.redact import RestoringSink


class Recorder:
    def __init__(self) -> None:
        self.seen: list = []

    async def delta(self, delta) -> None:
        self.seen.append(delta)

    async def events(self, events) -> None:
        self.seen.extend(events)


def _chat_event(content: str | None, index: int = 0, finish: str | None = None) -> bytes:
    chunk = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m",
             "choices": [{"index": index, "delta": {"content": content}, "finish_reason": finish}]}
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


def _text(seen, index: int = 0) -> str:
    out = []
    for event in seen:
        if isinstance(event, Delta):
            for chunk in event.chunks():
                for choice in chunk["choices"]:
                    if choice["index"] == index:
                        out.append(choice["delta"].get("content") or "")
    return "".join(out)


def _redactor() -> Redactor:
    redactor = Redactor()
    assert redactor.redact("TFN 123 456 782, call 0412 345 678") == "TFN [AU_TFN_1], call [AU_PHONE_1]"
    return redactor


async def test_a_placeholder_split_over_events_is_restored_whole():
    inner = Recorder()
    sink = RestoringSink(inner, _redactor(), "chat.completions")
    for piece in ("Your TFN ", "[AU", "_TFN", "_1", "] is saved", "."):
        await sink.delta(Delta(_chat_event(piece), 1))
    await sink.events([Delta(_chat_event("", finish="stop"), 1), Done()])
    assert _text(inner.seen) == "Your TFN 123 456 782 is saved."
    assert isinstance(inner.seen[-1], Done)
    assert all(b"[AU" not in e.raw for e in inner.seen if isinstance(e, Delta))


async def test_choices_are_restored_apart_and_a_held_tail_is_flushed_before_the_end():
    inner = Recorder()
    sink = RestoringSink(inner, _redactor(), "chat.completions")
    await sink.delta(Delta(_chat_event("A [AU_PH", 0) + _chat_event("B [AU_TF", 1), 2))
    await sink.delta(Delta(_chat_event("ONE_1]", 0) + _chat_event("N_1] and [AU_", 1), 2))
    # The stream ends with no finish_reason for choice 1: what it held back still reaches the caller, first.
    await sink.events([Usage(3, 4, None), Done()])
    assert _text(inner.seen, 0) == "A 0412 345 678"
    assert _text(inner.seen, 1) == "B 123 456 782 and [AU_"
    assert isinstance(inner.seen[-2], Usage) and isinstance(inner.seen[-1], Done)


async def test_completion_text_and_json_answers_are_restored():
    inner = Recorder()
    sink = RestoringSink(inner, _redactor(), "completions")
    chunk = {"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "m",
             "choices": [{"index": 0, "text": "call [AU_PHONE_1]", "finish_reason": "stop"}]}
    await sink.delta(Delta(b"data: " + orjson.dumps(chunk) + b"\n\n", 1))
    assert inner.seen[0].chunks()[0]["choices"][0]["text"] == "call 0412 345 678"
    answer = orjson.dumps({"choices": [{"message": {"content": "TFN [AU_TFN_1]"}}]})
    await sink.events([Answer(answer)])
    assert orjson.loads(inner.seen[-1].body)["choices"][0]["message"]["content"] == "TFN 123 456 782"


async def test_streamed_tool_call_arguments_are_restored_and_flushed_at_the_finish():
    inner = Recorder()
    sink = RestoringSink(inner, _redactor(), "chat.completions")

    def tool_event(arguments: str, finish: str | None = None) -> bytes:
        delta = {"tool_calls": [{"index": 0, "function": {"arguments": arguments}}]} if arguments else {}
        chunk = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
                 "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        return b"data: " + orjson.dumps(chunk) + b"\n\n"

    for piece in ('{"tfn": "[AU_T', 'FN_1]", "x": "[AU_'):
        await sink.delta(Delta(tool_event(piece), 1))
    await sink.events([Delta(tool_event("", finish="tool_calls"), 1), Done()])
    arguments = "".join(
        call["function"]["arguments"]
        for event in inner.seen if isinstance(event, Delta)
        for chunk in event.chunks() for choice in chunk["choices"]
        for call in choice["delta"].get("tool_calls") or ()
    )
    assert arguments == '{"tfn": "123 456 782", "x": "[AU_'


def test_apply_redacts_every_text_of_a_chat_and_marks_the_body_changed_only_then():
    from core.redaction import RESTORE
    from inference.gateway import redact, validation
    from inference.gateway.exchange import RequestContext

    payload = {"model": "m", "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "My TFN is 123 456 782"}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "abcdefghi", "type": "function",
             "function": {"name": "lookup", "arguments": '{"phone": "0412 345 678"}'}}]},
        {"role": "tool", "tool_call_id": "abcdefghi", "content": "jo@example.com.au, TFN 123456782"},
    ]}
    prepared = validation.Prepared(payload, False, 100, 16, 1)
    ctx = RequestContext("chat.completions", "req_test")
    redact.apply(ctx, prepared, mode=RESTORE)
    messages = prepared.payload["messages"]
    assert messages[1]["content"][0]["text"] == "My TFN is [AU_TFN_1]"
    assert messages[2]["tool_calls"][0]["function"]["arguments"] == '{"phone": "[AU_PHONE_1]"}'
    assert messages[3]["content"] == "[AU_EMAIL_1], TFN [AU_TFN_1]"
    assert prepared.changed and ctx.redactor is not None
    assert ctx.redactions == {"AU_TFN": 2, "AU_PHONE": 1, "AU_EMAIL": 1}
    assert prepared.prompt_tokens_upper >= 100  # a placeholder longer than its value raises the bound

    plain = validation.Prepared({"model": "m", "messages": [{"role": "user", "content": "Order 4567891"}]},
                                False, 10, 16, 1)
    ctx = RequestContext("chat.completions", "req_test_2")
    redact.apply(ctx, plain, mode=RESTORE)
    assert not plain.changed and ctx.redactor is None and ctx.redactions == {}
