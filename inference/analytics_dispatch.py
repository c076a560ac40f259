"""The post-call analysis's model call, through the same dispatch as `/v1`, from synchronous code (a Celery task).

The dispatch is async and its clients (Redis, the upstream pool) belong to one event loop, so each worker process
keeps one loop in a thread of its own with a private ``Gateway`` on it, started on first use (after any fork) and
reused by every analysis the process runs. A call is a chat completion prepared and run by that gateway's
``Dispatcher`` as the tenant's "Post-call analytics" caller (``KeyAuthenticator.tenant_caller`` with
``core.keys.ANALYTICS_KEY_ID``): the tenant's limits, suspension and payment state, redaction, routing, retries and
settlement (one usage event, billed to the tenant) are exactly the API's.

The conversation's content is the conversation API's to keep (its transcript store), so the analysis's request is
not captured again for retention (``RequestContext.retain`` False).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import os
import threading
from dataclasses import dataclass

import orjson

from core.keys import ANALYTICS_KEY_ID
from inference.gateway.dispatch import Answer, Failed, RequestContext
from inference.gateway.errors import GatewayError

logger = logging.getLogger("wattle.analytics")


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one model call gave: the reply's text (None when it failed), why it failed, and what it cost."""

    content: str | None
    finish_reason: str | None
    error: GatewayError | None
    request_id: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    cost_micro_aud: int


class _Collect:
    """The dispatch's sink for one non-streamed answer."""

    __slots__ = ("answer", "failure")

    def __init__(self) -> None:
        self.answer: bytes | None = None
        self.failure: Failed | None = None

    async def delta(self, delta) -> None:  # never streamed
        return None

    async def events(self, events: list) -> None:
        for event in events:
            if isinstance(event, Answer):
                self.answer = event.body
            elif isinstance(event, Failed):
                self.failure = event


class _Bridge:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._gateway = None

    def _ensure(self):
        with self._lock:
            if self._pid == os.getpid() and self._loop is not None and self._loop.is_running():
                return self._loop, self._gateway
            from inference.gateway.app import Gateway

            loop = asyncio.new_event_loop()
            thread = threading.Thread(target=loop.run_forever, name="analytics-dispatch", daemon=True)
            thread.start()
            gateway = Gateway()
            asyncio.run_coroutine_threadsafe(gateway.startup(), loop).result(timeout=30)
            self._pid, self._loop, self._gateway = os.getpid(), loop, gateway
            return loop, gateway

    def chat(self, *, tenant_id: str, payload: dict, timeout_s: float) -> Outcome:
        loop, gateway = self._ensure()
        future = asyncio.run_coroutine_threadsafe(_chat(gateway, tenant_id, payload), loop)
        try:
            return future.result(timeout=timeout_s)
        except TimeoutError:
            future.cancel()  # the dispatch hangs up on the replica and bills what ran
            raise

    def close(self) -> None:
        """Flush the usage events the private gateway still buffers (at process exit)."""
        with self._lock:
            if self._loop is None or self._pid != os.getpid():
                return
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self._gateway.shutdown(), self._loop).result(timeout=10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._loop = None


async def _chat(gateway, tenant_id: str, payload: dict) -> Outcome:
    dispatcher = gateway.dispatcher
    ctx = RequestContext("chat.completions", gateway.next_request_id())
    ctx.retain = False
    collect = _Collect()
    try:
        ctx.key = await gateway.auth.tenant_caller(tenant_id, key_id=ANALYTICS_KEY_ID)
        call = await dispatcher.prepare(ctx, payload, orjson.dumps(payload))
    except GatewayError as error:
        ctx.status, ctx.error_code = error.status, error.code or error.type
        await dispatcher.abandon(ctx)
        return _outcome(gateway, ctx, None, None, error)
    try:
        await dispatcher.run(call, collect)  # settles (one usage event) however it ends
    except asyncio.CancelledError:
        call.cancel()
        raise
    if collect.failure is not None or collect.answer is None:
        error = collect.failure.error if collect.failure is not None else GatewayError(
            502, "The model backend sent no answer.", type="server_error", code="upstream_error")
        return _outcome(gateway, ctx, None, None, error)
    try:
        choice = orjson.loads(collect.answer)["choices"][0]
        content = choice["message"].get("content") or ""
        finish_reason = choice.get("finish_reason")
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, AttributeError):
        return _outcome(gateway, ctx, None, None, GatewayError(
            502, "The model backend's answer was malformed.", type="server_error", code="upstream_error"))
    return _outcome(gateway, ctx, content, finish_reason, None)


def _outcome(gateway, ctx: RequestContext, content, finish_reason, error) -> Outcome:
    cost = 0
    if ctx.model and (ctx.prompt_tokens or ctx.completion_tokens):
        price_list = ctx.key.price_list if ctx.key is not None else None
        cost = gateway.pool.cost_micro_aud(ctx.model, ctx.prompt_tokens, ctx.completion_tokens, price_list)
    return Outcome(content=content, finish_reason=finish_reason, error=error, request_id=ctx.request_id,
                   model=ctx.model, prompt_tokens=ctx.prompt_tokens, completion_tokens=ctx.completion_tokens,
                   cost_micro_aud=cost)


bridge = _Bridge()
atexit.register(bridge.close)
