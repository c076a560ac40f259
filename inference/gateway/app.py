"""The `/v1` ASGI app: the HTTP adapter of the dispatch (``inference.gateway.dispatch``). Async end to end, no
ORM and no blocking call per request.

Path of a generation request: authenticate the key (Redis records + in-process cache) → read and parse the body
→ the dispatch prepares it (validation, admission) and runs it (routing, relay, settlement) → its events become
the HTTP answer: JSON, or SSE written as the replica's bytes came. Everything the client sees on failure is an
OpenAI-shaped error.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets

import aiohttp
import orjson
from django.conf import settings

from core.redis import new_async_redis, new_hot_redis
from inference import openapi
from inference.gateway import errors, metrics, transcripts
from inference.gateway.accesslog import AccessLog
from inference.gateway.auth import KeyAuthenticator
from inference.gateway.backends import BackendPool
from inference.gateway.dispatch import (
    Answer,
    ClientGone,
    Delta,
    Dispatcher,
    Done,
    Failed,
    Opened,
    RequestContext,
    Usage,
    traceparent,
    wait_for_disconnect,
)
from inference.gateway.errors import GatewayError
from inference.gateway.limits import Limiter
from inference.gateway.upstream import UpstreamClient
from inference.gateway.usage import UsageEmitter

logger = logging.getLogger("wattle.gateway")

_JSON = b"application/json"
_SSE_CONTENT_TYPE = (b"content-type", b"text/event-stream; charset=utf-8")
_DONE = b"data: [DONE]\n\n"
_GENERATION_ENDPOINTS = {
    "/v1/chat/completions": "chat.completions",
    "/v1/completions": "completions",
    "/v1/embeddings": "embeddings",
}
# Every route this app answers, with its methods. The OpenAPI description (``inference.openapi``, served at
# /v1/openapi.json) documents exactly these: tests/inference/test_openapi.py holds the two together.
ROUTES: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(_GENERATION_ENDPOINTS, ("POST",)),
    "/v1/models": ("GET", "HEAD"),
    "/v1/models/{model}": ("GET", "HEAD"),
    "/v1/openapi.json": ("GET", "HEAD"),
    "/v1/conversation": ("POST",),
    "/v1/conversations/{conversation_id}": ("GET", "HEAD"),
    "/v1/conversations/{conversation_id}/close": ("POST",),
}
_STREAM_FAILED_FRAME = (
    b'data: {"error": {"message": "The model backend failed while streaming.", "type": "server_error", '
    b'"param": null, "code": 502}}\n\n'
)


def _asks_for_redaction(value: bytes | None) -> bool:
    """``x-wattle-redact: true`` (or 1, yes): redact this request whatever the tenant's mode. A request can only
    ask for more privacy: any other value changes nothing."""
    return value is not None and value.strip().lower() in (b"true", b"1", b"yes")


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
        self.transcripts: transcripts.TranscriptEmitter | None = None
        self.limiter: Limiter | None = None
        self.access_log: AccessLog | None = None
        self.dispatcher: Dispatcher | None = None
        self.conversations = None  # the conversation API (``inference.gateway.conversations``)
        self._registry = None
        self._id_prefix = ""
        self._ids = itertools.count(1)
        self._load_settings()

    def _load_settings(self) -> None:
        """Settings read per request, copied once: attribute lookups on Django's lazy settings add up."""
        self._max_body_bytes = settings.INFERENCE_MAX_BODY_BYTES
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
            self.transcripts = transcripts.TranscriptEmitter(self.hot)
            await self.transcripts.start()
            transcripts.install(self.transcripts)
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
            self.dispatcher = Dispatcher(pool=self.pool, limiter=self.limiter, upstream=self.upstream,
                                         usage=self.usage, access_log=self.access_log)
            from inference.gateway.conversations import ConversationAPI

            self.conversations = ConversationAPI(self)
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
        transcripts.install(None)
        await self.transcripts.stop()
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
        elif path == "/v1/openapi.json":
            await self._openapi(scope, send)
        elif path == "/v1/conversation" or path.startswith("/v1/conversations/"):
            await self.conversations(scope, receive, send)
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

    # --- /v1/openapi.json -------------------------------------------------------------------------------
    async def _openapi(self, scope, send) -> None:
        """The API's OpenAPI description: public (no key), built once per process."""
        if scope["method"] not in ("GET", "HEAD"):
            await self._send_error(send, GatewayError(405, "Use GET for /v1/openapi.json.", code="method_not_allowed"))
            return
        await self._send_json(send, 200, openapi.document_bytes(), [])

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
        except Exception:
            logger.exception("unhandled error listing models", extra={"request_id": ctx.request_id})
            with contextlib.suppress(Exception):
                await self._send_error(send, errors.internal_error(), ctx)

    # --- generation --------------------------------------------------------------------------------
    async def _generate(self, scope, receive, send, endpoint: str) -> None:
        ctx = RequestContext(endpoint, self.next_request_id())
        headers = dict(scope["headers"])
        dispatcher = self.dispatcher
        try:
            ctx.key = await self.auth.authenticate(headers.get(b"authorization"))
            body = await self._read_body(receive, headers)
            payload = self._parse_json(body, headers)
            call = await dispatcher.prepare(ctx, payload, body, user_agent=headers.get(b"user-agent", b""),
                                            incoming_traceparent=headers.get(b"traceparent"),
                                            redact=_asks_for_redaction(headers.get(b"x-wattle-redact")),
                                            customer_header=headers.get(b"x-wattle-customer-id"))
        except GatewayError as error:
            await self._send_error(send, error, ctx)
            await self._abandon(ctx)
            return
        except ClientGone:
            ctx.client_disconnected = True
            ctx.status, ctx.error_code = 499, "client_closed_request"
            await self._abandon(ctx)
            return
        except Exception:
            logger.exception("unhandled error in gateway", extra={"request_id": ctx.request_id})
            with contextlib.suppress(Exception):
                await self._send_error(send, errors.internal_error(), ctx)
            ctx.status, ctx.error_code = 500, "internal_error"
            await self._abandon(ctx)
            return
        sink = _HttpSink(self, send, receive, call)
        try:
            await dispatcher.run(call, sink)
            if sink.watcher is not None and not ctx.client_disconnected:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            if sink.watcher is not None:
                sink.watcher.cancel()

    async def _abandon(self, ctx: RequestContext) -> None:
        await self.dispatcher.abandon(ctx)


