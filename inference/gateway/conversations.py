"""The conversation API (docs/conversations.md): a contact centre's customer conversation, one turn at a time.

``POST /v1/conversation`` takes the customer's ``message`` and answers with the model's ``reply``, the turn's
``sentiment`` and whether the conversation should go to a person (``escalate``). Each turn is a chat completion
prepared and run by the same ``Dispatcher`` as `/v1/chat/completions` (limits, billing, redaction, routing, one
usage event per turn billed to the key), with the history: the ``core.ccaas`` instruction for the channel and
language, the earlier turns, then this message. ``GET /v1/conversations/{id}`` shows the conversation and
``POST /v1/conversations/{id}/close`` closes it, handing it to the control plane as a ``ClosedConversation``.

State lives in Redis (``core.contract.conversation_key``), as this module's own JSON, with an idle TTL. No ORM.

- Ids are 144 random bits; the state names its tenant, and another tenant's id answers 404 exactly as an unknown
  one does.
- Turns of one conversation run one at a time: a turn holds the conversation's lock (``SET NX PX`` with a random
  token) from reading the history to writing the new turns, and writes only while it still holds it (a Lua
  script compares the token), so two turns sent at once are both kept, the second seeing the first.
- Redaction (the tenant's mode or ``x-wattle-redact``) is applied here, before the message reaches the dispatch
  or the store: the stored history holds placeholders, never the identifiers, and the placeholders' numbering
  continues across turns. In restore mode the reply the client gets has this turn's originals back; the store
  keeps the placeholders (earlier turns' originals are not kept anywhere, so they stay placeholders).
- An escalation decision (``core.sentiment.decide``) that hands the conversation over is put on the ADM stream
  (``EscalationDecision``: digests, never text) in the same Lua script that stores the turn; every customer
  turn keeps its decision inputs' digest. Closing writes the tombstone and the ``ClosedConversation`` in one
  script too. Neither the text nor the customer id ever reaches a log line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
import time
from dataclasses import dataclass

import orjson
from django.conf import settings

from core import ccaas, contract, redaction, sentiment
from inference.gateway import errors, transcripts
from inference.gateway.dispatch import wait_for_disconnect
from inference.gateway.errors import GatewayError
from inference.gateway.exchange import (
    Answer,
    ClientGone,
    Delta,
    Done,
    Failed,
    Opened,
    RequestContext,
)
from inference.gateway.redact import RestoringSink

logger = logging.getLogger("wattle.conversations")

_ID = re.compile(r"conv_[A-Za-z0-9_-]{16,64}")
_PATH = re.compile(r"/v1/conversations/([^/]{1,128})(/close)?")
_CONVERSATION_HEADER = b"x-wattle-conversation-id"
_DONE = b"data: [DONE]\n\n"
_STREAM_FAILED_FRAME = (
    b'data: {"error": {"message": "The model backend failed while streaming.", "type": "server_error", '
    b'"param": null, "code": 502}}\n\n'
)
_LOCK_POLL_S = (0.005, 0.01, 0.02, 0.05, 0.1)

# Store the turns only while this token holds the lock; the ADM decision (if any) goes on its stream in the same
# step. KEYS: state, lock, decisions stream. ARGV: token, state JSON, TTL ms, decision record ("" for none).
# The stream first: a script that fails midway keeps what it wrote before (Redis has no rollback), so a failing
# XADD must leave the turn unwritten rather than a handed-over conversation without its decision record.
_SAVE = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
if ARGV[4] ~= '' then redis.call('XADD', KEYS[3], '*', 'e', ARGV[4]) end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
"""
# Close: the closed record and the tombstone together, only while holding the lock; the record first, so a failing
# XADD never leaves a tombstone (the text gone) without the record that carries it to the control plane.
# KEYS: state, lock, closed stream. ARGV: token, tombstone JSON, TTL ms, closed record.
_CLOSE = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
redis.call('XADD', KEYS[3], '*', 'e', ARGV[4])
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@dataclass(frozen=True, slots=True)
class Limits:
    message_chars: int
    metadata_bytes: int
    turns: int  # stored turns (a customer message and a reply are two)
    state_bytes: int
    idle_ttl_s: float
    closed_ttl_s: float
    lock_wait_s: float
    lock_ttl_s: float

    @classmethod
    def from_settings(cls) -> Limits:
        get = lambda name, default: getattr(settings, name, default)  # noqa: E731
        return cls(
            message_chars=get("INFERENCE_CONVERSATION_MAX_MESSAGE_CHARS", 8_000),
            metadata_bytes=get("INFERENCE_CONVERSATION_MAX_METADATA_BYTES", 2_048),
            turns=get("INFERENCE_CONVERSATION_MAX_TURNS", 200),
            state_bytes=get("INFERENCE_CONVERSATION_MAX_STATE_BYTES", 512 * 1024),
            idle_ttl_s=get("INFERENCE_CONVERSATION_IDLE_TTL_S", 24 * 3600.0),
            closed_ttl_s=get("INFERENCE_CONVERSATION_CLOSED_TTL_S", 24 * 3600.0),
            lock_wait_s=get("INFERENCE_CONVERSATION_LOCK_WAIT_S", 30.0),
            # A turn holds the lock while the model answers: as long as the upstream may take, and a margin.
            lock_ttl_s=settings.INFERENCE_UPSTREAM_READ_TIMEOUT_S + 30.0,
        )


