"""Usage events leave the data plane through a Redis stream, batched off the request path.

Each finished request appends one event to an in-memory buffer; a background task writes the buffer to the
stream with one pipelined round trip per batch and keeps events (retrying) while Redis is unreachable.
The workers' ingest (``billing.services.usage_ingest``) is idempotent on ``request_id``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import orjson
from django.conf import settings

logger = logging.getLogger("wattle.usage")


class UsageEmitter:
    def __init__(self, redis) -> None:
        self._redis = redis
        self._stream = settings.INFERENCE_USAGE_STREAM
        self._buffer: list[bytes] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._stopping = False

    def emit(self, event: dict) -> None:
        self._buffer.append(orjson.dumps(event))
        self._wake.set()

    @property
    def pending(self) -> int:
        return len(self._buffer)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self, grace_s: float = 10.0) -> None:
        self._stopping = True
        self._wake.set()
        if self._task:
            try:
                await asyncio.wait_for(self._task, grace_s)
            except TimeoutError:
                self._task.cancel()
                logger.error("usage emitter stopped with %d events unsent", len(self._buffer))

    async def flush(self) -> None:
        """Write everything buffered so far (raises if Redis is unreachable)."""
        while self._buffer:
            batch = self._buffer[:1000]
            pipe = self._redis.pipeline(transaction=False)
            for data in batch:
                pipe.xadd(self._stream, {"e": data})
            await pipe.execute()
            del self._buffer[: len(batch)]

    async def _run(self) -> None:
        delay = 0.05
        while True:
            if not self._buffer:
                if self._stopping:
                    return
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), 1.0)
                continue
            try:
                await self.flush()
                delay = 0.05
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning(
                    "usage stream unavailable (%s); %d events held", exc.__class__.__name__, len(self._buffer)
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