class _HttpSink:
    """The dispatch's events as the `/v1` HTTP answer: JSON, or SSE with the replica's bytes as they came."""

    __slots__ = ("call", "gateway", "receive", "send", "watcher")

    def __init__(self, gateway: Gateway, send, receive, call) -> None:
        self.gateway, self.send, self.receive, self.call = gateway, send, receive, call
        self.watcher: asyncio.Task | None = None

    async def delta(self, delta: Delta) -> None:
        await self.send({"type": "http.response.body", "body": delta.raw, "more_body": True})

    async def events(self, events: list) -> None:
        ctx = self.call.ctx
        out = []
        for event in events:
            kind = event.__class__
            if kind is Delta or kind is Done:
                out.append(event.raw)
            elif kind is Usage:
                if event.raw is not None:
                    out.append(event.raw)
            elif kind is Answer:
                await self.gateway._send_json(self.send, 200, event.body, ctx.response_headers())
            elif kind is Opened:
                await self.send({"type": "http.response.start", "status": 200,
                                 "headers": self.gateway._sse_headers + ctx.response_headers()})
                self.watcher = asyncio.create_task(wait_for_disconnect(self.receive, self.call))
            elif kind is Failed:
                if event.started:
                    # The replica's error event as it came; or the protocol's mid-stream error frame, then
                    # [DONE], so SDKs raise instead of hanging.
                    out.append(event.raw if event.raw is not None else _STREAM_FAILED_FRAME + _DONE)
                else:
                    await self.gateway._send_error(self.send, event.error, ctx)
        if out:
            await self.send({"type": "http.response.body", "body": b"".join(out), "more_body": True})


gateway = Gateway()

_traceparent = traceparent  # the name the tests and older callers use