# --- what a caller sends -----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class TurnRequest:
    message: str
    conversation_id: str | None
    model: str | None
    stream: bool
    metadata: dict | None
    # What the caller sent (None: not sent); a new conversation takes the defaults, an open one must match.
    channel: str | None
    language: str | None
    customer_id: str | None


def parse_turn(payload: dict, limits: Limits) -> TurnRequest:
    """The fields of a turn, each checked and bounded, or the OpenAI-shaped 400."""
    message = payload.get("message")
    if not isinstance(message, str) or not message.strip():
        raise errors.bad_request("`message` is required: the customer's text.", param="message",
                                 code="missing_message" if message is None else "invalid_message")
    if len(message) > limits.message_chars:
        raise errors.bad_request(f"`message` may hold at most {limits.message_chars} characters.", param="message",
                                 code="message_too_long")
    try:
        context = ccaas.context(channel=payload.get("channel"), language=payload.get("language"),
                                customer_id=payload.get("customer_id"))
    except ccaas.Invalid as exc:
        raise errors.bad_request(str(exc), param=exc.field, code=f"invalid_{exc.field}") from None
    conversation_id = payload.get("conversation_id")
    if conversation_id is not None and not isinstance(conversation_id, str):
        raise errors.bad_request("`conversation_id` must be a string.", param="conversation_id")
    model = payload.get("model")
    if model is not None and (not isinstance(model, str) or not model or len(model) > 200):
        raise errors.bad_request("`model` must be a model's name.", param="model")
    stream = payload.get("stream", False)
    if not isinstance(stream, bool):
        raise errors.bad_request("`stream` must be true or false.", param="stream")
    metadata = payload.get("metadata")
    if metadata is not None:
        if not isinstance(metadata, dict):
            raise errors.bad_request("`metadata` must be a JSON object.", param="metadata")
        if _too_deep(metadata, _METADATA_DEPTH):
            # Before encoding it: orjson refuses to encode past 255 levels (a 500), and redacting it recurses.
            raise errors.bad_request(f"`metadata` may nest at most {_METADATA_DEPTH} levels.", param="metadata",
                                     code="metadata_too_deep")
        if len(orjson.dumps(metadata)) > limits.metadata_bytes:
            raise errors.bad_request(f"`metadata` may be at most {limits.metadata_bytes} bytes of JSON.",
                                     param="metadata", code="metadata_too_large")
    return TurnRequest(
        message=message, conversation_id=conversation_id, model=model, stream=stream, metadata=metadata,
        channel=context.channel if payload.get("channel") is not None else None,
        language=context.language if payload.get("language") is not None else None,
        customer_id=context.customer_id if payload.get("customer_id") is not None else None,
    )


_METADATA_DEPTH = 8


def _too_deep(value: object, limit: int) -> bool:
    """Whether objects and arrays nest more than ``limit`` levels in ``value`` (iterative: no recursion to
    exhaust)."""
    pending = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        if depth > limit:
            return True
        pending.extend((child, depth + 1) for child in children)
    return False


def new_conversation_id() -> str:
    return "conv_" + secrets.token_urlsafe(18)  # 144 random bits


def not_found(conversation_id: str) -> GatewayError:
    return GatewayError(404, f"No conversation with id `{errors.excerpt(conversation_id)}`.",
                        param="conversation_id", code="conversation_not_found")


def closed_error(conversation_id: str) -> GatewayError:
    return GatewayError(409, f"Conversation `{errors.excerpt(conversation_id)}` is closed: start a new one.",
                        param="conversation_id", code="conversation_closed")


def _asks_for_redaction(value: bytes | None) -> bool:
    return value is not None and value.strip().lower() in (b"true", b"1", b"yes")


