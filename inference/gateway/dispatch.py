"""Dispatch without a transport: a validated request and its caller in, the answer out as events.

Everything between "this caller may send this body" and "the usage event is written" happens here, the same for
every way in: the `/v1` ASGI adapter (``inference.gateway.app``), and the playground and conversation API, which
call ``Dispatcher.prepare`` and ``Dispatcher.run`` with a body they built themselves.

``prepare`` checks the request against the model pool and the caller (known model, allowed for the key, valid
for its endpoint, within the context) and queues its admission. ``run`` concludes the admission (beside the
upstream call when it can: a refusal hangs up on the replica at once), routes to the least-loaded healthy
replica, retries another before the first byte, holds a request while a scaled-to-zero model warms up, relays
the answer and, whatever happened, settles: the limits get the true counts and exactly one usage event is
written.

``run`` hands the answer to the caller's ``Sink`` as events: ``Sink.delta`` for a stream's everyday step (the
replica's bytes of whole content events), ``Sink.events`` for everything else, one list per read from the
replica, so a transport can write each list at once (one system call for what arrived together). A sink's calls
cost a plain await each: an async generator would add two coroutine hops per streamed chunk. The events:

- ``Opened``: a stream's answer starts (the replica accepted it); the stream's events follow.
- ``Delta``: SSE bytes of one or more content events as the replica sent them (zero-copy: the `/v1` adapter
  writes them unchanged). A chat stream's first carries the role. ``Delta.chunks()`` parses them.
- ``Usage``: the token counts; ``raw`` is the event's bytes when the caller asked to see it, else None.
- ``Done``: the stream ended normally (``raw`` is ``data: [DONE]``).
- ``Answer``: a whole JSON answer (not streamed), ``body`` as the replica sent it.
- ``Failed``: an OpenAI-shaped error. ``started`` False: nothing was sent yet, answer with the error; True: a
  stream failed midway (the `/v1` adapter writes the protocol's error frame).

A caller that goes away calls ``Call.cancel()``: the replica is hung up on (vLLM aborts the request) and what
it did is billed.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import time

import orjson
from django.conf import settings

from core import contract, redaction
from inference.gateway import digests, errors, metrics, transcripts, validation
from inference.gateway import redact as redact_texts
from inference.gateway.backends import BackendState
from inference.gateway.errors import GatewayError
from inference.gateway.exchange import (
    Answer,
    Call,
    ClientGone,
    Delta,
    Done,
    Event,
    Failed,
    Opened,
    RequestContext,
    Sink,
    Usage,
    traceparent,
)
from inference.gateway.upstream import UpstreamError, UpstreamTimeout
from inference.lru import LRU

logger = logging.getLogger("wattle.gateway")

# Upstream statuses worth trying on another replica, before any byte reached the client.
_RETRYABLE_STATUSES = frozenset({502, 503, 504})
_DONE = b"data: [DONE]"
_STREAM_FAILED = GatewayError(502, "The model backend failed while streaming.", type="server_error",
                              code="upstream_stream_error")


_ENDPOINT_PATHS = {"chat.completions": "/v1/chat/completions", "completions": "/v1/completions",
                   "embeddings": "/v1/embeddings"}


class Dispatcher:
    def __init__(self, *, pool, limiter, upstream, usage, access_log) -> None:
        self.pool = pool
        self.limiter = limiter
        self.upstream = upstream
        self.usage = usage
        self.access_log = access_log
        # (tenant, key id) -> when the limits last refused it (monotonic). Bounded, evicting the least recently seen
        # key: a key forgotten here is only checked beside its upstream call again, and cancelled there if refused.
        # The tenant is part of it because every tenant's playground caller has the same key id.
        self._refused_at: LRU[tuple[str, str], float] = LRU(10_000)
        self._rules = validation.Rules.from_settings()
        self._cache_salt_key = settings.INFERENCE_CACHE_SALT_SECRET.encode()
        self._cache_salts: LRU[str, str] = LRU(10_000)  # tenant id -> its salt (derived from the key above)
        self._limits_parallel = settings.INFERENCE_LIMITS_PARALLEL
        self._parallel_backoff_s = settings.INFERENCE_LIMITS_PARALLEL_BACKOFF_S

    # --- preparation -------------------------------------------------------------------------------
    async def prepare(self, ctx: RequestContext, payload: dict, body: bytes, *, user_agent: bytes = b"",
                      incoming_traceparent: bytes | None = None, redact: bool = False,
                      customer_header: bytes | None = None) -> Call:
        """Check ``payload`` (whose encoding is ``body``) for ``ctx.endpoint`` and the caller ``ctx.key``, and
        queue its admission. Raises the OpenAI-shaped GatewayError the caller should see. Personal information is
        redacted when the tenant's mode says so, or ``redact`` (the caller asked: at least redact).
        ``customer_header``: the ``x-wattle-customer-id`` header, if sent (it wins over the body's ``user``)."""
        model = payload.get("model")
        if not isinstance(model, str) or not model:
            raise errors.bad_request("You must provide a model parameter.", param="model")
        await self.pool.wait_ready()
        if model not in self.pool.known_models():
            # Before the name is kept anywhere: an unknown name reaches no log, usage event or metric label.
            raise errors.model_not_found(model)
        ctx.model = model
        if not ctx.key.allows_model(model):
            raise GatewayError(
                403, f"This API key is not allowed to use the model `{model}`.", type="permission_error",
                param="model", code="model_not_allowed",
            )
        endpoint = ctx.endpoint
        # The prompt's digest is of what the client sent: before the preparer rewrites messages for the replica (a
        # developer role, Mistral's tool call ids, safe_prompt) and before redaction; the access record keeps it.
        prompt_sha256 = digests.prompt_sha256(endpoint, payload)
        prepared = validation.PREPARERS[endpoint](payload, self._rules)
        ctx.customer_id = digests.customer_id(payload, customer_header)
        max_model_len = self.pool.max_model_len(model)
        await validation.check_context_length(endpoint, model, prepared, max_model_len)
        self._begin_admission(ctx, prepared, max_model_len)
        ctx.prompt_sha256 = prompt_sha256
        mode = redaction.effective_mode(ctx.key.redaction, redact)
        if mode != redaction.OFF:
            # After admission is queued (its Redis round trip overlaps this), before any byte is encoded for the
            # replica. Fails closed: an error here is the request's 500, never an unredacted body.
            redact_texts.apply(ctx, prepared, mode=mode)
        ctx.stream = prepared.stream
        ctx.payload, ctx.n, ctx.prompt_upper = payload, prepared.n, prepared.prompt_tokens_upper
        forward_usage = False
        if ctx.stream:
            options = dict(payload.get("stream_options") or {})
            # Mistral's SDK never asks, but expects usage at the end of a stream as La Plateforme sends it.
            forward_usage = options.get("include_usage") is True or user_agent.startswith(b"mistral-client")
            # Always ask upstream for usage: streamed tokens are billed from it.
            options["include_usage"] = True
            payload["stream_options"] = options
        upstream_body = validation.upstream_body(body, prepared, cache_salt=self._cache_salt(ctx.key.tenant))
        ctx.traceparent = traceparent(incoming_traceparent, ctx.request_id)
        return Call(ctx, upstream_body, _ENDPOINT_PATHS[endpoint], forward_usage)

    def _cache_salt(self, tenant: str) -> str:
        """The tenant's ``cache_salt``: vLLM shares cached prompt prefixes only between requests with the same
        salt, so one tenant can't time another's prompts. Keyed by a server secret, so no one can compute
        another tenant's; the same on every worker, so a tenant's own prefixes stay cached. Remembered per
        tenant (an HMAC costs ~1.9 µs, the lookup ~0.07)."""
        salt = self._cache_salts.get(tenant)
        if salt is None:
            salt = hmac.digest(self._cache_salt_key, tenant.encode(), "sha256")[:16].hex()
            self._cache_salts.put(tenant, salt)
        return salt

    # --- admission ---------------------------------------------------------------------------------
    def _begin_admission(self, ctx: RequestContext, prepared, max_model_len: int) -> None:
        """Queue the reservation of the most this request can cost (``validation.reservation``): every prompt
        and every token its choices may generate, which vLLM is told explicitly. ``ctx.admitting`` stays None
        when nothing is limited."""
        prompt, completion = validation.reservation(prepared, max_model_len)
        spend = self.pool.cost_micro_aud(ctx.model, prompt, completion, ctx.key.price_list)
        ctx.admitting = self.limiter.begin(ctx.key, tokens=prompt + completion, spend=spend, slot=ctx.request_id,
                                            started=ctx.started_wall)

    def _admit_in_parallel(self, ctx: RequestContext) -> bool:
        """Whether to call the replica while the limits check runs: yes, unless parallel checks are off, Redis
        is failing, or this key was refused lately (its next request is likely refused too, and would only
        start work upstream that gets cancelled)."""
        if not self._limits_parallel or self.limiter.failing:
            return False
        refused = self._refused_at.get((ctx.key.tenant, ctx.key.key_id))
        return refused is None or time.monotonic() - refused > self._parallel_backoff_s

    async def _finish_admission(self, ctx: RequestContext) -> None:
        """Wait for the limits check begun for this request; raise its 429 (or 503) if it refused. The one place
        an admission is concluded (a no-op once it has been)."""
        pending, ctx.admitting = ctx.admitting, None
        if pending is None:
            return
        try:
            ctx.admission = await self.limiter.finish(pending)
        except GatewayError as refusal:
            if refusal.status == 429:
                self._refused_at.put((ctx.key.tenant, ctx.key.key_id), time.monotonic())
            raise

    # --- the exchange ------------------------------------------------------------------------------
    async def run(self, call: Call, sink: Sink) -> None:
        """Send the answer to ``sink`` as events (see the module's docstring); settles when it ends, however it
        ends. An exception the sink raises ends the request as a 500 (logged), billed for what the replica did."""
        ctx = call.ctx
        opened = False
        if ctx.redactor is not None:
            sink = redact_texts.RestoringSink(sink, ctx.redactor, ctx.endpoint)
        capture = None
        if transcripts.wants_capture(ctx):
            # Outermost, so it sees the replica's text before restore mode puts originals back.
            sink = capture = transcripts.ReplyCapture(sink)
        try:
            if ctx.admitting is not None and not self._admit_in_parallel(ctx):
                await self._finish_admission(ctx)
            tried: set[str] = set()
            pending = metrics.pending(ctx.model)
            pending.inc()
            try:
                while True:
                    backend = await self._choose(ctx, tried)
                    tried.add(backend.name)
                    backend.outstanding += 1
                    try:
                        response = await self._send(ctx, call, backend)
                        if response is None:
                            continue  # that replica failed before answering: try another
                        try:
                            if response.status in _RETRYABLE_STATUSES:
                                backend.record_failure(f"HTTP {response.status}")
                                self.pool.probe_soon(backend)
                                continue
                            ctx.backend = backend.name
                            if response.status != 200:
                                await self._raise_upstream_error(ctx, response)
                            if ctx.stream:
                                opened = True
                                ctx.status = 200
                                await sink.events([Opened(stream=True)])
                                call._response = response
                                await self._relay_stream(call, response, backend, sink)
                            else:
                                await sink.events([Answer(await self._read_json(ctx, response, backend))])
                            return
                        finally:
                            call._response = None
                            response.release()
                    finally:
                        backend.outstanding -= 1
            finally:
                pending.dec()
        except GatewayError as exc:
            error = exc
            # Refused by the limits check that ran beside it? Then that is the answer, whatever else failed.
            try:
                await self._finish_admission(ctx)
            except GatewayError as refusal:
                error = refusal
            ctx.status, ctx.error_code = error.status, error.code or error.type
            await sink.events([Failed(error, started=opened)])
        except ClientGone:
            ctx.client_disconnected = True
            ctx.status, ctx.error_code = 499, "client_closed_request"
        except Exception:
            logger.exception("unhandled error in dispatch", extra={"request_id": ctx.request_id})
            ctx.status, ctx.error_code = 500, "internal_error"
            with contextlib.suppress(Exception):
                await sink.events([Failed(errors.internal_error(), started=opened)])
        finally:
            if ctx.admitting is not None:
                # Ended before the check was looked at (client gone, internal error): conclude it, so that an
                # admission it made is settled and its slot freed.
                with contextlib.suppress(Exception):
                    await self._finish_admission(ctx)
            self.settle(ctx)
            if capture is not None:
                transcripts.emit_captured(ctx, capture)

    async def abandon(self, ctx: RequestContext) -> None:
        """A request that ended before ``run`` (``prepare`` refused it, or its caller went away): conclude any
        admission it queued, and settle it (a request refused after authentication still has its usage event)."""
        if ctx.admitting is not None:
            with contextlib.suppress(Exception):
                await self._finish_admission(ctx)
        self.settle(ctx)

    async def _choose(self, ctx: RequestContext, tried: set[str]) -> BackendState:
        candidates = self.pool.candidates(ctx.model, exclude=tried)
        if candidates:
            return candidates[0]
        retry_after = settings.INFERENCE_RETRY_AFTER_S
        if tried:
            raise errors.no_capacity(ctx.model, retry_after)
        # No replica can take it: the model may be scaled to zero. Ask for one and hold the request, once the
        # limits have admitted it (a refused request must not start a GPU).
        await self._finish_admission(ctx)
        self.pool.request_warmup(ctx.model)
        deadline = time.monotonic() + settings.INFERENCE_COLD_START_HOLD_S
        t_hold = time.perf_counter()
        candidates = await self.pool.wait_for_capacity(ctx.model, deadline)
        ctx.upstream_s += time.perf_counter() - t_hold  # waiting for capacity is not gateway overhead
        if not candidates:
            raise errors.no_capacity(ctx.model, retry_after)
        return candidates[0]

    async def _send(self, ctx: RequestContext, call: Call, backend: BackendState):
        """Send the request upstream; the response, or None if the replica failed before answering (the caller
        tries another). While the limits check begun for it is still out, the two run side by side (on a pooled
        connection the request is written before the check is awaited), and the check is always concluded
        first: a refusal hangs up on the replica at once, whatever the request's state (sent, or already
        answered), so a refused request costs the replica at most the time the check took, and nothing of the
        replica's answer reaches the client."""
        t_up = time.perf_counter()
        try:
            exchange = self.upstream.begin(
                backend.url, call.path, call.body,
                headers={"X-Request-Id": ctx.request_id, "traceparent": ctx.traceparent},
                authorization=backend.authorization,
            )
            if ctx.admitting is not None:
                try:
                    await self._finish_admission(ctx)
                except BaseException:
                    exchange.cancel()
                    raise
            response = await exchange.response()
        except UpstreamTimeout:
            ctx.upstream_s += time.perf_counter() - t_up
            backend.record_failure("timeout")
            raise errors.upstream_timeout() from None
        except UpstreamError as exc:
            ctx.upstream_s += time.perf_counter() - t_up
            backend.record_failure(str(exc))
            self.pool.probe_soon(backend)
            return None
        ctx.upstream_s += time.perf_counter() - t_up
        return response

    async def _read_json(self, ctx: RequestContext, response, backend: BackendState) -> bytes:
        t_up = time.perf_counter()
        try:
            data = await response.read()
        except UpstreamTimeout:
            backend.record_failure("timeout")
            raise errors.upstream_timeout() from None
        except UpstreamError as exc:
            backend.record_failure(str(exc))
            self.pool.probe_soon(backend)
            raise GatewayError(
                502, "The model backend failed while answering.", type="server_error", code="upstream_error"
            ) from None
        ctx.upstream_s += time.perf_counter() - t_up
        ctx.ttft_s = time.perf_counter() - ctx.started
        backend.record_success()
        try:
            parsed = orjson.loads(data)
        except orjson.JSONDecodeError:
            parsed = None
        ctx.reply = reply = digests.ReplyDigest(ctx.endpoint)
        reply.answer(data, parsed)
        usage = (parsed.get("usage") if isinstance(parsed, dict) else None) or {}
        ctx.prompt_tokens = usage.get("prompt_tokens") or 0
        ctx.completion_tokens = usage.get("completion_tokens") or 0
        ctx.status = 200
        return data

    async def _raise_upstream_error(self, ctx: RequestContext, response) -> None:
        """Raise the upstream's complaint in OpenAI's error shape (vLLM's own shape differs)."""
        try:
            detail = orjson.loads(await response.read())
            info = detail.get("error") if isinstance(detail, dict) else None
            message = info.get("message") if isinstance(info, dict) else str(info or "")
            param = info.get("param") if isinstance(info, dict) else None
        except (UpstreamError, orjson.JSONDecodeError):
            message, param = "", None
        status = response.status
        if status == 404:
            raise errors.model_not_found(ctx.model)
        if status == 401:
            # Our credentials for the replica are wrong: a configuration fault, never the client's.
            logger.error("backend %s refused our API key", ctx.backend)
            raise GatewayError(502, "The model backend is misconfigured.", type="server_error", code="upstream_error")
        if 400 <= status < 500:
            raise GatewayError(status, message or "The request was rejected by the model backend.", param=param)
        raise GatewayError(
            502, "The model backend failed while answering.", type="server_error", code="upstream_error"
        )

    async def _relay_stream(self, call: Call, response, backend: BackendState, sink: Sink) -> None:
        ctx = call.ctx
        metrics.OPEN_STREAMS.inc()
        content_events = 0
        saw_usage = saw_done = failed = False
        buffer = b""
        ctx.reply = reply = digests.ReplyDigest(ctx.endpoint)
        t_up = time.perf_counter()
        try:
            async for chunk in response.iter_chunks():
                if (
                    not buffer
                    and chunk.endswith(b"\n\n")
                    and b'"choices":[]' not in chunk
                    and b"data: [DONE]" not in chunk
                    and b'data: {"error"' not in chunk
                ):
                    # The common case: whole content events only. Passed on as the bytes came.
                    if ctx.ttft_s is None:
                        ctx.ttft_s = time.perf_counter() - ctx.started
                    events = chunk.count(b"\n\n")
                    content_events += events
                    reply.sse(chunk)
                    await sink.delta(Delta(chunk, events))
                    if ctx.client_disconnected:
                        break
                    continue
                buffer += chunk
                if b"\n\n" not in buffer:
                    continue
                *complete, buffer = buffer.split(b"\n\n")
                batch: list[Event] = []
                deltas: list[bytes] = []  # content events not yet in the batch (kept in the replica's order)
                for raw in complete:
                    if not raw:
                        continue
                    if raw == _DONE:
                        kind: Event | None = Done()
                        saw_done = True
                    elif b'"choices":[]' in raw and b'"usage":' in raw:
                        saw_usage = True
                        self._take_usage(ctx, raw)
                        kind = Usage(ctx.prompt_tokens, ctx.completion_tokens,
                                     raw + b"\n\n" if call.forward_usage else None)
                    elif raw.startswith(b'data: {"error"'):
                        failed = True
                        kind = Failed(_STREAM_FAILED, started=True, raw=raw + b"\n\n")  # the replica's own words
                    else:
                        if ctx.ttft_s is None:
                            ctx.ttft_s = time.perf_counter() - ctx.started
                        content_events += 1
                        reply.sse(raw)
                        deltas.append(raw + b"\n\n")
                        continue
                    if deltas:
                        batch.append(Delta(b"".join(deltas), len(deltas)))
                        deltas = []
                    batch.append(kind)
                if deltas:
                    batch.append(Delta(b"".join(deltas), len(deltas)))
                if batch:
                    await sink.events(batch)
                if ctx.client_disconnected:
                    break
        except UpstreamError as exc:
            if not ctx.client_disconnected:
                failed = True
                backend.record_failure(str(exc))
                self.pool.probe_soon(backend)
        except Exception:
            # The sink failed (a socket gone bad): the replica still did the work, so bill it, then let the
            # dispatch end the request as an error.
            if not saw_usage:
                await self._bill_without_usage(ctx, content_events)
            raise
        finally:
            ctx.upstream_s += time.perf_counter() - t_up
            metrics.OPEN_STREAMS.dec()
        end: list[Event] = []
        if ctx.client_disconnected:
            ctx.status, ctx.error_code = 499, "client_closed_request"
        elif failed or not saw_done:
            ctx.status, ctx.error_code = 502, "upstream_stream_error"
            if not saw_done:
                end.append(Failed(_STREAM_FAILED, started=True))  # so SDKs raise instead of waiting for more
        else:
            backend.record_success()
        if not saw_usage:
            await self._bill_without_usage(ctx, content_events)
            end.append(Usage(ctx.prompt_tokens, ctx.completion_tokens))
        if end and not ctx.client_disconnected:
            await sink.events(end)

    async def _bill_without_usage(self, ctx: RequestContext, events: int) -> None:
        """A stream that ended before upstream's usage chunk (the client hung up, or the replica failed) is
        billed for what the replica did: the whole prompt, whose prefill ran, counted exactly with the model's
        own tokenizer (only here, off the everyday path), and one token per content event (vLLM streams one
        token per event by default; chat streams open with one role event per choice, which carries none)."""
        role_events = ctx.n if ctx.endpoint == "chat.completions" else 0
        ctx.completion_tokens = max(0, events - role_events)
        try:
            ctx.prompt_tokens = await validation.billed_prompt_tokens(ctx.endpoint, ctx.model, ctx.payload)
        except Exception:
            # Never lose the usage event over a counting failure: bill the conservative estimate instead.
            logger.exception("counting a dropped stream's prompt failed", extra={"request_id": ctx.request_id})
            ctx.prompt_tokens = ctx.prompt_upper

    @staticmethod
    def _take_usage(ctx: RequestContext, raw: bytes) -> None:
        try:
            usage = orjson.loads(raw[6:]).get("usage") or {}
        except orjson.JSONDecodeError:
            return
        ctx.prompt_tokens = usage.get("prompt_tokens") or 0
        ctx.completion_tokens = usage.get("completion_tokens") or 0

    # --- settlement --------------------------------------------------------------------------------
    def settle(self, ctx: RequestContext) -> None:
        """One usage event per request that reached a tenant, success or failure; metrics; access log."""
        duration_s = time.perf_counter() - ctx.started
        if ctx.admission is not None:
            self.limiter.settle(
                ctx.admission,
                tokens=ctx.prompt_tokens + ctx.completion_tokens,
                spend=self.pool.cost_micro_aud(ctx.model, ctx.prompt_tokens, ctx.completion_tokens,
                                               ctx.key.price_list),
            )
        overhead_s = ctx.overhead_s()
        metrics.observe_request(
            endpoint=ctx.endpoint, model=ctx.model, status=ctx.status, duration_s=duration_s, ttft_s=ctx.ttft_s,
            prompt_tokens=ctx.prompt_tokens, completion_tokens=ctx.completion_tokens,
            overhead_s=overhead_s, error_code=ctx.error_code,
        )
        # One serialisation serves the usage event (billing, the access record) and the access-log line (no prompt
        # or reply text; and no customer id, which only the usage event gets).
        key = ctx.key
        line = contract.encode_usage_event(
            ctx.request_id, key.tenant if key else None, ctx.status, ctx.started_wall, key.key_id if key else None,
            ctx.endpoint, ctx.model, ctx.backend, ctx.error_code, ctx.stream, ctx.client_disconnected,
            ctx.prompt_tokens, ctx.completion_tokens, ctx.ttft_s * 1000 if ctx.ttft_s is not None else None,
            duration_s * 1000, ctx.started_wall, overhead_s * 1000, ctx.traceparent, ctx.redactions,
            "", ctx.prompt_sha256, ctx.reply.hexdigest() if ctx.reply is not None else "",
        )
        ctx.redactor = None  # the placeholders' originals live no longer than the request
        if key is not None:
            self.usage.emit_bytes(digests.with_customer_id(line, ctx.customer_id))
        self.access_log.write(line)


async def wait_for_disconnect(receive, call: Call) -> None:
    """For ASGI transports: cancel ``call`` when the client disconnects."""
    while (await receive())["type"] != "http.disconnect":
        pass
    call.cancel()




__all__ = ["Answer", "Call", "ClientGone", "Delta", "Dispatcher", "Done", "Event", "Failed", "Opened",
           "RequestContext", "Sink", "Usage", "traceparent", "wait_for_disconnect"]
