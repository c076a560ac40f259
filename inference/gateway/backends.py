"""The backend pool as one data-plane worker sees it: which replicas exist, which are healthy, which model
each serves, and how busy each is. The list comes from Redis (published by the control plane); health and
served models come from probing each replica's ``/health`` and ``/v1/models``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field

import aiohttp
import orjson
from django.conf import settings

from portal.redis import key as redis_key

logger = logging.getLogger("wattle.backends")

BACKENDS_KEY = "backends"


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
    probed: bool = False
    discovered_models: tuple[str, ...] = ()
    outstanding: int = 0
    consecutive_failures: int = 0
    open_until: float = 0.0  # circuit breaker: skip until this monotonic time
    last_error: str = ""
    headers: dict[str, str] = field(default_factory=dict)

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
            and self.region in settings.ALLOWED_DATA_REGIONS
        )

    def record_success(self) -> None:
        self.consecutive_failures = 0
        self.open_until = 0.0
        self.healthy = True

    def record_failure(self, reason: str) -> None:
        self.consecutive_failures += 1
        self.last_error = reason
        if self.consecutive_failures >= 3:
            # Back off for longer while the replica keeps failing, capped at 30 s.
            self.open_until = time.monotonic() + min(30.0, 2.0 ** (self.consecutive_failures - 2))
            self.healthy = False


class BackendPool:
    def __init__(self, redis, session: aiohttp.ClientSession) -> None:
        self._redis = redis
        self._session = session
        self.backends: dict[str, BackendState] = {}
        self._ready = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._probe_interval = settings.INFERENCE_PROBE_INTERVAL_S

    # --- lifecycle ---------------------------------------------------------------------------------
    async def start(self) -> None:
        await self.refresh()
        await self.probe_all()
        self._ready.set()
        self._tasks = [asyncio.create_task(self._refresh_loop()), asyncio.create_task(self._probe_loop())]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
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
            await asyncio.sleep(self._probe_interval)
            await self.probe_all()

    # --- list and health ---------------------------------------------------------------------------
    async def refresh(self) -> None:
        raw = await self._redis.get(redis_key(BACKENDS_KEY))
        if raw is None:
            # Nothing published (or Redis lost its data): keep serving from the list we have; the control
            # plane republishes at start-up and periodically (inference.tasks.publish_snapshots).
            return
        items = orjson.loads(raw)
        seen = set()
        for item in items:
            name = item["name"]
            seen.add(name)
            state = self.backends.get(name)
            if state is None or state.url != item["url"]:
                state = BackendState(
                    name=name,
                    url=item["url"],
                    api_key=item.get("api_key") or "",
                    region=item["region"],
                    configured_models=tuple(item.get("models") or ()),
                )
                self.backends[name] = state
            state.configured_models = tuple(item.get("models") or ())
            state.region = item["region"]
            state.weight = item.get("weight", 100)
            state.max_concurrency = item.get("max_concurrency", 256)
            state.enabled = item.get("enabled", True)
            state.draining = item.get("draining", False)
            state.api_key = item.get("api_key") or ""
            state.headers = {"authorization": f"Bearer {state.api_key}"} if state.api_key else {}
        for name in list(self.backends):
            if name not in seen:
                del self.backends[name]

    async def probe_all(self) -> None:
        await asyncio.gather(*(self.probe(b) for b in list(self.backends.values()) if b.enabled))

    async def probe(self, backend: BackendState) -> bool:
        timeout = aiohttp.ClientTimeout(total=settings.INFERENCE_PROBE_TIMEOUT_S)
        try:
            async with self._session.get(f"{backend.url}/health", timeout=timeout) as resp:
                healthy = resp.status == 200
            if healthy and not backend.configured_models:
                async with self._session.get(
                    f"{backend.url}/v1/models", timeout=timeout, headers=backend.headers
                ) as resp:
                    if resp.status == 200:
                        data = await resp.json(loads=orjson.loads)
                        backend.discovered_models = tuple(m["id"] for m in data.get("data", []))
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            healthy = False
            backend.last_error = exc.__class__.__name__
        was_healthy = backend.healthy
        backend.probed = True
        if healthy:
            backend.record_success()
        else:
            backend.healthy = False
        if was_healthy != healthy:
            logger.info("backend %s is now %s", backend.name, "healthy" if healthy else "unhealthy")
        return healthy

    async def wait_ready(self) -> None:
        await self._ready.wait()

    # --- routing -----------------------------------------------------------------------------------
    def known_models(self) -> set[str]:
        return {m for b in self.backends.values() if b.enabled for m in b.models}

    def candidates(self, model: str, exclude: set[str] | None = None) -> list[BackendState]:
        """Usable replicas serving ``model``, least loaded first (outstanding requests relative to weight)."""
        now = time.monotonic()
        found = [
            b
            for b in self.backends.values()
            if model in b.models and b.usable(now) and (not exclude or b.name not in exclude)
        ]
        found.sort(key=lambda b: (b.outstanding + 1) / max(b.weight, 1))
        return found