# --- the state -----------------------------------------------------------------------------------------
def public_view(state: dict) -> dict:
    """``GET /v1/conversations/{id}``: the conversation as its tenant sees it (after close, without text)."""
    escalation = state.get("escalation") or {}
    turns = []
    for turn in state["turns"]:
        item = {"role": turn["role"], "text": turn.get("text"), "created": turn["time"]}
        if turn["role"] == "user":
            item["sentiment"] = {"score": turn["sentiment"], "label": turn["label"],
                                 "scorer": turn.get("scorer", "lexicon"), "fallback": turn.get("fallback", "")}
        turns.append(item)
    return {
        "id": state["id"], "object": "conversation", "status": state["status"], "model": state["model"],
        "channel": state["channel"], "language": state["language"], "customer_id": state["customer_id"] or None,
        "created": state["opened"], "updated": state["updated"], "closed_at": state.get("closed"),
        "metadata": state.get("metadata") or {},
        "turns": turns,
        "sentiment_trail": [t["sentiment"] for t in state["turns"] if t["role"] == "user"],
        "escalation": {"flag": bool(escalation), "reason": escalation.get("reason", ""),
                       "detail": escalation.get("detail", ""), "turn": escalation.get("turn"),
                       "at": escalation.get("at")},
    }


def closed_record(state: dict, closed: float) -> contract.ClosedConversation:
    escalation = state.get("escalation") or {}
    return contract.ClosedConversation(
        conversation_id=state["id"], tenant=state["tenant"], key_id=state["key_id"], model=state["model"],
        channel=state["channel"], language=state["language"], opened=state["opened"], closed=closed,
        turns=tuple(contract.ConversationTurn(
            role=t["role"], text=t["text"], time=t["time"], sentiment=t.get("sentiment"), label=t.get("label", ""),
            request_id=t.get("request_id", ""), inputs_sha256=t.get("inputs_sha256", ""))
            for t in state["turns"]),
        customer_id=state["customer_id"], escalated=bool(escalation), escalation_reason=escalation.get("reason", ""),
        escalation_detail=escalation.get("detail", ""), escalated_at=escalation.get("at"),
        escalation_turn=escalation.get("turn"), metadata=state.get("metadata") or {},
        redaction=state.get("redaction", "off"), scorer=state.get("scorer", "lexicon"),
    )


class Store:
    """The conversations' state in Redis (async client)."""

    def __init__(self, redis, limits: Limits) -> None:
        self._redis = redis
        self._limits = limits
        self._save = redis.register_script(_SAVE)
        self._close = redis.register_script(_CLOSE)
        self._release = redis.register_script(_RELEASE)

    async def load(self, conversation_id: str) -> dict | None:
        raw = await self._redis.get(contract.conversation_key(conversation_id))
        return None if raw is None else orjson.loads(raw)

    async def acquire(self, conversation_id: str) -> str:
        """The conversation's lock (its token), waiting for a turn in progress; 409 if it stays busy."""
        token = secrets.token_hex(16)
        lock = contract.conversation_lock_key(conversation_id)
        ttl_ms = int(self._limits.lock_ttl_s * 1000)
        deadline = time.monotonic() + self._limits.lock_wait_s
        attempt = 0
        while not await self._redis.set(lock, token, nx=True, px=ttl_ms):
            if time.monotonic() >= deadline:
                raise GatewayError(409, "Another turn of this conversation is still running. Retry when it ends.",
                                   param="conversation_id", code="conversation_busy",
                                   headers={"retry-after": "1"})
            await asyncio.sleep(_LOCK_POLL_S[min(attempt, len(_LOCK_POLL_S) - 1)])
            attempt += 1
        return token

    async def release(self, conversation_id: str, token: str) -> None:
        with contextlib.suppress(Exception):
            await self._release(keys=[contract.conversation_lock_key(conversation_id)], args=[token])

    async def save(self, state: dict, token: str, decision: bytes = b"") -> bool:
        cid = state["id"]
        return bool(await self._save(
            keys=[contract.conversation_key(cid), contract.conversation_lock_key(cid),
                  contract.adm_decisions_stream_key()],
            args=[token, orjson.dumps(state), int(self._limits.idle_ttl_s * 1000), decision]))

    async def close(self, tombstone: dict, token: str, record: contract.ClosedConversation) -> bool:
        cid = tombstone["id"]
        return bool(await self._close(
            keys=[contract.conversation_key(cid), contract.conversation_lock_key(cid),
                  contract.conversations_closed_stream_key()],
            args=[token, orjson.dumps(tombstone), int(self._limits.closed_ttl_s * 1000), record.encode()]))


