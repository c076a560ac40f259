"""Transcript capture for retention (R-RET, docs/privacy.md "Transcript retention"): the content of a tenant's
requests leaves the data plane as ``core.contract.TranscriptRecord``s on a Redis stream, and only when the tenant
keeps transcripts (its record's ``retention_days`` above 0). The control plane's ingest encrypts and stores them
(``audit.transcripts``).

- ``/v1`` chat and completions requests (and the playground's) are captured by the dispatch: ``ReplyCapture``
  wraps the caller's sink only for such a tenant, so a tenant without retention pays nothing per chunk; the
  record is built once the request has settled. Embeddings are not transcripts (their answer is vectors, not text)
  and are never kept.
- The prompt is what went to the replica: after redaction when it was on, so a redacted request is kept with its
  placeholders. The reply is what the replica generated, before restore mode put the originals back.
- The conversation API stores its own turns: it sets ``ctx.retain = False`` on the request it dispatches (so the
  request isn't kept twice) and calls ``emit_transcript(...)`` for each turn with ``kind="conversation_turn"``.

Content never reaches a log line and is never spooled to disk (the usage events' spool is plaintext): while Redis
is unreachable records wait in memory, up to ``_MAX_BUFFER_BYTES``, past which the oldest are dropped and counted
(``TranscriptEmitter.dropped``). Retention is a record of what was said, not a ledger: losing a few during an
outage is preferable to plaintext content on a gateway's disk.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque

import orjson

from core import contract
from inference.gateway.exchange import Answer, Delta, Event, RequestContext, Sink

logger = logging.getLogger("wattle.transcripts")

# Endpoints whose requests are captured (their prompt field in the body).
PROMPT_FIELDS = {"chat.completions": "messages", "completions": "prompt"}
_MAX_BUFFER_BYTES = 64 * 1024 * 1024
_RETRY_S = 1.0
_BATCH = 256


class TranscriptEmitter:
    """Writes encoded records to the transcripts stream from a background task (one XADD per record, a batch
    pipelined at a time), so the request path only appends to a list."""

    def __init__(self, hot) -> None:
        """``hot``: the per-request command client (``core.redis.new_hot_redis`` or ``RedisPyCommands``)."""
        self._hot = hot
        self._stream = contract.transcript_stream_key()
        self._buffer: deque[bytes] = deque()
        self._bytes = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._stopping = False
        self.written = 0  # records written to the stream since start (metrics and tests)
        self.dropped = 0  # records lost: the buffer overflowed while Redis was away, or shutdown found it away

    def emit(self, record: contract.TranscriptRecord) -> None:
        self.emit_bytes(record.encode())

    def emit_bytes(self, data: bytes) -> None:
        self._buffer.append(data)
        self._bytes += len(data)
        while self._bytes > _MAX_BUFFER_BYTES and len(self._buffer) > 1:
            self._bytes -= len(self._buffer.popleft())
            self.dropped += 1
        self._wake.set()

    @property
    def pending(self) -> int:
        return len(self._buffer)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self, grace_s: float = 10.0) -> None:
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, grace_s)
            except TimeoutError:
                self._task.cancel()
        if self._buffer:
            self.dropped += len(self._buffer)
            logger.warning("%d transcript record(s) not written: Redis was unreachable at shutdown", len(self._buffer))
            self._buffer.clear()
            self._bytes = 0

    async def flush(self) -> None:
        """Write everything buffered now (tests; shutdown)."""
        while self._buffer:
            batch = [self._buffer[i] for i in range(min(_BATCH, len(self._buffer)))]
            await asyncio.gather(*(self._hot.execute("XADD", self._stream, "*", "t", data) for data in batch))
            for _ in batch:
                self._bytes -= len(self._buffer.popleft())
            self.written += len(batch)

    async def _run(self) -> None:
        while True:
            if not self._buffer:
                if self._stopping:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            try:
                await self.flush()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self._stopping:
                    return
                # The class of error only: a Redis error can quote the command, which carries content.
                logger.warning("writing transcripts failed (%s); retrying", exc.__class__.__name__)
                await asyncio.sleep(_RETRY_S)


_emitter: TranscriptEmitter | None = None


def install(emitter: TranscriptEmitter | None) -> None:
    """The process's emitter (the gateway installs it at start-up, and removes it at shutdown)."""
    global _emitter
    _emitter = emitter


