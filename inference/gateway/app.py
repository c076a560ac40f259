"""The `/v1` ASGI app. Async end to end, no ORM and no blocking call per request.

Path of a generation request: authenticate the key (Redis snapshot + in-process cache) → read, translate and
validate the body → pick the least-loaded healthy replica serving the model (holding the request while a
scaled-to-zero model warms up) → relay the answer (SSE chunk by chunk) → emit exactly one usage event.
Everything the client sees on failure is an OpenAI-shaped error.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import itertools
import logging
import re
import secrets
import time

import aiohttp
import orjson
from django.conf import settings

from core import contract
from core.redis import new_async_redis, new_hot_redis
from inference.gateway import errors, metrics, validation
from inference.gateway.accesslog import AccessLog
from inference.gateway.auth import KeyAuthenticator, KeyRecord
from inference.gateway.backends import BackendPool, BackendState
from inference.gateway.errors import GatewayError
from inference.gateway.limits import Admission, Limiter, PendingAdmission
from inference.gateway.upstream import UpstreamClient, UpstreamError, UpstreamTimeout
from inference.gateway.usage import UsageEmitter
from inference.lru import LRU

logger = logging.getLogger("wattle.gateway")

_JSON = b"application/json"
_SSE_CONTENT_TYPE = (b"content-type", b"text/event-stream; charset=utf-8")
_DONE = b"data: [DONE]\n\n"
_GENERATION_ENDPOINTS = {
    "/v1/chat/completions": "chat.completions",
    "/v1/completions": "completions",
    "/v1/embeddings": "embeddings",
}
# Upstream statuses worth trying on another replica, before any byte reached the client.
_RETRYABLE_STATUSES = frozenset({502, 503, 504})
_STREAM_FAILED_FRAME = (
    b'data: {"error": {"message": "The model backend failed while streaming.", "type": "server_error", '
    b'"param": null, "code": 502}}\n\n'
)


def security_headers() -> list[tuple[bytes, bytes]]:
    """What Django's SecurityMiddleware gives the console, for the answers that bypass Django (/v1, /metrics):
    HSTS outside DEBUG (Django's SECURE_HSTS_* values), nosniff, and no-store (answers are per key: no cache or
    proxy may keep one). Built once per process and appended to every answer."""
    headers = [(b"x-content-type-options", b"nosniff"), (b"cache-control", b"no-store")]
    if not settings.DEBUG and settings.SECURE_HSTS_SECONDS:
        hsts = f"max-age={settings.SECURE_HSTS_SECONDS}"
        if settings.SECURE_HSTS_INCLUDE_SUBDOMAINS:
            hsts += "; includeSubDomains"
        if settings.SECURE_HSTS_PRELOAD:
            hsts += "; preload"
        headers.insert(0, (b"strict-transport-security", hsts.encode()))
    return headers


class ClientGone(Exception):
    """The client disconnected before we could answer."""


class RequestContext:
    """What one request accumulates for its usage event, metrics and access-log line."""

    __slots__ = (
        "admission", "admitting", "backend", "client_disconnected", "completion_tokens", "endpoint", "error_code",
        "key", "model", "n", "payload", "prompt_tokens", "prompt_upper", "request_id", "started", "started_wall",
        "status", "stream", "traceparent", "ttft_s", "upstream_s",
    )

    def __init__(self, endpoint: str, request_id: str) -> None:
        self.request_id = request_id
        self.endpoint = endpoint
        self.started = time.perf_counter()
        self.started_wall = time.time()
        self.key: KeyRecord | None = None
        self.model = ""
        self.backend = ""
        self.status = 0
        self.error_code = ""
        self.stream = False
        self.client_disconnected = False
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.ttft_s: float | None = None
        self.upstream_s = 0.0  # time spent waiting on the backend
        self.traceparent = ""
        self.payload: dict | None = None  # the body as sent upstream, to count a dropped stream's prompt
        self.n = 1  # choices asked for
        self.prompt_upper = 0  # the estimate reserved for the prompt (never below the true count)
        self.admission: Admission | None = None
        self.admitting: PendingAdmission | None = None  # the limits check, while it runs beside the upstream call

    def overhead_s(self) -> float:
        return max(0.0, time.perf_counter() - self.started - self.upstream_s)

    def response_headers(self) -> list[tuple[bytes, bytes]]:
        headers = [
            (b"x-request-id", self.request_id.encode()),
            (b"x-wattle-overhead-ms", f"{self.overhead_s() * 1000:.3f}".encode()),
        ]
        if self.admission is not None:
            headers += self.admission.headers
        return headers


# W3C Trace Context: version, trace id, parent id, flags, in lowercase hex; a later version may add fields.
_TRACEPARENT = re.compile(rb"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-[ -~]*)?")
_TRACEPARENT_MAX_BYTES = 256


def _traceparent(incoming: bytes | None, request_id: str) -> str:
    """Continue the caller's W3C trace, or start one whose trace id is our request id. Our span id is the
    request id's unique tail (no random draw per request). A header that isn't a valid traceparent is dropped,
    so what we log and forward is always one of ours in shape and length."""
    span = request_id[-16:]
    if incoming and len(incoming) <= _TRACEPARENT_MAX_BYTES:
        match = _TRACEPARENT.fullmatch(incoming.strip())
        if match is not None:
            version, trace_id, parent_id, flags, rest = match.groups()
            if (
                version != b"ff"
                and (version != b"00" or rest is None)
                and trace_id != b"0" * 32
                and parent_id != b"0" * 16
            ):
                return f"00-{trace_id.decode()}-{span}-{flags.decode()}"
    return f"00-{request_id[4:].ljust(32, '0')[:32]}-{span}-01"


class Gateway:
    def __init__(self) -> None:
        self._started = False
        self._start_lock: asyncio.Lock | None = None
        self.redis = None
        self.hot = None  # per-request Redis commands (core.fastredis)
        self.session: aiohttp.ClientSession | None = None  # probes and hooks; requests use ``upstream``
        self.upstream: UpstreamClient | None = None
        self.auth: KeyAuthenticator | None = None
        self.pool: BackendPool | None = None
        self.usage: UsageEmitter | None = None
        self.limiter: Limiter | None = None
        self.access_log: AccessLog | None = None
        self._registry = None
        self._id_prefix = ""
        self._ids = itertools.count(1)
        # key id -> when the limits last refused it (monotonic). Bounded, evicting the least recently seen key: a
        # key forgotten here is only checked beside its upstream call again, and cancelled there if refused.
        self._refused_at: LRU[str, float] = LRU(10_000)
        self._load_settings()

    def _load_settings(self) -> None:
        """Settings read per request, copied once: attribute lookups on Django's lazy settings add up."""
        self._max_body_bytes = settings.INFERENCE_MAX_BODY_BYTES
        self._rules = validation.Rules.from_settings()
        self._cache_salt_key = settings.INFERENCE_CACHE_SALT_SECRET.encode()
        self._cache_salts: LRU[str, str] = LRU(10_000)  # tenant id -> its salt (derived from the key above)
        self._limits_parallel = settings.INFERENCE_LIMITS_PARALLEL
        self._parallel_backoff_s = settings.INFERENCE_LIMITS_PARALLEL_BACKOFF_S
        self._security_headers = security_headers()
        self._sse_headers = [_SSE_CONTENT_TYPE, *self._security_headers]

    def next_request_id(self) -> str:
        """Unique across workers and restarts: a random per-process prefix and a counter (no syscall)."""
        return f"req_{self._id_prefix}{next(self._ids):016x}"

    # --- lifecycle ---------------------------------------------------------------------------------
    async def startup(self) -> None:
        if self._started:
            return
        if self._start_lock is None:
            self._start_lock = asyncio.Lock()
        async with self._start_lock:
            if self._started:
                return
            self._id_prefix = secrets.token_hex(4)  # drawn in the worker process itself, after any fork
            self._load_settings()
            self.redis = new_async_redis()
            self.session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, keepalive_timeout=30),
                timeout=aiohttp.ClientTimeout(
                    total=None,
                    connect=settings.INFERENCE_UPSTREAM_CONNECT_TIMEOUT_S,
                    sock_read=settings.INFERENCE_UPSTREAM_READ_TIMEOUT_S,
                ),
                auto_decompress=False,
                skip_auto_headers=("User-Agent",),
            )
            self.auth = KeyAuthenticator(self.redis)
            self.hot = new_hot_redis()
            self.usage = UsageEmitter(self.redis, hot=self.hot)
            await self.usage.start()
            self.limiter = Limiter(self.hot)
            await self.limiter.start()
            self.access_log = AccessLog()
            await self.access_log.start()
            self.upstream = UpstreamClient(
                connect_timeout=settings.INFERENCE_UPSTREAM_CONNECT_TIMEOUT_S,
                read_timeout=settings.INFERENCE_UPSTREAM_READ_TIMEOUT_S,
            )
            self.pool = BackendPool(self.redis, self.session)
            await self.pool.start()
            if self._registry is None:
                self._registry = metrics.build_registry(self)
            self._started = True

    async def shutdown(self) -> None:
        if not self._started:
            return
        self._started = False
        await self.pool.stop()
        await self.limiter.stop()
        await self.usage.stop()
        await self.access_log.stop()
        await self.hot.aclose()
        await self.upstream.close()
        await self.session.close()
        await self.redis.aclose()

    # --- ASGI --------------------------------------------------------------------------------------
    async def __call__(self, scope, receive, send) -> None:
        if not self._started:
            await self.startup()
        path = scope["path"]
        endpoint = _GENERATION_ENDPOINTS.get(path)
        if endpoint is not None:
            if scope["method"] != "POST":
                await self._send_error(send, GatewayError(405, f"Use POST for {path}.", code="method_not_allowed"))
                return
            await self._generate(scope, receive, send, endpoint)
        elif path == "/v1/models" or path.startswith("/v1/models/"):
            if scope["method"] not in ("GET", "HEAD"):
                await self._send_error(send, GatewayError(405, f"Use GET for {path}.", code="method_not_allowed"))
                return
            await self._models(scope, send, path)
        else:
            await self._send_error(send, GatewayError(404, f"Unknown endpoint {path}.", code="unknown_url"))

    async def metrics_endpoint(self, scope, receive, send) -> None:
        if not self._started:
            await self.startup()
        if not metrics.scrape_allowed(scope, dict(scope["headers"])):
            await self._send_json(send, 403, b'{"error":"forbidden"}', [])
            return
        body, content_type = metrics.render(self._registry)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", content_type.encode()), *self._security_headers]})
        await send({"type": "http.response.body", "body": body})

    # --- helpers -----------------------------------------------------------------------------------
    async def _send_json(self, send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        await send({
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", _JSON), (b"content-length", str(len(body)).encode()), *self._security_headers,
                *headers,
            ],
        })
        await send({"type": "http.response.body", "body": body})

    async def _send_error(self, send, error: GatewayError, ctx: RequestContext | None = None) -> None:
        headers = [(k.encode(), v.encode()) for k, v in error.headers.items()]
        if ctx is not None:
            ctx.status = error.status
            ctx.error_code = error.code or error.type
            headers += ctx.response_headers()
        await self._send_json(send, error.status, error.body(), headers)

    async def _read_body(self, receive, headers: dict[bytes, bytes]) -> bytes:
        limit = self._max_body_bytes
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise GatewayError(413, f"Request body is larger than {limit} bytes.", code="request_too_large")
        chunks = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientGone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise GatewayError(413, f"Request body is larger than {limit} bytes.", code="request_too_large")
            chunks.append(chunk)
            if not message.get("more_body"):
                return b"".join(chunks)

    @staticmethod
    def _parse_json(body: bytes, headers: dict[bytes, bytes]) -> dict:
        content_type = headers.get(b"content-type", b"application/json")
        if b"json" not in content_type.lower():
            raise GatewayError(415, "Content-Type must be application/json.", code="unsupported_media_type")
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise errors.bad_request(
                "We could not parse the JSON body of your request. Please send valid JSON.", code="invalid_json"
            ) from None
        if not isinstance(payload, dict):
            raise errors.bad_request("The request body must be a JSON object.", code="invalid_json")
        return payload

    # --- /v1/models --------------------------------------------------------------------------------
    async def _models(self, scope, send, path: str) -> None:
        ctx = RequestContext("models", self.next_request_id())
        try:
            record = await self.auth.authenticate(dict(scope["headers"]).get(b"authorization"))
            await self.pool.wait_ready()
            models = sorted(m for m in self.pool.known_models() if record.allows_model(m))
            cards = [{"id": m, "object": "model", "created": 0, "owned_by": "wattle",
                      "max_model_len": self.pool.max_model_len(m)} for m in models]
            if path.startswith("/v1/models/"):
                wanted = path[len("/v1/models/") :]
                card = next((c for c in cards if c["id"] == wanted), None)
                if card is None:
                    raise errors.model_not_found(wanted)
                body = orjson.dumps(card)
            else:
                body = orjson.dumps({"object": "list", "data": cards})
            await self._send_json(send, 200, body, ctx.response_headers())
        except GatewayError as error:
            await self._send_error(send, error, ctx)

    # --- generation --------------------------------------------------------------------------------
    async def _generate(self, scope, receive, send, endpoint: str) -> None:
        ctx = RequestContext(endpoint, self.next_request_id())
        headers = dict(scope["headers"])
        try:
            ctx.key = await self.auth.authenticate(headers.get(b"authorization"))
            body = await self._read_body(receive, headers)
            payload = self._parse_json(body, headers)
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
            prepared = validation.PREPARERS[endpoint](payload, self._rules)
            max_model_len = self.pool.max_model_len(model)
            await validation.check_context_length(endpoint, model, prepared, max_model_len)
            self._begin_admission(ctx, prepared, max_model_len)
            if ctx.admitting is not None and not self._admit_in_parallel(ctx):
                await self._finish_admission(ctx)
            ctx.stream = prepared.stream
            ctx.payload, ctx.n, ctx.prompt_upper = payload, prepared.n, prepared.prompt_tokens_upper
            forward_usage = False
            if ctx.stream:
                options = dict(payload.get("stream_options") or {})
                # Mistral's SDK never asks, but expects usage at the end of a stream as La Plateforme sends it.
                forward_usage = options.get("include_usage") is True or headers.get(
                    b"user-agent", b""
                ).startswith(b"mistral-client")
                # Always ask upstream for usage: streamed tokens are billed from it.
                options["include_usage"] = True
                payload["stream_options"] = options
            body = validation.upstream_body(body, prepared, cache_salt=self._cache_salt(ctx.key.tenant))
            ctx.traceparent = _traceparent(headers.get(b"traceparent"), ctx.request_id)
            try:
                await self._forward(scope, receive, send, ctx, body, forward_usage)
            except GatewayError:
                # Refused by the limits check that ran beside it? Then that is the answer, whatever else failed.
                await self._finish_admission(ctx)
                raise
        except GatewayError as error:
            await self._send_error(send, error, ctx)
        except ClientGone:
            ctx.client_disconnected = True
            ctx.status = 499
            ctx.error_code = "client_closed_request"
        except Exception:
            logger.exception("unhandled error in gateway", extra={"request_id": ctx.request_id})
            with contextlib.suppress(Exception):
                await self._send_error(send, errors.internal_error(), ctx)
            ctx.status = 500
            ctx.error_code = "internal_error"
        finally:
            if ctx.admitting is not None:
                # Ended before the check was looked at (client gone, internal error): conclude it, so that an
                # admission it made is settled and its slot freed.
                with contextlib.suppress(Exception):
                    await self._finish_admission(ctx)
            self._settle(ctx)

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

    def _begin_admission(self, ctx: RequestContext, prepared, max_model_len: int) -> None:
        """Queue the reservation of the most this request can cost (``validation.reservation``): every prompt
        and every token its choices may generate, which vLLM is told explicitly. ``ctx.admitting`` stays None
        when nothing is limited."""
        prompt, completion = validation.reservation(prepared, max_model_len)
        spend = self.pool.cost_micro_aud(ctx.model, prompt, completion)
        ctx.admitting = self.limiter.begin(ctx.key, tokens=prompt + completion, spend=spend, slot=ctx.request_id,
                                            started=ctx.started_wall)

    def _admit_in_parallel(self, ctx: RequestContext) -> bool:
        """Whether to call the replica while the limits check runs: yes, unless parallel checks are off, Redis
        is failing, or this key was refused lately (its next request is likely refused too, and would only
        start work upstream that gets cancelled)."""
        if not self._limits_parallel or self.limiter.failing:
            return False
        refused = self._refused_at.get(ctx.key.key_id)
        return refused is None or time.monotonic() - refused > self._parallel_backoff_s

    async def _finish_admission(self, ctx: RequestContext) -> None:
        """Wait for the limits check begun for this request; raise its 429 (or 503) if it refused."""
        pending, ctx.admitting = ctx.admitting, None
        if pending is None:
            return
        try:
            ctx.admission = await self.limiter.finish(pending)
        except GatewayError as refusal:
            if refusal.status == 429:
                self._refused_at.put(ctx.key.key_id, time.monotonic())
            raise

    async def _choose(self, ctx: RequestContext, tried: set[str]) -> BackendState:
        candidates = self.pool.candidates(ctx.model, exclude=tried)
        if candidates:
            return candidates[0]
        retry_after = settings.INFERENCE_RETRY_AFTER_S
        if tried:
            raise errors.no_capacity(ctx.model, retry_after)
        # No replica can take it: the model may be scaled to zero. Ask for one and hold the request.
        self.pool.request_warmup(ctx.model)
        deadline = time.monotonic() + settings.INFERENCE_COLD_START_HOLD_S
        t_hold = time.perf_counter()
        candidates = await self.pool.wait_for_capacity(ctx.model, deadline)
        ctx.upstream_s += time.perf_counter() - t_hold  # waiting for capacity is not gateway overhead
        if not candidates:
            raise errors.no_capacity(ctx.model, retry_after)
        return candidates[0]

    async def _forward(self, scope, receive, send, ctx: RequestContext, body: bytes, forward_usage: bool):
        tried: set[str] = set()
        upstream_url_path = scope["path"]
        pending = metrics.pending(ctx.model)
        pending.inc()
        try:
            while True:
                backend = await self._choose(ctx, tried)
                tried.add(backend.name)
                backend.outstanding += 1
                try:
                    t_up = time.perf_counter()
                    try:
                        response = await self._post(ctx, backend, upstream_url_path, body)
                    except UpstreamTimeout:
                        ctx.upstream_s += time.perf_counter() - t_up
                        backend.record_failure("timeout")
                        raise errors.upstream_timeout() from None
                    except UpstreamError as exc:
                        ctx.upstream_s += time.perf_counter() - t_up
                        backend.record_failure(str(exc))
                        self.pool.probe_soon(backend)
                        continue
                    ctx.upstream_s += time.perf_counter() - t_up
                    try:
                        if response.status in _RETRYABLE_STATUSES:
                            backend.record_failure(f"HTTP {response.status}")
                            self.pool.probe_soon(backend)
                            continue
                        ctx.backend = backend.name
                        if response.status != 200:
                            await self._relay_upstream_error(ctx, response)
                        elif ctx.stream:
                            await self._relay_stream(receive, send, ctx, response, forward_usage, backend)
                        else:
                            await self._relay_json(send, ctx, response, backend)
                        return
                    finally:
                        response.release()
                finally:
                    backend.outstanding -= 1
        finally:
            pending.dec()

    async def _post(self, ctx: RequestContext, backend: BackendState, path: str, body: bytes):
        """Send the request upstream. While the limits check begun for it is still out, the two run side by
        side (on a pooled connection the request is written before the check is awaited), and the check is
        always concluded first: a refusal hangs up on the replica at once, whatever the request's state (sent,
        or already answered), so a refused request costs the replica at most the time the check took, and
        nothing of the replica's answer reaches the client."""
        exchange = self.upstream.begin(
            backend.url, path, body, headers={"X-Request-Id": ctx.request_id, "traceparent": ctx.traceparent},
            authorization=backend.authorization,
        )
        if ctx.admitting is not None:
            try:
                await self._finish_admission(ctx)
            except BaseException:
                exchange.cancel()
                raise
        return await exchange.response()

    async def _relay_json(self, send, ctx: RequestContext, response, backend: BackendState) -> None:
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
            usage = orjson.loads(data).get("usage") or {}
        except orjson.JSONDecodeError:
            usage = {}
        ctx.prompt_tokens = usage.get("prompt_tokens") or 0
        ctx.completion_tokens = usage.get("completion_tokens") or 0
        ctx.status = 200
        await self._send_json(send, 200, data, ctx.response_headers())

    async def _relay_upstream_error(self, ctx: RequestContext, response) -> None:
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

    async def _relay_stream(
        self, receive, send, ctx: RequestContext, response, forward_usage: bool, backend: BackendState
    ) -> None:
        ctx.status = 200
        await send({"type": "http.response.start", "status": 200,
                    "headers": self._sse_headers + ctx.response_headers()})
        metrics.OPEN_STREAMS.inc()

        async def watch_disconnect() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            ctx.client_disconnected = True
            response.close()  # hang up on the replica: vLLM aborts the request and stops generating

        watcher = asyncio.create_task(watch_disconnect())
        content_events = 0
        saw_usage = saw_done = failed = False
        buffer = b""
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
                    # The common case: whole content events only. Relay the bytes as they came.
                    if ctx.ttft_s is None:
                        ctx.ttft_s = time.perf_counter() - ctx.started
                    content_events += chunk.count(b"\n\n")
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                    if ctx.client_disconnected:
                        break
                    continue
                buffer += chunk
                if b"\n\n" not in buffer:
                    continue
                *complete, buffer = buffer.split(b"\n\n")
                out = []
                for raw in complete:
                    if not raw:
                        continue
                    if raw == b"data: [DONE]":
                        saw_done = True
                    elif b'"choices":[]' in raw and b'"usage":' in raw:
                        saw_usage = True
                        self._take_usage(ctx, raw)
                        if not forward_usage:
                            continue
                    elif raw.startswith(b'data: {"error"'):
                        failed = True
                    else:
                        if ctx.ttft_s is None:
                            ctx.ttft_s = time.perf_counter() - ctx.started
                        content_events += 1
                    out.append(raw + b"\n\n")
                if out:
                    await send({"type": "http.response.body", "body": b"".join(out), "more_body": True})
                if ctx.client_disconnected:
                    break
        except UpstreamError as exc:
            if not ctx.client_disconnected:
                failed = True
                backend.record_failure(str(exc))
                self.pool.probe_soon(backend)
        finally:
            ctx.upstream_s += time.perf_counter() - t_up
            watcher.cancel()
            metrics.OPEN_STREAMS.dec()
        if ctx.client_disconnected:
            ctx.status = 499
            ctx.error_code = "client_closed_request"
        elif failed or not saw_done:
            if not saw_done:
                # The protocol's mid-stream error frame, then [DONE], so SDKs raise instead of hanging.
                await send({"type": "http.response.body", "body": _STREAM_FAILED_FRAME + _DONE, "more_body": True})
            ctx.status = 502
            ctx.error_code = "upstream_stream_error"
        else:
            backend.record_success()
        if not saw_usage:
            await self._bill_without_usage(ctx, content_events)
        if not ctx.client_disconnected:
            await send({"type": "http.response.body", "body": b"", "more_body": False})

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

    def _settle(self, ctx: RequestContext) -> None:
        """One usage event per request that reached a tenant, success or failure; metrics; access log."""
        duration_s = time.perf_counter() - ctx.started
        if ctx.admission is not None:
            self.limiter.settle(
                ctx.admission,
                tokens=ctx.prompt_tokens + ctx.completion_tokens,
                spend=self.pool.cost_micro_aud(ctx.model, ctx.prompt_tokens, ctx.completion_tokens),
            )
        overhead_s = ctx.overhead_s()
        metrics.observe_request(
            endpoint=ctx.endpoint, model=ctx.model, status=ctx.status, duration_s=duration_s, ttft_s=ctx.ttft_s,
            prompt_tokens=ctx.prompt_tokens, completion_tokens=ctx.completion_tokens,
            overhead_s=overhead_s, error_code=ctx.error_code,
        )
        # One serialisation serves the usage event (billing) and the access-log line (no prompt or reply text).
        line = contract.UsageEvent(
            request_id=ctx.request_id,
            tenant=ctx.key.tenant if ctx.key else None,
            status=ctx.status,
            created=ctx.started_wall,
            key_id=ctx.key.key_id if ctx.key else None,
            endpoint=ctx.endpoint,
            model=ctx.model,
            backend=ctx.backend,
            error_code=ctx.error_code,
            stream=ctx.stream,
            client_disconnected=ctx.client_disconnected,
            prompt_tokens=ctx.prompt_tokens,
            completion_tokens=ctx.completion_tokens,
            ttft_ms=ctx.ttft_s * 1000 if ctx.ttft_s is not None else None,
            duration_ms=duration_s * 1000,
            time=ctx.started_wall,
            overhead_ms=overhead_s * 1000,
            traceparent=ctx.traceparent,
        ).encode()
        if ctx.key is not None:
            self.usage.emit_bytes(line)
        self.access_log.write(line)


gateway = Gateway()