# --- sinks -----------------------------------------------------------------------------------------------
class _Collect:
    """A whole (not streamed) answer, or the failure (sent to the client at once by ``on_failed``, if given)."""

    __slots__ = ("answer", "failed", "on_failed")

    def __init__(self, on_failed=None) -> None:
        self.answer: bytes | None = None
        self.failed: Failed | None = None
        self.on_failed = on_failed

    async def delta(self, delta: Delta) -> None:  # not streamed: never called
        pass

    async def events(self, events: list) -> None:
        for event in events:
            if isinstance(event, Answer):
                self.answer = event.body
            elif isinstance(event, Failed):
                self.failed = event
                if self.on_failed is not None:
                    await self.on_failed(event.error)


class _Capture:
    """Keeps the replica's stream bytes (before restore) for the stored reply, passing them on."""

    __slots__ = ("done", "failed", "inner", "parts")

    def __init__(self, inner) -> None:
        self.inner = inner
        self.parts: list[bytes] = []
        self.done = False
        self.failed: Failed | None = None

    async def delta(self, delta: Delta) -> None:
        self.parts.append(delta.raw)
        await self.inner.delta(delta)

    async def events(self, events: list) -> None:
        for event in events:
            if isinstance(event, Delta):
                self.parts.append(event.raw)
            elif isinstance(event, Done):
                self.done = True
            elif isinstance(event, Failed):
                self.failed = event
        await self.inner.events(events)


class _SseSink:
    """The stream to the client: the replica's chunks as they come; ``[DONE]`` is held back until the turn's
    final event (sentiment, escalation) has been written."""

    __slots__ = ("api", "call", "conversation_id", "receive", "send", "started", "watcher")

    def __init__(self, api: ConversationAPI, send, receive, call, conversation_id: str) -> None:
        self.api, self.send, self.receive, self.call = api, send, receive, call
        self.conversation_id = conversation_id
        self.started = False
        self.watcher: asyncio.Task | None = None

    async def delta(self, delta: Delta) -> None:
        await self.send({"type": "http.response.body", "body": delta.raw, "more_body": True})

    async def events(self, events: list) -> None:
        ctx = self.call.ctx
        out = []
        for event in events:
            kind = event.__class__
            if kind is Delta:
                out.append(event.raw)
            elif kind is Opened:
                self.started = True
                await self.send({"type": "http.response.start", "status": 200, "headers": [
                    *self.api.gateway._sse_headers, *ctx.response_headers(),
                    (_CONVERSATION_HEADER, self.conversation_id.encode())]})
                self.watcher = asyncio.create_task(wait_for_disconnect(self.receive, self.call))
            elif kind is Failed:
                if event.started:
                    out.append((event.raw or _STREAM_FAILED_FRAME) + _DONE)
                else:
                    await self.api.gateway._send_error(self.send, event.error, ctx)
            # Done: held back; Usage: the turn's final event carries it.
        if out:
            await self.send({"type": "http.response.body", "body": b"".join(out), "more_body": True})


