"""The playground's WebSocket consumer: a console member's chat, sent through the same dispatch as `/v1`.

Each reply is one streamed chat completion prepared and run by ``inference.gateway.dispatch.Dispatcher`` as the
tenant's "Playground" caller (``KeyAuthenticator.tenant_caller``: the tenant's published record, key id
``core.keys.PLAYGROUND_KEY_ID``), so the tenant's limits, its suspension and payment state, routing, retries,
cold-start hold, cancellation and settlement (one usage event, billed to the tenant) are exactly the API's. Its
events reach only this connection's socket: the sink holds the consumer it writes to, and no channel-layer group
carries a reply.

Security (docs/playground.md lists the close codes): the socket is mounted behind the allowed-hosts origin
check and the session authentication (``portal.routing``); access is re-read from the database on connect and
for every frame (``inference.playground.playground_access``), so a member removed or demoted mid-session is cut
off at their next frame, and the reply in flight is stopped (and billed for what ran). Frames are bounded in size
(``INFERENCE_PLAYGROUND_MAX_MESSAGE_BYTES``) and rate (``INFERENCE_PLAYGROUND_RATE``/``_BURST``); a malformed
frame gets an error frame, never a crash. Nothing here logs what anyone typed or what the model answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from decimal import Decimal

import orjson
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings

from core import money, sentiment
from core.keys import PLAYGROUND_KEY_ID
from inference.gateway import errors
from inference.gateway.app import gateway
from inference.gateway.dispatch import Answer, Delta, Failed, Opened, RequestContext, Usage
from inference.gateway.errors import GatewayError
from inference.playground import (
    Assessment,
    Chat,
    Close,
    FrameAllowance,
    Ping,
    PlaygroundAccess,
    Stop,
    assess,
    parse_frame,
    playground_access,
    rate_limited,
    record_escalation,
    too_large,
)

logger = logging.getLogger("wattle.playground")

_READY_WAIT_S = 5.0  # how long a new socket waits for the data plane's first view of the backends
_FLOODING_REFUSALS = 20  # refused frames in a row before the connection is closed
_MAX_KEPT_SCORES = 1024  # customer turns' scores one connection remembers (a conversation has at most 256 messages)


class PlaygroundConsumer(AsyncWebsocketConsumer):
    # Not on the channel layer: nothing is ever sent to a playground socket through it (a reply goes from the
    # dispatch to its own socket only), and a subscription per socket would cost a blocking Redis read each under
    # channels-redis, whose read timeout under load ended the socket with an exception (``make bench`` P6 saw it
    # at 50 sockets). Off the layer, no other process can address a playground socket at all.
    channel_layer_alias = None

    async def connect(self) -> None:
        self.slug: str = self.scope["url_route"]["kwargs"]["slug"]
        self.access: PlaygroundAccess | None = None
        self.turn: _Turn | None = None
        self.scores: dict[tuple[str, str, str], sentiment.Scored] = {}  # customer mode: turn scores, by digest
        self.closed = False
        self.allowance = FrameAllowance(rate=settings.INFERENCE_PLAYGROUND_RATE,
                                        burst=settings.INFERENCE_PLAYGROUND_BURST)
        self.max_bytes: int = settings.INFERENCE_PLAYGROUND_MAX_MESSAGE_BYTES
        # Accepted before the checks so that a refusal reaches the page as a close code (a refused handshake is
        # only "1006" to a browser, which would keep reconnecting).
        await self.accept()
        access = await self._check_access()
        if isinstance(access, Close):
            await self._close(access)
            return
        self.access = access
        await gateway.startup()  # a no-op once the process's lifespan has started it
        await self._send({"type": "ready", "tenant": self.slug, **await self._catalogue(),
                          "max_message_bytes": self.max_bytes})

    async def disconnect(self, code: int) -> None:
        self.closed = True
        turn = self.turn
        if turn is not None:
            turn.call.cancel()  # the browser went away: stop generating, bill what ran
            with contextlib.suppress(Exception):
                await turn.task

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self.access is None or self.closed:
            return
        # Every frame takes from the allowance first, an oversized one too: else a client could send frames of
        # the server's maximum (16 MiB) without end, each read, measured and answered, and never be closed.
        wait_s = self.allowance.take()
        if wait_s:
            if self.allowance.refused_in_a_row >= _FLOODING_REFUSALS:
                logger.warning("playground: closing a socket that kept flooding (tenant %s)", self.access.tenant_id)
                await self._close(Close.FLOODING)
            else:
                await self._error(None, rate_limited(wait_s))
            return
        # A character is at least one byte: only a text that might fit is encoded to be measured exactly.
        if text_data is not None:
            size = len(text_data) if len(text_data) > self.max_bytes else len(text_data.encode())
        else:
            size = len(bytes_data or b"")
        if size > self.max_bytes:
            await self._error(None, too_large(self.max_bytes))
            return
        access = await self._check_access()
        if isinstance(access, Close):
            # Admitted earlier, so "not a member" now means the membership ended: forbidden, not unknown.
            await self._close(Close.FORBIDDEN if access is Close.NOT_FOUND else access)
            return
        self.access = access  # as it is now: the tenant's escalation rule included
        if text_data is None:
            await self._error(None, errors.bad_request("Frames must be JSON text.", code="invalid_json"))
            return
        try:
            frame = parse_frame(text_data)
        except GatewayError as error:
            await self._error(None, error)
            return
        if isinstance(frame, Chat):
            await self._start(frame)
        elif isinstance(frame, Stop):
            turn = self.turn
            if turn is not None and frame.turn in (None, turn.id):
                turn.stopped = True
                turn.call.cancel()
        elif isinstance(frame, Ping):
            await self._send({"type": "pong"})

    # --- one reply ---------------------------------------------------------------------------------
    async def _start(self, frame: Chat) -> None:
        if self.turn is not None:
            await self._error(frame.turn, GatewayError(
                409, "A reply is still streaming: stop it or wait for it to finish.", code="busy"))
            return
        dispatcher = gateway.dispatcher
        ctx = RequestContext("chat.completions", gateway.next_request_id())
        # Whose turn, in which chat session: the transcript record carries both when the tenant keeps transcripts
        # (the member's history, ``inference.playground_history``); nothing is kept otherwise.
        ctx.conversation_id, ctx.member = frame.conversation, self.access.user_id
        try:
            ctx.key = await gateway.auth.tenant_caller(self.access.tenant_id, key_id=PLAYGROUND_KEY_ID)
            # Customer mode: the customer's turn is scored and decided on before the reply (a refused tenant is
            # refused above, before any decision is made).
            if frame.context is not None and not await self._customer_turn(frame, ctx):
                ctx.status, ctx.error_code = 500, "internal_error"
                await dispatcher.abandon(ctx)
                return
            call = await dispatcher.prepare(ctx, frame.payload, orjson.dumps(frame.payload))
        except GatewayError as error:
            ctx.status, ctx.error_code = error.status, error.code or error.type
            await self._error(frame.turn, error, request_id=ctx.request_id)
            await dispatcher.abandon(ctx)
            return
        except Exception:
            logger.exception("playground: preparing a request failed", extra={"request_id": ctx.request_id})
            ctx.status, ctx.error_code = 500, "internal_error"
            await self._error(frame.turn, errors.internal_error(), request_id=ctx.request_id)
            await dispatcher.abandon(ctx)
            return
        turn = _Turn(self, frame.turn, call)
        self.turn = turn
        turn.task = asyncio.create_task(self._run(turn))

    async def _run(self, turn: _Turn) -> None:
        ctx = turn.call.ctx
        try:
            await gateway.dispatcher.run(turn.call, turn)  # settles (one usage event) however it ends
        finally:
            self.turn = None
        if self.closed:
            return
        if turn.failure is not None:
            await self._error(turn.id, turn.failure.error, request_id=ctx.request_id)
            if not turn.opened:
                return  # refused before the reply began: the error frame ends the turn
        pool = gateway.dispatcher.pool
        await self._send({
            "type": "done", "id": turn.id, "request_id": ctx.request_id, "model": ctx.model,
            "status": ctx.status, "stopped": turn.stopped, "finish_reason": turn.finish_reason,
            "prompt_tokens": ctx.prompt_tokens, "completion_tokens": ctx.completion_tokens,
            "ttft_ms": round(ctx.ttft_s * 1000, 1) if ctx.ttft_s is not None else None,
            "total_ms": round(turn.total_s * 1000, 1),
            # What the usage event costs the tenant: its prices, as its spend limit counts them (micro-A$, up).
            "cost_aud": _aud(cost := pool.cost_micro_aud(ctx.model, ctx.prompt_tokens, ctx.completion_tokens,
                                                         ctx.key.price_list)),
            "cost_shown": money.format_cost(Decimal(cost) / 1_000_000),  # as every page writes money
        })

    async def _customer_turn(self, frame: Chat, ctx: RequestContext) -> bool:
        """Customer-conversation mode: score the customer's latest turn with the tenant's scorer, decide on
        escalation with its rule, record the decision in the audit chain and tell the page (its gauge and banner),
        before the reply starts. False if that failed (the page has its error frame and the turn ends)."""
        request_id = ctx.request_id
        try:
            assessment = await assess(frame.payload["messages"], self.access.record, self._scorer(ctx.key))
            if assessment is None:
                return True
            await database_sync_to_async(record_escalation)(self.access, assessment, request_id=request_id)
        except Exception:
            # An automated decision that can't be recorded is not made: the turn is refused, not sent unrecorded.
            logger.exception("playground: scoring or recording a customer turn failed",
                             extra={"request_id": request_id})
            await self._error(frame.turn, errors.internal_error(), request_id=request_id)
            return False
        await self._send(_sentiment_frame(frame.turn, request_id, assessment))
        return True

    def _scorer(self, key):
        """The tenant's scorer as the conversation API chooses it: its embedding model through the same dispatch
        (`/v1/embeddings`, billed to the tenant as the playground; the lexicon answers if that fails, and says
        why), else the lexicon. Scores are kept for this connection by turn digest, so each turn is embedded once
        however long the conversation the page sends back."""
        record = self.access.record
        if record.sentiment_scorer == "embedding" and record.sentiment_model:
            scorer = sentiment.AnchorScorer(record.sentiment_model, _embedder(key, record.sentiment_model))
        else:
            scorer = sentiment.LEXICON
        scores = self.scores

        async def score(text: str) -> sentiment.Scored:
            name = (scorer.name, getattr(scorer, "model", ""), sentiment.text_digest(text))
            scored = scores.get(name)
            if scored is None:
                scored = await scorer.score(text)
                if not scored.fallback:  # a failed embedding is tried again next turn
                    if len(scores) >= _MAX_KEPT_SCORES:
                        scores.pop(next(iter(scores)))
                    scores[name] = scored
            return scored

        return score

    # --- helpers -----------------------------------------------------------------------------------
    async def _check_access(self) -> PlaygroundAccess | Close:
        user = self.scope.get("user")
        session = self.scope.get("session")
        if user is None or not user.is_authenticated or session is None:
            return Close.NOT_SIGNED_IN
        return await database_sync_to_async(playground_access)(
            session_key=session.session_key, user_id=str(user.pk), slug=self.slug)

    async def _catalogue(self) -> dict:
        """The models the data plane serves now, and what 1,000 tokens of each cost this tenant (A$, GST
        exclusive; its plan's prices where it has them)."""
        pool = gateway.pool
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(pool.wait_ready(), _READY_WAIT_S)
        try:
            price_list = (await gateway.auth.tenant_caller(self.access.tenant_id, key_id=PLAYGROUND_KEY_ID)).price_list
        except GatewayError:
            price_list = None  # suspended or unreadable: the platform's prices (each reply says why it's refused)
        models = [{
            "id": model, "max_model_len": pool.max_model_len(model),
            "input_per_1k_aud": _aud(pool.cost_micro_aud(model, 1000, 0, price_list)),
            "output_per_1k_aud": _aud(pool.cost_micro_aud(model, 0, 1000, price_list)),
        } for model in sorted(pool.known_models())]
        return {"models": models}

    async def _close(self, code: Close) -> None:
        turn = self.turn
        if turn is not None:
            turn.call.cancel()
        self.closed = True
        logger.info("playground: socket closed with %s (tenant slug %s)", int(code), self.slug[:80])
        await self.close(code=int(code))

    async def _send(self, frame: dict) -> None:
        if not self.closed:
            await self.send(text_data=orjson.dumps(frame).decode())

    async def _error(self, turn: str | None, error: GatewayError, *, request_id: str | None = None) -> None:
        frame = {"type": "error", "id": turn, "status": error.status, "code": error.code or error.type,
                 "message": error.message, "error": orjson.loads(error.body())["error"]}
        if request_id is not None:
            frame["request_id"] = request_id
        retry_after = error.headers.get("retry-after")
        if retry_after is not None:
            frame["retry_after"] = int(retry_after) if retry_after.isdigit() else retry_after
        await self._send(frame)


def _embedder(key, model: str):
    """Embeds texts with ``model`` through the dispatch as the playground's caller; raises ``EmbeddingFailed`` with
    the status and code (never text) if it fails."""

    async def embed(texts: list[str]) -> list[list[float]]:
        dispatcher = gateway.dispatcher
        ctx = RequestContext("embeddings", gateway.next_request_id())
        ctx.key = key
        payload = {"model": model, "input": texts}
        try:
            call = await dispatcher.prepare(ctx, payload, orjson.dumps(payload))
        except GatewayError as error:
            ctx.status, ctx.error_code = error.status, error.code or error.type
            await dispatcher.abandon(ctx)
            raise sentiment.EmbeddingFailed(f"{error.status} {error.code or error.type}") from None
        sink = _Answer()
        await dispatcher.run(call, sink)
        if sink.failed is not None or sink.body is None:
            error = sink.failed.error if sink.failed is not None else errors.internal_error()
            raise sentiment.EmbeddingFailed(f"{error.status} {error.code or error.type}")
        data = orjson.loads(sink.body).get("data") or []
        return [item["embedding"] for item in sorted(data, key=lambda item: item.get("index", 0))]

    return embed


class _Answer:
    """The dispatch's sink for a whole (not streamed) answer: its body, or the failure."""

    __slots__ = ("body", "failed")

    def __init__(self) -> None:
        self.body: bytes | None = None
        self.failed: Failed | None = None

    async def delta(self, delta: Delta) -> None:  # not streamed: never called
        pass

    async def events(self, events: list) -> None:
        for event in events:
            if isinstance(event, Answer):
                self.body = event.body
            elif isinstance(event, Failed):
                self.failed = event


def _sentiment_frame(turn: str, request_id: str, assessment: Assessment) -> dict:
    return {"type": "sentiment", "id": turn, "request_id": request_id, "turn": assessment.turn,
            "score": round(assessment.score, 3), "label": assessment.label,
            "escalate": {"escalate": assessment.escalate, "reason": assessment.reason}}


def _aud(micro_aud: int) -> str:
    return f"{micro_aud / 1_000_000:.6f}"


class _Turn:
    """One reply in flight: the dispatch's sink, writing to its own consumer's socket only."""

    __slots__ = ("call", "consumer", "failure", "finish_reason", "id", "opened", "stopped", "task")

    def __init__(self, consumer: PlaygroundConsumer, turn_id: str, call) -> None:
        self.consumer, self.id, self.call = consumer, turn_id, call
        self.task: asyncio.Task | None = None
        self.failure: Failed | None = None
        self.finish_reason: str | None = None
        self.opened = False
        self.stopped = False

    @property
    def total_s(self) -> float:
        return time.perf_counter() - self.call.ctx.started

    async def delta(self, delta: Delta) -> None:
        if self.consumer.closed:
            self.call.cancel()  # the socket is gone: stop at once rather than write to it
            return
        text = []
        for chunk in delta.chunks():
            for choice in chunk.get("choices") or ():
                if choice.get("index", 0) != 0:
                    continue
                content = (choice.get("delta") or {}).get("content")
                if content:
                    text.append(content)
                if choice.get("finish_reason"):
                    self.finish_reason = choice["finish_reason"]
        if text:
            await self.consumer._send({"type": "delta", "id": self.id, "content": "".join(text)})

    async def events(self, events: list) -> None:
        for event in events:
            if isinstance(event, Delta):
                await self.delta(event)
            elif isinstance(event, Opened):
                self.opened = True
                ctx = self.call.ctx
                await self.consumer._send({"type": "start", "id": self.id, "request_id": ctx.request_id,
                                           "model": ctx.model})
            elif isinstance(event, Failed):
                self.failure = event
            elif isinstance(event, Usage):
                pass  # the counts are on the request's context once it has settled (the done frame)
