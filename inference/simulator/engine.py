"""The simulated engine: admission of sequences, health, failure knobs and counters."""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from dataclasses import dataclass, field

from .config import RuntimeKnobs, SimulatorConfig


class Scheduler:
    """FIFO admission of up to ``max_num_seqs`` concurrently running sequences for one model.

    Like vLLM's scheduler, it never refuses work: sequences beyond the limit wait, and the waiting
    count is what autoscalers watch. A request for ``n`` sequences takes ``n`` slots (capped at the
    limit, so an oversized request still runs once the engine is otherwise idle).
    """

    def __init__(self, knobs: RuntimeKnobs) -> None:
        self._knobs = knobs
        self.running = 0
        self.waiting = 0
        self._queue: deque[tuple[int, asyncio.Future[None]]] = deque()

    @property
    def kv_cache_usage(self) -> float:
        return min(1.0, self.running / self._knobs.max_num_seqs)

    async def acquire(self, sequences: int) -> int:
        """Wait for room for ``sequences`` sequences; returns the slot count to ``release`` later."""
        want = max(1, min(sequences, self._knobs.max_num_seqs))
        if not self._queue and self.running + want <= self._knobs.max_num_seqs:
            self.running += want
            return want
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (want, future)
        self._queue.append(entry)
        self.waiting += want
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release(want)  # admitted just as the client went away
            else:
                self._queue.remove(entry)
                self.waiting -= want
                self.wake()
            raise
        return want

    def release(self, slots: int) -> None:
        self.running -= slots
        self.wake()

    def wake(self) -> None:
        """Admit queued sequences that now fit (also called when max_num_seqs changes at runtime)."""
        limit = self._knobs.max_num_seqs
        while self._queue:
            want, future = self._queue[0]
            if self.running > 0 and self.running + want > limit:
                break
            self._queue.popleft()
            self.waiting -= want
            self.running += want
            future.set_result(None)


@dataclass
class Counters:
    requests_seen: int = 0
    by_endpoint: dict[str, int] = field(default_factory=dict)
    injected_errors: int = 0
    injected_aborts: int = 0
    client_disconnects: int = 0
    # Prompt tokens looked up in the prefix cache, and those found (vLLM's prefix_cache_queries/hits).
    prefix_cache_queries: int = 0
    prefix_cache_hits: int = 0

    def seen(self, endpoint: str) -> None:
        self.requests_seen += 1
        self.by_endpoint[endpoint] = self.by_endpoint.get(endpoint, 0) + 1


class Engine:
    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self.knobs = config.knobs
        self.started_at = time.monotonic()
        self.counters = Counters()
        self.schedulers = {name: Scheduler(self.knobs) for name in config.all_model_names}
        self._random = random.Random()

    def is_cold(self) -> bool:
        delay = self.knobs.startup_delay_s
        return delay > 0 and time.monotonic() - self.started_at < delay

    def is_healthy(self) -> bool:
        return not self.knobs.down and not self.is_cold()

    def should_inject_error(self) -> bool:
        rate = self.knobs.error_rate
        return rate > 0 and (rate >= 1 or self._random.random() < rate)

    def restart_cold_start(self) -> None:
        self.started_at = time.monotonic()

    def wake_schedulers(self) -> None:
        for scheduler in self.schedulers.values():
            scheduler.wake()

    def state(self) -> dict[str, object]:
        return {
            "knobs": self.knobs.as_dict(),
            "healthy": self.is_healthy(),
            "cold": self.is_cold(),
            "uptime_s": round(time.monotonic() - self.started_at, 3),
            "counters": {
                "requests_seen": self.counters.requests_seen,
                "by_endpoint": dict(self.counters.by_endpoint),
                "injected_errors": self.counters.injected_errors,
                "injected_aborts": self.counters.injected_aborts,
                "client_disconnects": self.counters.client_disconnects,
                "prefix_cache_queries": self.counters.prefix_cache_queries,
                "prefix_cache_hits": self.counters.prefix_cache_hits,
                "running": sum(s.running for s in self.schedulers.values()),
                "waiting": sum(s.waiting for s in self.schedulers.values()),
            },
            "models": {
                name: {"running": s.running, "waiting": s.waiting, "kv_cache_usage_perc": s.kv_cache_usage}
                for name, s in self.schedulers.items()
            },
        }