def emit_transcript(*, tenant: str, retention_days: int, request_id: str, prompt, reply: str,
                    kind: str = "request", key_id: str = "", customer_id: str = "", model: str = "",
                    endpoint: str = "", conversation_id: str = "", turn: int = 0, status: int = 200,
                    created: float | None = None, member: str = "") -> bool:
    """Queue one transcript record for retention; returns whether it was queued. Nothing is queued when
    ``retention_days`` is 0 (the tenant keeps no content: pass its record's ``retention_days``, e.g.
    ``ctx.key.retention_days``) or before the gateway started. Never blocks and never raises for Redis: the
    record is written by a background task.

    For the conversation API: one call per turn with ``kind="conversation_turn"``, the conversation's id and the
    turn's number (the ingest stores each ``(request_id, turn)`` once), ``prompt`` the messages sent to the model
    (after redaction) and ``reply`` the text it generated (before restore)."""
    if retention_days <= 0 or _emitter is None:
        return False
    _emitter.emit(contract.TranscriptRecord(
        tenant=tenant, request_id=request_id, created=time.time() if created is None else created,
        retention_days=min(retention_days, contract.MAX_RETENTION_DAYS), prompt=prompt, reply=reply, kind=kind,
        key_id=key_id or "", customer_id=customer_id or "", model=model, endpoint=endpoint,
        conversation_id=conversation_id or "", turn=turn, status=status, member=member or "",
    ))
    return True


# --- capture on the dispatch's path ----------------------------------------------------------------
def wants_capture(ctx: RequestContext) -> bool:
    """Whether the dispatch keeps this request's content: the tenant retains transcripts, the endpoint has text,
    and the caller doesn't store the content itself (``ctx.retain``)."""
    return bool(ctx.key is not None and ctx.key.retention_days > 0 and ctx.retain and ctx.endpoint in PROMPT_FIELDS)


class ReplyCapture:
    """A sink that keeps the answer's bytes as they pass (a stream's deltas, or the JSON answer) for the
    transcript; parsed once, after the request settled (``reply_text``)."""

    __slots__ = ("_inner", "parts")

    def __init__(self, inner: Sink) -> None:
        self._inner = inner
        self.parts: list[bytes] = []

    async def delta(self, delta: Delta) -> None:
        self.parts.append(delta.raw)
        await self._inner.delta(delta)

    async def events(self, events: list[Event]) -> None:
        for event in events:
            if isinstance(event, (Delta, Answer)):
                self.parts.append(event.raw if isinstance(event, Delta) else event.body)
        await self._inner.events(events)

    def reply_text(self, endpoint: str) -> str:
        return reply_text(endpoint, self.parts)


def reply_text(endpoint: str, parts: list[bytes]) -> str:
    """The generated text of an answer's bytes: chat ``message.content`` / ``delta.content`` or completions
    ``text``, per choice in index order (several choices separated by a blank line). A stream's events are parsed
    in one go (their payloads joined into one JSON array): a third of the cost of parsing each."""
    chat = endpoint == "chat.completions"
    choices: dict[int, list[str]] = {}
    events: list[bytes] = []
    for part in parts:
        if part.startswith(b"{"):  # a whole JSON answer
            _take(choices, _loads(part), "message" if chat else None, chat)
            continue
        for line in part.split(b"\n\n"):
            line = line.strip()
            if line.startswith(b"data: {"):
                events.append(line[6:])
    if events:
        chunks = _loads(b"[" + b",".join(events) + b"]")
        if not isinstance(chunks, list):  # one malformed event: parse them one by one
            chunks = [_loads(event) for event in events]
        for chunk in chunks:
            _take(choices, chunk, "delta" if chat else None, chat)
    return "\n\n".join("".join(choices[index]) for index in sorted(choices))


def _loads(raw: bytes):
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None


def _take(choices: dict[int, list[str]], data, holder_key: str | None, chat: bool) -> None:
    if not isinstance(data, dict):
        return
    for choice in data.get("choices") or ():
        if not isinstance(choice, dict):
            continue
        holder = choice.get(holder_key) if holder_key else choice
        text = holder.get("content" if chat else "text") if isinstance(holder, dict) else None
        if isinstance(text, str) and text:
            index = choice.get("index", 0)
            choices.setdefault(index if isinstance(index, int) else 0, []).append(text)


def emit_captured(ctx: RequestContext, capture: ReplyCapture) -> None:
    """The settled request's transcript record, if it reached a replica (a request refused before any did has no
    content the model saw). Never raises: retention must not fail a request that was answered."""
    if not ctx.backend or ctx.payload is None:
        return
    try:
        emit_transcript(
            tenant=ctx.key.tenant, retention_days=ctx.key.retention_days, request_id=ctx.request_id,
            prompt=ctx.payload.get(PROMPT_FIELDS[ctx.endpoint]), reply=capture.reply_text(ctx.endpoint),
            key_id=ctx.key.key_id, customer_id=ctx.customer_id, model=ctx.model,
            endpoint=ctx.endpoint, status=ctx.status, created=ctx.started_wall,
            conversation_id=ctx.conversation_id, member=ctx.member,
        )
    except Exception as exc:
        # The class only: a message or traceback could quote the content.
        logger.error("capturing a transcript failed (%s)", exc.__class__.__name__,
                     extra={"request_id": ctx.request_id})