# --- the API ---------------------------------------------------------------------------------------------
class ConversationAPI:
    def __init__(self, gateway) -> None:
        self.gateway = gateway
        self.limits = Limits.from_settings()
        self.store = Store(gateway.redis, self.limits)

    async def __call__(self, scope, receive, send) -> None:
        path, method = scope["path"], scope["method"]
        if path == "/v1/conversation":
            if method != "POST":
                await self.gateway._send_error(send, GatewayError(405, f"Use POST for {path}.",
                                                                  code="method_not_allowed"))
                return
            await self._turn(scope, receive, send)
            return
        ctx = RequestContext("conversations", self.gateway.next_request_id())
        try:
            # The key first: without one, nothing about these paths is told.
            ctx.key = await self.gateway.auth.authenticate(dict(scope["headers"]).get(b"authorization"))
            match = _PATH.fullmatch(path)
            if match is None:
                raise GatewayError(404, f"Unknown endpoint {errors.excerpt(path)}.", code="unknown_url")
            conversation_id, close = match.group(1), bool(match.group(2))
            wanted = "POST" if close else "GET"
            if method != wanted and not (wanted == "GET" and method == "HEAD"):
                raise GatewayError(405, f"Use {wanted} for this endpoint.", code="method_not_allowed")
            if close:
                body = await self._close(ctx, conversation_id)
            else:
                body = orjson.dumps(public_view(await self._owned(ctx, conversation_id)))
            await self.gateway._send_json(send, 200, body, ctx.response_headers())
        except GatewayError as error:
            await self.gateway._send_error(send, error, ctx)
        except Exception:
            logger.exception("unhandled error in the conversation API", extra={"request_id": ctx.request_id})
            with contextlib.suppress(Exception):
                await self.gateway._send_error(send, errors.internal_error(), ctx)

    async def _owned(self, ctx: RequestContext, conversation_id: str) -> dict:
        """The caller's tenant's conversation, or 404 (unknown, expired, or another tenant's: the same answer)."""
        if not _ID.fullmatch(conversation_id):
            raise not_found(conversation_id)
        state = await self.store.load(conversation_id)
        if state is None or state.get("tenant") != ctx.key.tenant:
            raise not_found(conversation_id)
        return state

    async def _close(self, ctx: RequestContext, conversation_id: str) -> bytes:
        await self._owned(ctx, conversation_id)  # 404 before taking another tenant's lock
        token = await self.store.acquire(conversation_id)
        try:
            state = await self._owned(ctx, conversation_id)
            if state["status"] != "open":
                raise closed_error(conversation_id)
            now = time.time()
            record = closed_record(state, now)
            # The data plane keeps no text once closed: the record carries it to the control plane, whose
            # retention decides how long it lives. The tombstone answers GET and a second close.
            tombstone = {**state, "status": "closed", "closed": now, "updated": now,
                         "turns": [{**t, "text": None} for t in state["turns"]]}
            if not await self.store.close(tombstone, token, record):
                raise GatewayError(409, "This conversation changed while closing it. Retry.",
                                   param="conversation_id", code="conversation_busy")
            return orjson.dumps(public_view(tombstone))
        finally:
            await self.store.release(conversation_id, token)

    # --- one turn --------------------------------------------------------------------------------------
    async def _turn(self, scope, receive, send) -> None:
        gateway = self.gateway
        ctx = RequestContext("chat.completions", gateway.next_request_id())
        ctx.retain = False  # this module keeps the turn's transcript itself (one record per turn)
        headers = dict(scope["headers"])
        conversation_id = token = None
        try:
            ctx.key = await gateway.auth.authenticate(headers.get(b"authorization"))
            body = await gateway._read_body(receive, headers)
            turn = parse_turn(gateway._parse_json(body, headers), self.limits)
            if turn.conversation_id is not None:
                conversation_id = turn.conversation_id
                await self._owned(ctx, conversation_id)
                token = await self.store.acquire(conversation_id)
                state = await self._owned(ctx, conversation_id)
                if state["status"] != "open":
                    raise closed_error(conversation_id)
                self._check_same(state, turn)
            else:
                conversation_id = new_conversation_id()
                token = await self.store.acquire(conversation_id)
                state = self._new_state(ctx, conversation_id, turn)
            if turn.model is not None:
                state["model"] = turn.model
            if not state["model"]:
                raise errors.bad_request("You must provide a model parameter.", param="model")
            if len(state["turns"]) + 2 > self.limits.turns or (
                    len(orjson.dumps(state)) + len(turn.message) * 4 > self.limits.state_bytes):
                raise errors.bad_request("This conversation is as long as a conversation may be: close it and start "
                                         "a new one.", param="conversation_id", code="conversation_too_long")
            prepared = await self._prepare(ctx, state, turn, headers)
        except GatewayError as error:
            await gateway._send_error(send, error, ctx)
            await self._end(ctx, conversation_id, token)
            return
        except ClientGone:
            ctx.client_disconnected = True
            ctx.status, ctx.error_code = 499, "client_closed_request"
            await self._end(ctx, conversation_id, token)
            return
        except Exception:
            logger.exception("unhandled error in the conversation API", extra={"request_id": ctx.request_id})
            with contextlib.suppress(Exception):
                await gateway._send_error(send, errors.internal_error(), ctx)
            ctx.status, ctx.error_code = 500, "internal_error"
            await self._end(ctx, conversation_id, token)
            return
        try:
            await self._run(prepared, state, turn, token, send, receive)
        except Exception:
            # After the dispatch (which billed what the replica did): e.g. Redis refusing the turn's write. The
            # turn isn't kept; the client gets the OpenAI-shaped 500 (if its response hasn't started), never an
            # unshaped one.
            logger.exception("unhandled error in the conversation API", extra={"request_id": ctx.request_id})
            await self.store.release(conversation_id, token)  # before answering: a retry finds it free
            with contextlib.suppress(Exception):
                await gateway._send_error(send, errors.internal_error(), ctx)
        finally:
            await self.store.release(conversation_id, token)

    async def _end(self, ctx: RequestContext, conversation_id: str | None, token: str | None) -> None:
        if token is not None:
            await self.store.release(conversation_id, token)
        await self.gateway.dispatcher.abandon(ctx)

    def _new_state(self, ctx: RequestContext, conversation_id: str, turn: TurnRequest) -> dict:
        record = ctx.key.tenant_record
        now = time.time()
        return {
            "id": conversation_id, "tenant": ctx.key.tenant, "key_id": ctx.key.key_id, "status": "open",
            "model": turn.model or "", "channel": turn.channel or ccaas.DEFAULT_CHANNEL,
            "language": turn.language or ccaas.DEFAULT_LANGUAGE, "customer_id": turn.customer_id or "",
            "metadata": turn.metadata or {}, "opened": now, "updated": now, "turns": [], "escalation": None,
            "placeholders": {}, "redaction": redaction.OFF,
            "scorer": record.sentiment_scorer if record is not None else "lexicon",
        }

    @staticmethod
    def _check_same(state: dict, turn: TurnRequest) -> None:
        """A later turn may repeat the conversation's channel, language and customer id, not change them."""
        for name in ("channel", "language", "customer_id"):
            sent = getattr(turn, name)
            if sent is not None and sent != state[name]:
                raise errors.bad_request(f"`{name}` differs from this conversation's: it is set by the first turn.",
                                         param=name, code="conversation_mismatch")
        sent = turn.metadata
        if sent is not None and state["redaction"] != redaction.OFF:
            sent = _redacted_metadata(sent)  # compared as it was stored
        if sent is not None and sent != state.get("metadata"):
            raise errors.bad_request("`metadata` is set by the first turn.", param="metadata",
                                     code="conversation_mismatch")

    async def _prepare(self, ctx: RequestContext, state: dict, turn: TurnRequest, headers: dict) -> _Prepared:
        mode = redaction.effective_mode(ctx.key.redaction, _asks_for_redaction(headers.get(b"x-wattle-redact")))
        if mode == redaction.OFF and state["redaction"] != redaction.OFF:
            # A conversation that was redacted once stays redacted: its history must never mix in identifiers.
            mode = redaction.REDACT
        redactor = redaction.Redactor(numbered=state["placeholders"]) if mode != redaction.OFF else None
        if redactor is not None and state["redaction"] == redaction.OFF:
            # The first redacted turn of a conversation whose earlier turns weren't: the history goes to the model
            # with this turn, so it is redacted too (else an identifier leaves with a turn that asked for none),
            # and stored so from now on. The decisions' digests keep naming the texts they decided on.
            for earlier in state["turns"]:
                if earlier.get("text"):
                    earlier["text"] = redactor.redact(earlier["text"])
        stored_message = redactor.redact(turn.message) if redactor is not None else turn.message
        if redactor is not None and state["redaction"] == redaction.OFF and state.get("metadata"):
            # Metadata is stored with the history (Redis, GET, the closed record): a redacted conversation keeps no
            # identifier there either (redacted once, on its first redacted turn). Its own placeholders (a fresh
            # numbering, so the same metadata repeated on a later turn compares equal); it never reaches the
            # model, so nothing is restored from it.
            state["metadata"] = _redacted_metadata(state["metadata"])
        context = ccaas.Context(channel=state["channel"], language=state["language"])
        messages = [{"role": "system", "content": context.instruction()}]
        messages += [{"role": t["role"], "content": t["text"]} for t in state["turns"]]
        messages.append({"role": "user", "content": stored_message})
        chat = {"model": state["model"], "messages": messages, "stream": turn.stream}
        customer = state["customer_id"].encode() if state["customer_id"] else None
        # Already redacted here (the dispatch finds nothing more to replace): its counts are ours, and the
        # restoring is done by this module, which alone knows this turn's originals.
        call = await self.gateway.dispatcher.prepare(
            ctx, chat, orjson.dumps(chat), user_agent=headers.get(b"user-agent", b""),
            incoming_traceparent=headers.get(b"traceparent"), customer_header=customer)
        ctx.redactor = None
        if redactor is not None:
            ctx.redactions = dict(redactor.counts)
            if state["redaction"] != redaction.RESTORE:
                state["redaction"] = mode
        return _Prepared(call, mode, redactor, stored_message, messages)

    async def _score(self, ctx: RequestContext, state: dict, text: str) -> sentiment.Scored:
        record = ctx.key.tenant_record
        if record is not None and record.sentiment_scorer == "embedding" and record.sentiment_model:
            return await sentiment.AnchorScorer(record.sentiment_model, self._embedder(ctx)).score(text)
        return await sentiment.LEXICON.score(text)

    def _embedder(self, caller: RequestContext):
        """Embeds texts with the tenant's embedding model through the dispatch (`/v1/embeddings`, billed to the
        caller's key like any request), raising ``EmbeddingFailed`` with the status and code if it fails."""
        gateway = self.gateway

        async def embed(texts: list[str]) -> list[list[float]]:
            ctx = RequestContext("embeddings", gateway.next_request_id())
            ctx.key = caller.key
            ctx.retain = False
            payload = {"model": caller.key.tenant_record.sentiment_model, "input": texts}
            try:
                call = await gateway.dispatcher.prepare(ctx, payload, orjson.dumps(payload))
            except GatewayError as error:
                await gateway.dispatcher.abandon(ctx)
                raise sentiment.EmbeddingFailed(f"{error.status} {error.code or error.type}") from None
            sink = _Collect()
            await gateway.dispatcher.run(call, sink)
            if sink.failed is not None or sink.answer is None:
                error = sink.failed.error if sink.failed is not None else errors.internal_error()
                raise sentiment.EmbeddingFailed(f"{error.status} {error.code or error.type}")
            return _vectors_of(sink.answer)

        return embed

    async def _run(self, prepared: _Prepared, state: dict, turn: TurnRequest, token: str, send, receive) -> None:
        gateway = self.gateway
        call = prepared.call
        ctx = call.ctx
        # The customer's sentiment is scored beside the model's answer (the embedding scorer is a request too).
        scoring = asyncio.create_task(self._score(ctx, state, prepared.stored_message))
        try:
            if turn.stream:
                client = _SseSink(self, send, receive, call, state["id"])
                inner = RestoringSink(client, prepared.redactor, "chat.completions") if (
                    prepared.mode == redaction.RESTORE and prepared.redactor) else client
                capture = _Capture(inner)
                try:
                    await gateway.dispatcher.run(call, capture)
                finally:
                    if client.watcher is not None:
                        client.watcher.cancel()
                if capture.failed is not None or not capture.done or ctx.client_disconnected:
                    # The error was sent (or the client is gone): the turn isn't kept.
                    if client.started and not ctx.client_disconnected:
                        await send({"type": "http.response.body", "body": b"", "more_body": False})
                    return
                raw_reply = transcripts.reply_text("chat.completions", capture.parts)
            else:
                collect = _Collect(on_failed=lambda error: gateway._send_error(send, error, ctx))
                await gateway.dispatcher.run(call, collect)
                if collect.failed is not None or collect.answer is None:
                    return  # the error went to the client; the turn isn't kept
                raw_reply = _reply_of(collect.answer)
            scored = await scoring
        finally:
            if not scoring.done():
                scoring.cancel()
        outcome = self._record_turn(ctx, state, prepared, scored, raw_reply)
        if not await self.store.save(state, token, outcome.record):
            error = GatewayError(409, "This conversation changed during the turn; the turn was not kept. Retry.",
                                 param="conversation_id", code="conversation_busy")
            if turn.stream:
                await send({"type": "http.response.body", "body": b"data: " + error.body() + b"\n\n" + _DONE,
                            "more_body": False})
            else:
                await gateway._send_error(send, error, ctx)
            return
        # The turn is kept: free the conversation before answering, so a client that sends its next turn as soon
        # as it has this reply never waits on (or is refused by) this turn's lock.
        await self.store.release(state["id"], token)
        self._keep_transcript(ctx, state, prepared, raw_reply, outcome.turn_index)
        reply = raw_reply
        if prepared.mode == redaction.RESTORE and prepared.redactor:
            reply = prepared.redactor.restore(raw_reply)
        body = orjson.dumps(self._turn_object(ctx, state, reply, scored.sentiment, outcome))
        if turn.stream:
            await send({"type": "http.response.body", "body": b"data: " + body + b"\n\n" + _DONE,
                        "more_body": False})
        else:
            await gateway._send_json(send, 200, body, [*ctx.response_headers(),
                                                       (_CONVERSATION_HEADER, state["id"].encode())])

    def _record_turn(self, ctx: RequestContext, state: dict, prepared: _Prepared, scored: sentiment.Scored,
                     raw_reply: str) -> _Outcome:
        """Append the customer's turn and the reply to ``state`` (as stored: redacted), decide on escalation, and
        build the ADM record when this turn hands the conversation over."""
        record = ctx.key.tenant_record
        rule = sentiment.EscalationRule.from_record(record) if record is not None else sentiment.EscalationRule()
        customer_turns = [t for t in state["turns"] if t["role"] == "user"]
        trail = [t["sentiment"] for t in customer_turns]
        text = prepared.stored_message
        decision = sentiment.decide(rule, trail, text, scored.sentiment)
        text_sha256 = sentiment.text_digest(text)
        rule_sha256 = rule.digest()
        looked_at = customer_turns[-(rule.turns - 1):] if rule.turns > 1 else []
        inputs_sha256 = sentiment.decision_inputs_digest(
            text_sha256=text_sha256, rule_sha256=rule_sha256, scorer=scored.scorer, score=scored.sentiment.score,
            trail=[(t["text_sha256"], t["sentiment"]) for t in looked_at])
        now = time.time()
        turn_index = len(state["turns"])
        stored_reply = prepared.redactor.redact(raw_reply) if prepared.redactor is not None else raw_reply
        state["turns"].append({
            "role": "user", "text": text, "time": now, "sentiment": scored.sentiment.score,
            "label": scored.sentiment.label, "scorer": scored.scorer, "fallback": scored.fallback,
            "text_sha256": text_sha256, "inputs_sha256": inputs_sha256,
        })
        state["turns"].append({"role": "assistant", "text": stored_reply, "time": time.time(),
                               "request_id": ctx.request_id})
        if prepared.redactor is not None:
            state["placeholders"] = prepared.redactor.numbered
        state["updated"] = now
        decision_bytes = b""
        if decision.escalate and not state.get("escalation"):
            state["escalation"] = {"reason": decision.reason, "detail": decision.detail, "turn": turn_index,
                                   "at": now}
            decision_bytes = contract.EscalationDecision(
                decision_id=f"{state['id']}:{turn_index}", tenant=state["tenant"], conversation_id=state["id"],
                key_id=ctx.key.key_id, time=now, turn=turn_index, escalate=True, reason=decision.reason,
                text_sha256=text_sha256, rule_sha256=rule_sha256, inputs_sha256=inputs_sha256,
                scorer=scored.scorer, score=scored.sentiment.score, label=scored.sentiment.label,
                fallback=scored.fallback,
            ).encode()
        return _Outcome(decision, turn_index, decision_bytes)

    def _keep_transcript(self, ctx: RequestContext, state: dict, prepared: _Prepared, raw_reply: str,
                         turn_index: int) -> None:
        try:
            transcripts.emit_transcript(
                tenant=ctx.key.tenant, retention_days=ctx.key.retention_days, request_id=ctx.request_id,
                prompt=prepared.messages, reply=raw_reply, kind="conversation_turn", key_id=ctx.key.key_id,
                customer_id=state["customer_id"], model=state["model"], endpoint="conversation",
                conversation_id=state["id"], turn=turn_index, status=200, created=ctx.started_wall)
        except Exception as exc:
            logger.error("keeping a conversation transcript failed (%s)", exc.__class__.__name__,
                         extra={"request_id": ctx.request_id})

    @staticmethod
    def _turn_object(ctx: RequestContext, state: dict, reply: str, scored: sentiment.Sentiment,
                     outcome: _Outcome) -> dict:
        escalation = state.get("escalation") or {}
        return {
            "id": ctx.request_id, "object": "conversation.turn", "created": int(ctx.started_wall),
            "conversation_id": state["id"], "model": state["model"], "reply": reply,
            "sentiment": scored.as_dict(),
            # The conversation's: once handed to a person it stays so; ``reason`` says why it first was.
            "escalate": {"flag": bool(escalation), "reason": escalation.get("reason", "")},
            "usage": {"prompt_tokens": ctx.prompt_tokens, "completion_tokens": ctx.completion_tokens,
                      "total_tokens": ctx.prompt_tokens + ctx.completion_tokens},
        }


