"""The backend pool as one data-plane worker sees it: which replicas exist, which are healthy, which models
each serves, and how busy each is.

The list comes from Redis (published by the control plane). Health comes from probing each replica's
``/health``; served models and context lengths from ``/v1/models``; queue depth from vLLM's ``/metrics``.
Each worker probes on its own every ``INFERENCE_PROBE_INTERVAL_S`` and at once after a failure, so a dead
replica leaves the rotation within one request and a recovered one returns within one probe.

After each round of probes a worker writes what it now knows of each replica to ``backend_health_key`` (health,
circuit, queue, models, when it last probed): the staff console shows that record, so staff see the state
requests are routed by rather than a second opinion from another prober.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from dataclasses import dataclass, field

import aiohttp
import orjson
from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver

from core import contract

logger = logging.getLogger("wattle.backends")

# billing.pricing.UNITS_PER_MICRO: prices are whole numbers of 10⁻⁴ micro-A$ per token.
PRICE_UNITS_PER_MICRO = 10_000
_BREAKER_THRESHOLD = 3  # consecutive failures that open a backend's circuit


@dataclass(slots=True, eq=False)
class BackendState:
    name: str
    url: str
    api_key: str
    region: str
    configured_models: tuple[str, ...]
    weight: int = 100
    max_concurrency: int = 256
    enabled: bool = True
    draining: bool = False
    # Runtime state, owned by this worker.
    healthy: bool = False
    discovered_models: tuple[str, ...] = ()
    max_model_len: dict[str, int] = field(default_factory=dict)
    outstanding: int = 0
    queue_waiting: float = 0.0
    consecutive_failures: int = 0
    open_until: float = 0.0  # circuit breaker: not chosen before this monotonic time
    last_error: str = ""
    last_probe_at: float = 0.0  # wall-clock seconds of the last probe's answer (or failure); 0: never probed
    headers: dict[str, str] = field(default_factory=dict)
    authorization: str = ""

    @property
    def models(self) -> tuple[str, ...]:
        return self.configured_models or self.discovered_models

    def usable(self, now: float) -> bool:
        return (
            self.enabled
            and not self.draining
            and self.healthy
            and self.open_until <= now
            and self.outstanding < self.max_concurrency
            and self.region in _allowed_regions()
        )

    def record_success(self) -> None:
        self.consecutive_failures = 0
        self.open_until = 0.0
        self.healthy = True

    def record_failure(self, reason: str) -> None:
        """A request to this backend failed: after a few in a row, stop choosing it for a while."""
        self.consecutive_failures += 1
        self.last_error = reason
        if self.consecutive_failures >= _BREAKER_THRESHOLD:
            self.open_until = time.monotonic() + min(30.0, 2.0 ** (self.consecutive_failures - _BREAKER_THRESHOLD))


@functools.cache
def _allowed_regions() -> frozenset[str]:
    return frozenset(settings.ALLOWED_DATA_REGIONS)


@receiver(setting_changed)
def _regions_changed(*, setting: str, **_kwargs) -> None:
    if setting == "ALLOWED_DATA_REGIONS":
        _allowed_regions.cache_clear()


def _parse_queue_waiting(text: str) -> float:
    """Sum of vLLM's ``num_requests_waiting`` over its models, read without a full Prometheus parse."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith("vllm:num_requests_waiting{") or line.startswith("vllm:num_requests_waiting "):
            with contextlib.suppress(ValueError, IndexError):
                total += float(line.rsplit(" ", 1)[1])
    return total


