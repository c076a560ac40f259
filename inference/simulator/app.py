"""HTTP routes of the simulator (aiohttp), mirroring ``vllm serve`` 0.33.0.

The simulator serves several models from one process. Each behaves like its own vLLM server: the
generate models answer chat/completions, the embedding model answers embeddings, and asking one for
the other's endpoint gets the 404 "Not Found" a real single-model server gives for a route it never
mounted (``build_app`` only attaches the routers for the model's tasks).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import orjson
from aiohttp import web

from inference import tokens
from inference.lru import LRU
from inference.vllm.errors import (
    ENGINE_DEAD_MESSAGE,
    UNAUTHORIZED_BODY,
    ApiError,
    json_decode_error,
    request_validation_error,
    streaming_error_frame,
)
from inference.vllm.requests import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    EmbeddingRequest,
    TokenizeChatRequest,
    TokenizeCompletionRequest,
    check_sampling,
    parse,
)

from . import structured
from .config import VLLM_VERSION, ConfigError, SimulatorConfig
from .engine import Engine, Scheduler
from .generation import (
    ECHO_PREFIX,
    ChoiceOutput,
    EchoCache,
    ReplyBank,
    TokenizedText,
    finish,
    request_key,
    tokenize_with_offsets,
)
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .metrics import ModelMetrics, SimulatorMetrics
from .render import (
    DONE,
    ChatStreamRenderer,
    CompletionStreamRenderer,
    StreamShape,
    chat_completion_body,
    completion_body,
    model_list_body,
    usage_full,
)

logger = logging.getLogger(__name__)

GUARDED_PREFIXES = ("/v1", "/v2", "/inference", "/cohere")
SSE_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8"}
JSON = "application/json"
MAX_BODY_BYTES = 64 * 1024 * 1024
Task = Literal["generate", "embed"]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _digest(data: bytes) -> bytes:
    # Cache keys hold a digest, not the prompt, so long prompts do not pin memory.
    return hashlib.blake2b(data, digest_size=16).digest()


def _stop_list(stop: str | list[str] | None) -> list[str]:
    if stop is None:
        return []
    return [stop] if isinstance(stop, str) else stop


def _message_text(content: Any) -> str | None:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        # Text parts are joined the way mistral-common renders them into the prompt.
        parts = [p.get("text", "") for p in content if isinstance(p, Mapping) and p.get("type") == "text"]
        return "\n\n".join(parts) if parts else None
    return None


def _last_user_text(messages: Sequence[Mapping[str, Any]]) -> str | None:
    for message in reversed(messages):
        if message.get("role") == "user":
            return _message_text(message.get("content"))
    return None


class Simulator:
    """Routes and per-request logic; one instance per server process."""

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self.knobs = config.knobs
        self.engine = Engine(config)
        self.metrics = SimulatorMetrics(config.all_model_names)
        for name, scheduler in self.engine.schedulers.items():
            self.metrics.bind_gauges(
                name,
                running=lambda s=scheduler: s.running,
                waiting=lambda s=scheduler: s.waiting,
                kv_cache_usage=lambda s=scheduler: s.kv_cache_usage,
            )
        self.bank = ReplyBank()
        self.echoes = EchoCache()
        self._prompt_tokens: LRU[bytes, int] = LRU(8192)
        self._prefix_cache: LRU[bytes, bool] = LRU(8192)  # digests of (model, cache_salt, prompt) seen
        self._fingerprints = {
            name: f"vllm-{VLLM_VERSION}-{hashlib.sha256(f'{name}|{config.max_model_len}'.encode()).hexdigest()[:8]}"
            for name in config.all_model_names
        }
        self._key_digests = [hashlib.sha256(key.encode()).digest() for key in config.api_keys]
        self._random = random.Random()

    # --- application -------------------------------------------------------------------------

    def warm_up(self) -> None:
        """Load tokenizers and reply banks before serving, so the first request is as fast as the rest."""
        for name in self.config.served_model_names:
            self.bank.for_model(name)
            tokens.count_chat_prompt_tokens(name, [{"role": "user", "content": "warm up"}])
        if self.config.embedding_model:
            tokens.count_text_tokens(self.config.embedding_model, "warm up")

    def build_app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware], client_max_size=MAX_BODY_BYTES)
        app.router.add_post("/v1/chat/completions", self.chat_completions)
        app.router.add_post("/v1/completions", self.completions)
        if self.config.embedding_model:
            app.router.add_post("/v1/embeddings", self.embeddings)
        app.router.add_get("/v1/models", self.list_models)
        app.router.add_get("/health", self.health)
        app.router.add_get("/ping", self.health)
        app.router.add_post("/ping", self.health)
        app.router.add_get("/version", self.version)
        app.router.add_get("/metrics", self.prometheus)
        app.router.add_post("/tokenize", self.tokenize)
        app.router.add_post("/detokenize", self.detokenize)
        app.router.add_post("/sim/control", self.sim_control)
        app.router.add_get("/sim/state", self.sim_state)
        return app

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        if (
            self._key_digests
            and request.method != "OPTIONS"
            and path.startswith(GUARDED_PREFIXES)
            and not self._authorized(request.headers.get("Authorization"))
        ):
            return web.Response(body=UNAUTHORIZED_BODY, status=401, content_type=JSON)
        try:
            if path.startswith(GUARDED_PREFIXES) and self.engine.is_cold():
                raise ApiError.service_unavailable()
            return await handler(request)
        except ApiError as exc:
            return exc.response()
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return ApiError.http(exc.status).response()
        except (asyncio.CancelledError, ConnectionResetError):
            raise
        except Exception as exc:
            logger.exception("unhandled error on %s %s", request.method, path)
            return ApiError.internal(str(exc) or type(exc).__name__).response()

    def _authorized(self, header: str | None) -> bool:
        if not header:
            return False
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer":
            return False
        digest = hashlib.sha256(token.encode()).digest()
        matched = False
        for expected in self._key_digests:
            matched |= hmac.compare_digest(digest, expected)
        return matched

    # --- shared request plumbing ------------------------------------------------------------

    async def _json_body(self, request: web.Request) -> Any:
        body = await request.read()
        content_type = request.headers.get("Content-Type")
        media_type = (content_type or "").split(";", 1)[0].strip().lower()
        # FastAPI decodes the body before vLLM's content-type dependency runs, but only when the
        # header is absent or JSON, so malformed JSON wins over the 415 only in those cases.
        decode = content_type is None or media_type == JSON or media_type.endswith("+json")
        data: Any = None
        if decode and body:
            try:
                data = orjson.loads(body)
            except orjson.JSONDecodeError:
                raise json_decode_error(body) from None
        if media_type != JSON:
            raise ApiError.http(415, "Unsupported Media Type: Only 'application/json' is allowed")
        if not body:
            missing = {"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}
            raise request_validation_error([missing])
        return data

    def _resolve_model(self, requested: str | None, task: Task) -> str:
        names = list(self.config.served_model_names) if task == "generate" else [self.config.embedding_model or ""]
        if requested is None:
            return names[0]
        if requested in names:
            return requested
        if requested in self.config.all_model_names:
            raise ApiError.http(404)
        raise ApiError.model_not_found(requested, names)

    def _resolve_any_model(self, requested: str | None) -> str:
        if requested is None:
            return self.config.served_model_names[0]
        if requested in self.config.all_model_names:
            return requested
        raise ApiError.model_not_found(requested, list(self.config.all_model_names))

    def _check_engine_alive(self) -> None:
        if self.knobs.down:
            raise ApiError.internal(ENGINE_DEAD_MESSAGE)

    def _request_id(self, request: web.Request, body_request_id: str | None) -> str:
        header = request.headers.get("X-Request-Id")
        if header is not None:
            return header
        return body_request_id or f"{self._random.getrandbits(64):016x}"

    def _check_context(self, prompt_tokens: int) -> None:
        limit = self.config.max_model_len
        if prompt_tokens > limit:
            raise ApiError.bad_request(
                f"This model's maximum context length is {limit} tokens. However, your prompt contains "
                f"{prompt_tokens} input tokens, which exceeds this limit even without any output tokens. "
                "Please reduce the length of the input prompt.",
                "input_tokens",
            )

    def _max_tokens(self, prompt_tokens: int, requested: int | None) -> int:
        room = self.config.max_model_len - prompt_tokens
        max_tokens = room if requested is None else min(requested, room)
        if max_tokens < 1:
            raise ApiError.bad_request(f"max_tokens must be at least 1, got {max_tokens}.", "max_tokens")
        return max_tokens

    @staticmethod
    def _check_token_ids(model: str, token_ids: Sequence[int], param: str) -> None:
        vocabulary = tokens.get_tokenizer(model).instruct_tokenizer.tokenizer.n_words
        for token_id in token_ids:
            if not 0 <= token_id < vocabulary:
                raise ApiError.bad_request(f"Token id {token_id} is out of vocabulary", param)

    def _maybe_inject_error(self) -> None:
        if self.engine.should_inject_error():
            self.engine.counters.injected_errors += 1
            raise ApiError.internal()

    def _text_prompt_tokens(self, model: str, text: str, bos: bool) -> int:
        key = (tokens.tokenizer_version_for(model), bos, _digest(text.encode()))
        count = self._prompt_tokens.get(key)
        if count is None:
            count = tokens.count_text_tokens(model, text, bos=bos)
            self._prompt_tokens.put(key, count)
        return count

    def _chat_prompt_tokens(self, model: str, messages: list[dict[str, Any]], tools: Any, fingerprint: bytes) -> int:
        key = (tokens.tokenizer_version_for(model), _digest(fingerprint))
        count = self._prompt_tokens.get(key)
        if count is None:
            count = tokens.count_chat_prompt_tokens(model, messages, tools if isinstance(tools, list) else None)
            self._prompt_tokens.put(key, count)
        return count

    def _look_up_prefix(self, model: str, cache_salt: str | None, prompt: bytes, prompt_tokens: int) -> None:
        """vLLM's automatic prefix caching, for whole prompts: a prompt seen before under the same ``cache_salt``
        is a hit. vLLM mixes the salt into the hash of a prompt's first block, so requests with different salts
        never share cached blocks (no salt is a salt of its own): that is what keeps one tenant from timing
        another's prompts. Counted in tokens, as vLLM's prefix_cache_queries and prefix_cache_hits are."""
        salt = b"-" if cache_salt is None else b"s" + cache_salt.encode()
        key = _digest(b"\x00".join((model.encode(), salt, prompt)))
        counters = self.engine.counters
        counters.prefix_cache_queries += prompt_tokens
        if self._prefix_cache.get(key) is not None:
            counters.prefix_cache_hits += prompt_tokens
        else:
            self._prefix_cache.put(key, True)

    def _sources(self, model: str, echo_text: str | None, key: bytes, n: int) -> list[TokenizedText]:
        if echo_text is not None and echo_text.startswith(ECHO_PREFIX):
            return [self.echoes.get(model, echo_text)] * n
        return [self.bank.pick(model, key, i) for i in range(n)]

    def _structured_sources(self, model: str, response_format: dict, key: bytes, n: int) -> list[TokenizedText]:
        """An instance of the requested schema per choice (``inference.simulator.structured``). While the
        ``invalid_structured_outputs`` knob is above zero, this request's replies are broken JSON instead and
        the knob counts down: tests of a caller's retry path ask for exactly as many failures as they need."""
        invalid = self.knobs.take_invalid_structured_output()
        try:
            texts = [structured.structured_text(response_format, key + bytes([i % 256]), invalid=invalid)
                     for i in range(n)]
        except structured.Unsupported as exc:
            raise ApiError.bad_request(f"response_format: {exc}", param="response_format") from None
        return [tokenize_with_offsets(model, text) for text in texts]

    # --- generation --------------------------------------------------------------------------

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        arrival = time.monotonic()
        self.engine.counters.seen("chat.completions")
        body = await self._json_body(request)
        req = parse(ChatCompletionRequest, body)
        model = self._resolve_model(req.model, "generate")
        self._check_engine_alive()
        tools = body.get("tools")
        fingerprint = orjson.dumps([req.messages, tools])
        prompt_tokens = self._chat_prompt_tokens(model, req.messages, tools, fingerprint)
        self._check_context(prompt_tokens)
        n = req.n if req.n is not None else 1
        requested = req.max_completion_tokens or req.max_tokens
        check_sampling(
            n=n, max_tokens=requested, temperature=req.temperature, top_p=req.top_p,
            presence_penalty=req.presence_penalty, frequency_penalty=req.frequency_penalty,
            min_tokens=req.min_tokens,
        )  # fmt: skip
        max_tokens = self._max_tokens(prompt_tokens, requested)
        self._maybe_inject_error()
        self._look_up_prefix(model, req.cache_salt, fingerprint, prompt_tokens)

        stop = _stop_list(req.stop)
        key = request_key(fingerprint, req.seed)
        if structured.wants_structured(req.response_format):
            sources = self._structured_sources(model, req.response_format, key, n)
        else:
            sources = self._sources(model, _last_user_text(req.messages), key, n)
        outputs = [finish(source, max_tokens=max_tokens, stop=stop) for source in sources]
        request_id = "chatcmpl-" + self._request_id(request, req.request_id)
        created = int(time.time())
        role = "assistant" if req.add_generation_prompt else str(req.messages[-1].get("role", "assistant"))
        fingerprint_str = self._fingerprints[model]
        if req.stream:
            options = req.stream_options
            include_usage = bool(options and options.include_usage)
            shape = StreamShape(include_usage, include_usage and bool(options and options.continuous_usage_stats))
            renderer = ChatStreamRenderer(
                request_id=request_id, created=created, model=model, role=role, fingerprint=fingerprint_str,
                shape=shape, prompt_tokens=prompt_tokens,
            )  # fmt: skip
            return await self._stream(
                request, model, arrival, outputs, [prompt_tokens] * n, prompt_tokens, shape,
                role_event=renderer.role,
                content_event=lambda i, d, c, _p: renderer.content(i, d, c),
                final_event=lambda i, d, c, _p, out: renderer.final(i, d, c, out),
                usage_event=lambda _p, c: renderer.usage(c),
            )  # fmt: skip
        await self._generate(model, arrival, outputs, prompt_tokens)
        payload = chat_completion_body(
            request_id=request_id, created=created, model=model, role=role, outputs=outputs,
            prompt_tokens=prompt_tokens, fingerprint=fingerprint_str,
        )  # fmt: skip
        return web.Response(body=payload, content_type=JSON)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        arrival = time.monotonic()
        self.engine.counters.seen("completions")
        body = await self._json_body(request)
        req = parse(CompletionRequest, body)
        model = self._resolve_model(req.model, "generate")
        self._check_engine_alive()
        prompts = self._completion_prompts(req.prompt)
        counts: list[int] = []
        for prompt in prompts:
            if isinstance(prompt, str):
                counts.append(self._text_prompt_tokens(model, prompt, req.add_special_tokens))
            else:
                self._check_token_ids(model, prompt, "prompt")
                counts.append(len(prompt))
        for count in counts:
            self._check_context(count)
        check_sampling(
            n=req.n, max_tokens=req.max_tokens, temperature=req.temperature, top_p=req.top_p,
            presence_penalty=req.presence_penalty, frequency_penalty=req.frequency_penalty,
            min_tokens=req.min_tokens,
        )  # fmt: skip
        budgets = [self._max_tokens(count, req.max_tokens) for count in counts]
        self._maybe_inject_error()

        stop = _stop_list(req.stop)
        outputs: list[ChoiceOutput] = []
        per_choice_prompt: list[int] = []
        for prompt, count, budget in zip(prompts, counts, budgets, strict=True):
            text = prompt if isinstance(prompt, str) else tokens.decode_tokens(model, prompt)
            prompt_json = orjson.dumps(prompt)
            self._look_up_prefix(model, req.cache_salt, prompt_json, count)
            key = request_key(prompt_json, req.seed)
            for source in self._sources(model, text, key, req.n):
                outputs.append(finish(source, max_tokens=budget, stop=stop))
                per_choice_prompt.append(count)
        request_id = "cmpl-" + self._request_id(request, req.request_id)
        created = int(time.time())
        fingerprint_str = self._fingerprints[model]
        total_prompt = sum(counts)
        if req.stream:
            options = req.stream_options
            include_usage = bool(options and options.include_usage)
            shape = StreamShape(include_usage, include_usage and bool(options and options.continuous_usage_stats))
            renderer = CompletionStreamRenderer(
                request_id=request_id, created=created, model=model, fingerprint=fingerprint_str, shape=shape
            )
            return await self._stream(
                request, model, arrival, outputs, per_choice_prompt, total_prompt, shape,
                role_event=None, content_event=renderer.content, final_event=renderer.final,
                usage_event=renderer.usage,
            )  # fmt: skip
        await self._generate(model, arrival, outputs, total_prompt)
        payload = completion_body(
            request_id=request_id, created=created, model=model, outputs=outputs,
            prompt_tokens=total_prompt, fingerprint=fingerprint_str,
        )  # fmt: skip
        return web.Response(body=payload, content_type=JSON)

    @staticmethod
    def _completion_prompts(prompt: Any) -> list[str | list[int]]:
        if isinstance(prompt, str):
            return [prompt]
        if prompt and isinstance(prompt[0], int):
            return [prompt]
        return list(prompt or [])

    def _abort_step(self, steps: int) -> int | None:
        """The step at which the abort knob fails this request, or None when it finishes first."""
        limit = self.knobs.abort_after_tokens
        return limit if limit is not None and limit < steps else None

    def _finished(
        self, model_metrics: ModelMetrics, arrival: float, reasons: list[str], prompt_tokens: int, generated: int
    ) -> None:
        model_metrics.record_finished(
            finished_reasons=reasons,
            prompt_tokens=prompt_tokens,
            generation_tokens=generated,
            e2e_seconds=time.monotonic() - arrival,
        )

    async def _generate(self, model: str, arrival: float, outputs: list[ChoiceOutput], prompt_tokens: int) -> None:
        """Run a non-streaming request through admission and the simulated decode time."""
        scheduler: Scheduler = self.engine.schedulers[model]
        model_metrics = self.metrics.models[model]
        slots = await scheduler.acquire(len(outputs))
        admitted = time.monotonic()
        try:
            steps = max(o.num_tokens for o in outputs)
            abort_step = self._abort_step(steps)
            decoded = steps if abort_step is None else abort_step
            delay = self.knobs.ttft_ms + max(decoded - 1, 0) * self.knobs.tpot_ms
            if delay > 0:
                await asyncio.sleep(delay / 1000)
        except asyncio.CancelledError:
            self.engine.counters.client_disconnects += 1
            self._finished(model_metrics, arrival, ["abort"] * len(outputs), prompt_tokens, 0)
            raise
        finally:
            scheduler.release(slots)
        model_metrics.queue_time.observe(admitted - arrival)
        if abort_step is not None:
            self.engine.counters.injected_aborts += 1
            self._finished(model_metrics, arrival, ["error"] * len(outputs), prompt_tokens, abort_step * len(outputs))
            raise ApiError.internal()
        model_metrics.ttft.observe(admitted - arrival + self.knobs.ttft_ms / 1000)
        reasons = [o.finish_reason for o in outputs]
        self._finished(model_metrics, arrival, reasons, prompt_tokens, sum(o.num_tokens for o in outputs))

    async def _stream(
        self,
        request: web.Request,
        model: str,
        arrival: float,
        outputs: list[ChoiceOutput],
        choice_prompt_tokens: list[int],
        total_prompt_tokens: int,
        shape: StreamShape,
        *,
        role_event: Callable[[int], bytes] | None,
        content_event: Callable[[int, bytes, int, int], bytes],
        final_event: Callable[[int, bytes, int, int, ChoiceOutput], bytes],
        usage_event: Callable[[int, int], bytes],
    ) -> web.StreamResponse:
        """Stream one event per token per choice, interleaved by engine step like vLLM's generator."""
        scheduler = self.engine.schedulers[model]
        model_metrics = self.metrics.models[model]
        slots = await scheduler.acquire(len(outputs))
        admitted = time.monotonic()
        emitted = [0] * len(outputs)
        response: web.StreamResponse | None = None
        try:
            if self.knobs.ttft_ms > 0:
                await asyncio.sleep(self.knobs.ttft_ms / 1000)
            # Headers go out with the first output, as with vLLM's StreamingResponse.
            response = web.StreamResponse(headers=SSE_HEADERS)
            await response.prepare(request)
            model_metrics.queue_time.observe(admitted - arrival)
            model_metrics.ttft.observe(time.monotonic() - arrival)
            steps = max(o.num_tokens for o in outputs)
            abort_step = self._abort_step(steps)
            buffer = bytearray()
            if role_event is not None:
                for index in range(len(outputs)):
                    buffer += role_event(index)
            stamp = self.knobs.stamp_chunks
            for step in range(steps if abort_step is None else abort_step):
                for index, output in enumerate(outputs):
                    if step >= output.num_tokens:
                        continue
                    emitted[index] += 1
                    prompt = choice_prompt_tokens[index]
                    delta = output.delta_json[step] if not stamp else b'"@%.6f;"' % time.time()
                    if step == output.num_tokens - 1:
                        buffer += final_event(index, delta, emitted[index], prompt, output)
                    else:
                        buffer += content_event(index, delta, emitted[index], prompt)
                tpot = self.knobs.tpot_ms
                if tpot > 0 and step + 1 < steps:
                    await response.write(bytes(buffer))
                    buffer.clear()
                    await asyncio.sleep(tpot / 1000)
            generated = sum(emitted)
            if abort_step is not None:
                self.engine.counters.injected_aborts += 1
                buffer += streaming_error_frame()
                reasons = ["error"] * len(outputs)
            else:
                if shape.include_usage:
                    buffer += usage_event(total_prompt_tokens, generated)
                reasons = [o.finish_reason for o in outputs]
            buffer += DONE
            await response.write(bytes(buffer))
            await response.write_eof()
        except (asyncio.CancelledError, ConnectionResetError) as exc:
            # The client went away: vLLM aborts the request in the engine (``with_cancellation``).
            self.engine.counters.client_disconnects += 1
            self._finished(model_metrics, arrival, ["abort"] * len(outputs), total_prompt_tokens, sum(emitted))
            if isinstance(exc, asyncio.CancelledError) or response is None:
                raise
            return response  # nobody is left to read an error
        finally:
            scheduler.release(slots)
        self._finished(model_metrics, arrival, reasons, total_prompt_tokens, generated)
        return response

    # --- embeddings --------------------------------------------------------------------------

    async def embeddings(self, request: web.Request) -> web.StreamResponse:
        arrival = time.monotonic()
        self.engine.counters.seen("embeddings")
        body = await self._json_body(request)
        req = parse(EmbeddingRequest, body)
        model = self._resolve_model(req.model, "embed")
        self._check_engine_alive()
        inputs: list[str | list[int]]
        if isinstance(req.input, str):
            inputs = [req.input]
        elif req.input and isinstance(req.input[0], int):
            inputs = [req.input]  # type: ignore[list-item]
        else:
            inputs = list(req.input)  # type: ignore[arg-type]
        if not inputs:
            raise ApiError.bad_request("Input list must not be empty.", "input")
        for item in inputs:
            if not isinstance(item, str):
                self._check_token_ids(model, item, "input")
        counts = [self._text_prompt_tokens(model, i, True) if isinstance(i, str) else len(i) for i in inputs]
        for count in counts:
            self._check_context(count)
        width = self.config.embedding_dimensions
        dimensions = req.dimensions
        if dimensions is not None and not 1 <= dimensions <= width:
            raise ApiError.bad_request(f"dimensions must be between 1 and {width}, got {dimensions}.", "dimensions")

        scheduler = self.engine.schedulers[model]
        model_metrics = self.metrics.models[model]
        slots = await scheduler.acquire(len(inputs))
        try:
            if self.knobs.ttft_ms > 0:
                await asyncio.sleep(self.knobs.ttft_ms / 1000)
        finally:
            scheduler.release(slots)
        data = []
        for index, item in enumerate(inputs):
            vector = embedding_vector(item, width, dimensions)
            encoded: Any = (
                base64.b64encode(vector.astype("<f4").tobytes()).decode() if req.encoding_format == "base64" else vector
            )
            data.append({"index": index, "object": "embedding", "embedding": encoded})
        total = sum(counts)
        self._finished(model_metrics, arrival, ["stop"] * len(inputs), total, 0)
        payload = {
            "id": "embd-" + self._request_id(request, req.request_id),
            "object": "list",
            "created": int(time.time()),
            "model": model,
            "data": data,
            "usage": usage_full(total, 0),
        }
        return web.Response(body=orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY), content_type=JSON)

    # --- models, health, metrics, tokenizer -------------------------------------------------

    async def list_models(self, request: web.Request) -> web.StreamResponse:
        names = self.config.all_model_names
        payload = model_list_body(
            names=names,
            max_model_len=self.config.max_model_len,
            created=int(time.time()),
            permission_ids=[f"{self._random.getrandbits(64):016x}" for _ in names],
        )
        return web.Response(body=payload, content_type=JSON)

    async def health(self, request: web.Request) -> web.StreamResponse:
        return web.Response(status=200 if self.engine.is_healthy() else 503)

    async def version(self, request: web.Request) -> web.StreamResponse:
        return web.Response(body=b'{"version":"' + VLLM_VERSION.encode() + b'"}', content_type=JSON)

    async def prometheus(self, request: web.Request) -> web.StreamResponse:
        response = web.Response(body=self.metrics.render())
        response.headers["Content-Type"] = METRICS_CONTENT_TYPE
        return response

    async def tokenize(self, request: web.Request) -> web.StreamResponse:
        body = await self._json_body(request)
        req: TokenizeChatRequest | TokenizeCompletionRequest
        if isinstance(body, dict) and "messages" in body:
            req = parse(TokenizeChatRequest, body)
            model = self._resolve_any_model(req.model)
            try:
                ids = tokens.encode_chat_prompt(model, req.messages, body.get("tools"))
            except Exception as exc:  # mistral-common's refusals are client errors
                raise ApiError.bad_request(str(exc)) from None
        else:
            req = parse(TokenizeCompletionRequest, body)
            model = self._resolve_any_model(req.model)
            ids = tokens.encode_text(model, req.prompt, bos=req.add_special_tokens)
        token_strs = None
        if req.return_token_strs:
            spm = tokens.get_tokenizer(model).instruct_tokenizer.tokenizer
            token_strs = [spm.id_to_piece(i) for i in ids]
        payload = {
            "count": len(ids),
            "max_model_len": self.config.max_model_len,
            "tokens": ids,
            "token_strs": token_strs,
        }
        return web.Response(body=orjson.dumps(payload), content_type=JSON)

    async def detokenize(self, request: web.Request) -> web.StreamResponse:
        body = await self._json_body(request)
        req = parse(DetokenizeRequest, body)
        model = self._resolve_any_model(req.model)
        self._check_token_ids(model, req.tokens, "tokens")
        payload = {"prompt": tokens.decode_tokens(model, req.tokens)}
        return web.Response(body=orjson.dumps(payload), content_type=JSON)

    # --- simulator-only control plane -------------------------------------------------------

    async def sim_control(self, request: web.Request) -> web.StreamResponse:
        body = await self._json_body(request)
        if not isinstance(body, dict):
            raise ApiError.bad_request("expected a JSON object of knobs")
        try:
            self.knobs.apply(body)
        except ConfigError as exc:
            raise ApiError.bad_request(str(exc)) from None
        if "startup_delay_s" in body:
            self.engine.restart_cold_start()
        if "max_num_seqs" in body:
            self.engine.wake_schedulers()
        return web.Response(body=orjson.dumps(self.engine.state()), content_type=JSON)

    async def sim_state(self, request: web.Request) -> web.StreamResponse:
        return web.Response(body=orjson.dumps(self.engine.state()), content_type=JSON)


def embedding_vector(item: str | list[int], width: int, dimensions: int | None) -> np.ndarray:
    """A unit-norm float32 vector that depends only on the input (and the requested width)."""
    raw = item.encode() if isinstance(item, str) else orjson.dumps(item)
    seed = int.from_bytes(hashlib.blake2b(raw, digest_size=8).digest(), "little")
    vector = np.random.default_rng(seed).standard_normal(width, dtype=np.float32)
    if dimensions is not None:
        vector = vector[:dimensions]
    return vector / np.linalg.norm(vector)