@dataclass(slots=True)
class _Prepared:
    call: object
    mode: str
    redactor: redaction.Redactor | None
    stored_message: str
    messages: list


@dataclass(slots=True)
class _Outcome:
    decision: sentiment.Escalation
    turn_index: int
    record: bytes  # the ADM record for the stream, or b"" when this turn didn't hand the conversation over


def _vectors_of(answer: bytes) -> list:
    """The vectors of an embeddings answer in input order; ``EmbeddingFailed("malformed_embedding")`` for an answer
    of any other shape (the scorer then falls back to the lexicon rather than failing the turn)."""
    try:
        data = orjson.loads(answer).get("data") or []
        return [item["embedding"] for item in sorted(data, key=lambda item: item.get("index", 0))]
    except (ValueError, TypeError, KeyError, AttributeError):
        raise sentiment.EmbeddingFailed("malformed_embedding") from None


def _redacted_metadata(metadata: dict) -> dict:
    """``metadata`` with every identifier in its strings (keys included) replaced by a placeholder numbered within
    the metadata alone: the same metadata always redacts to the same document."""
    redactor = redaction.Redactor()

    def walk(value):
        if isinstance(value, str):
            return redactor.redact(value)
        if isinstance(value, dict):
            return {redactor.redact(k): walk(v) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v) for v in value]
        return value

    return walk(metadata)


def _reply_of(answer: bytes) -> str:
    data = orjson.loads(answer)
    choices = data.get("choices") or [{}]
    return (choices[0].get("message") or {}).get("content") or ""