class BackendPool:
    def __init__(self, redis, session: aiohttp.ClientSession) -> None:
        self._redis = redis
        self._session = session
        self.backends: dict[str, BackendState] = {}
        self._ready = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._probing: dict[str, asyncio.Task] = {}
        self._last_warmup: dict[str, float] = {}
        self._background: set[asyncio.Task] = set()
        # model -> (micro-AUD per input token, per output token); published by billing.services.prices_publish:
        # the platform's, and each price list (a plan's) already merged over them, so pricing a request is two
        # dictionary lookups.
        self.prices: dict[str, tuple[float, float]] = {}
        self.price_lists: dict[str, dict[str, tuple[float, float]]] = {}

    # --- lifecycle ---------------------------------------------------------------------------------
    async def start(self) -> None:
        try:
            await self.refresh()
        except Exception as exc:
            logger.warning("backend list unavailable at start-up: %s", exc.__class__.__name__)
        await self.probe_all()
        await self.publish_health()
        self._ready.set()
        self._tasks = [asyncio.create_task(self._refresh_loop()), asyncio.create_task(self._probe_loop())]

    async def stop(self) -> None:
        tasks = [*self._tasks, *self._probing.values(), *self._background]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(settings.INFERENCE_BACKEND_REFRESH_S)
            try:
                await self.refresh()
            except Exception as exc:  # Redis away: keep serving from what we know
                logger.warning("backend list refresh failed: %s", exc.__class__.__name__)

    async def _probe_loop(self) -> None:
        while True:
            await asyncio.sleep(settings.INFERENCE_PROBE_INTERVAL_S)
            await self.probe_all()
            await self.publish_health()

    def health_record(self, backend: BackendState, now: float | None = None) -> dict:
        """What this worker knows of ``backend``, as the staff console shows it."""
        now = time.monotonic() if now is None else now
        return {
            "source": "gateway",
            "checked_at": backend.last_probe_at or None,
            "healthy": backend.healthy,
            "usable": backend.usable(now),
            "circuit": "open" if backend.open_until > now else "closed",
            "circuit_retry_s": round(max(0.0, backend.open_until - now), 1),
            "consecutive_failures": backend.consecutive_failures,
            "queue_waiting": backend.queue_waiting,
            "outstanding": backend.outstanding,
            "models": list(backend.models),
            "max_model_len": dict(backend.max_model_len),
            "error": backend.last_error if not backend.healthy or backend.open_until > now else "",
        }

    async def publish_health(self) -> None:
        """Record each backend's state where the staff console reads it. Best effort: Redis away must not stop
        the probe loop, and the record expires if no worker is left to renew it."""
        if not self.backends:
            return
        ttl = max(30, int(settings.INFERENCE_PROBE_INTERVAL_S * 6))
        now = time.monotonic()
        try:
            pipe = self._redis.pipeline(transaction=False)
            for backend in self.backends.values():
                pipe.set(contract.backend_health_key(backend.name), orjson.dumps(self.health_record(backend, now)),
                         ex=ttl)
            await pipe.execute()
        except Exception as exc:
            logger.warning("backend health not recorded: %s", exc.__class__.__name__)

    # --- list and health ---------------------------------------------------------------------------
    async def refresh(self) -> None:
        raw, raw_prices = await self._redis.mget(contract.backends_key(), contract.prices_key())
        if raw_prices is not None:
            try:
                self.prices, self.price_lists = contract.decode_price_lists(raw_prices)
            except contract.RecordError:
                logger.error("backends: the published prices are not a record of this version; keeping ours")
        if raw is None:
            # Nothing published (or Redis lost its data): keep serving from the list we have; the control
            # plane republishes at start-up and periodically (inference.tasks.publish_snapshots).
            return
        try:
            records = contract.decode_backends(raw)
        except contract.RecordError:
            logger.error("backends: the published list is not a record of this version; keeping ours")
            return
        seen = set()
        for item in records:
            name = item.name
            seen.add(name)
            state = self.backends.get(name)
            if state is None or state.url != item.url:
                state = BackendState(name=name, url=item.url, api_key="", region=item.region,
                                     configured_models=item.models)
                self.backends[name] = state
                self.probe_soon(state)
            state.configured_models = item.models
            state.region = item.region
            state.weight = item.weight
            state.max_concurrency = item.max_concurrency
            state.enabled = item.enabled
            state.draining = item.draining
            state.api_key = item.api_key or ""
            state.headers = {"authorization": f"Bearer {state.api_key}"} if state.api_key else {}
            state.authorization = f"Bearer {state.api_key}" if state.api_key else ""
        for name in list(self.backends):
            if name not in seen:
                del self.backends[name]

    async def probe_all(self) -> None:
        await asyncio.gather(*(self.probe(b) for b in list(self.backends.values()) if b.enabled))

    def probe_soon(self, backend: BackendState) -> asyncio.Task:
        """Probe a backend now, once: concurrent callers share the probe already under way."""
        task = self._probing.get(backend.name)
        if task is None or task.done():
            task = asyncio.create_task(self.probe(backend))
            self._probing[backend.name] = task
        return task

    async def probe(self, backend: BackendState) -> bool:
        timeout = aiohttp.ClientTimeout(total=settings.INFERENCE_PROBE_TIMEOUT_S)
        try:
            async with self._session.get(f"{backend.url}/health", timeout=timeout) as resp:
                healthy = resp.status == 200
            if healthy:
                await self._probe_models(backend, timeout)
                await self._probe_queue(backend, timeout)
        except (aiohttp.ClientError, TimeoutError, ValueError, KeyError) as exc:
            healthy = False
            backend.last_error = exc.__class__.__name__
        backend.last_probe_at = time.time()
        was_healthy = backend.healthy
        if healthy:
            backend.record_success()
        else:
            backend.healthy = False
        if was_healthy != healthy:
            logger.info("backend %s is now %s", backend.name, "healthy" if healthy else "unhealthy")
        return healthy

    async def _probe_models(self, backend: BackendState, limit: aiohttp.ClientTimeout) -> None:
        async with self._session.get(f"{backend.url}/v1/models", timeout=limit, headers=backend.headers) as resp:
            if resp.status != 200:
                return
            cards = (await resp.json(loads=orjson.loads)).get("data", [])
        backend.discovered_models = tuple(card["id"] for card in cards)
        backend.max_model_len = {
            card["id"]: int(card["max_model_len"]) for card in cards if isinstance(card.get("max_model_len"), int)
        }

    async def _probe_queue(self, backend: BackendState, limit: aiohttp.ClientTimeout) -> None:
        async with self._session.get(f"{backend.url}/metrics", timeout=limit) as resp:
            if resp.status == 200:
                backend.queue_waiting = _parse_queue_waiting(await resp.text())

    async def wait_ready(self) -> None:
        await self._ready.wait()

    # --- routing -----------------------------------------------------------------------------------
    def known_models(self) -> set[str]:
        return {m for b in self.backends.values() if b.enabled for m in b.models}

    def cost_micro_aud(self, model: str, prompt_tokens: int, completion_tokens: int,
                       price_list: str | None = None) -> int:
        """What the tokens cost in micro-AUD, rounded up, at the tenant's price list (``TenantRecord.price_list``;
        None, or a list not published: the platform prices)."""
        price = self.price_lists.get(price_list, self.prices).get(model)
        if price is None:
            return 0
        # Prices have at most four decimals of a micro-A$ per token: counted in those units as integers, a request
        # costs exactly what the rollups rate it (in floats, 5 tokens at 0.2 came to 1.0000000000000002 and
        # rounded up to 2).
        units = (prompt_tokens * round(price[0] * PRICE_UNITS_PER_MICRO)
                 + completion_tokens * round(price[1] * PRICE_UNITS_PER_MICRO))
        return -(-units // PRICE_UNITS_PER_MICRO)

    def max_model_len(self, model: str) -> int:
        for backend in self.backends.values():
            length = backend.max_model_len.get(model)
            if length:
                return length
        return settings.INFERENCE_DEFAULT_MAX_MODEL_LEN

    def candidates(self, model: str, exclude: set[str] | None = None) -> list[BackendState]:
        """Usable replicas serving ``model``, least loaded first: requests this worker has in flight there plus
        vLLM's own waiting queue, relative to the replica's weight."""
        now = time.monotonic()
        found = [
            b for b in self.backends.values()
            if model in b.models and b.usable(now) and (not exclude or b.name not in exclude)
        ]
        if len(found) > 1:
            found.sort(key=lambda b: (b.outstanding + b.queue_waiting + 1) / max(b.weight, 1))
        return found

    def serving(self, model: str) -> list[BackendState]:
        """Every enabled backend that serves (or last served) ``model``, usable or not."""
        return [b for b in self.backends.values() if b.enabled and not b.draining and model in b.models]

    # --- scale to zero -----------------------------------------------------------------------------
    def request_warmup(self, model: str, reason: str = "request") -> None:
        """Ask the autoscaler for a replica of ``model`` (at most once per interval per worker)."""
        url = settings.INFERENCE_WARMUP_URL
        if not url:
            return
        now = time.monotonic()
        if now - self._last_warmup.get(model, -1e9) < settings.INFERENCE_WARMUP_MIN_INTERVAL_S:
            return
        self._last_warmup[model] = now
        task = asyncio.create_task(self._call_warmup(url, model, reason))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _call_warmup(self, url: str, model: str, reason: str) -> None:
        try:
            async with self._session.post(
                url, json={"model": model, "reason": reason}, timeout=aiohttp.ClientTimeout(total=5)
            ) as resp:
                if resp.status >= 400:
                    logger.warning("warm-up hook answered %s for %s", resp.status, model)
        except (aiohttp.ClientError, TimeoutError) as exc:
            logger.warning("warm-up hook failed for %s: %s", model, exc.__class__.__name__)

    async def wait_for_capacity(self, model: str, deadline: float) -> list[BackendState]:
        """Hold until a replica of ``model`` is usable or the deadline passes, probing the sleeping ones."""
        interval = 0.25
        while True:
            found = self.candidates(model)
            if found:
                return found
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            sleeping = self.serving(model)
            if sleeping:
                await asyncio.wait([self.probe_soon(b) for b in sleeping], timeout=remaining)
            await asyncio.sleep(min(interval, max(0.0, deadline - time.monotonic())))
            interval = min(interval * 1.5, 1.0)
