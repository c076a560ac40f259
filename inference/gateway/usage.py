"""Usage events leave the data plane through a Redis stream, batched off the request path.

Each finished request appends one event to an in-memory buffer; a background task writes the buffer to the
stream with one pipelined round trip per batch. While Redis is unreachable, events go to an fsynced spool
file on local disk (``INFERENCE_USAGE_SPOOL_DIR``) and are replayed once Redis answers again, by this worker
or, if it died, by any other. The ingest (``billing.services.usage_ingest``) is idempotent on ``request_id``,
so a replay that repeats events is harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from pathlib import Path

import orjson
from django.conf import settings

logger = logging.getLogger("wattle.usage")

_BATCH = 1000
_SPOOL_AFTER_S = 1.0  # how long events may wait in memory for Redis before they go to disk
_STALE_REPLAY_S = 60.0  # a ".replaying" file this old was left by a worker that died mid-replay


class UsageEmitter:
    def __init__(self, redis) -> None:
        self._redis = redis
        self._stream = settings.INFERENCE_USAGE_STREAM
        self._spool_dir = Path(settings.INFERENCE_USAGE_SPOOL_DIR)
        self._buffer: list[bytes] = []
        self._oldest: float | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._stopping = False
        self.spooled = 0  # events written to disk since start (for metrics and tests)

    def emit(self, event: dict) -> None:
        if not self._buffer:
            self._oldest = time.monotonic()
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
        if self._buffer:
            # Redis never came back while we stopped: keep the events on disk for the next worker.
            await asyncio.to_thread(self._spool, self._take_all())

    async def _xadd(self, lines: list[bytes]) -> None:
        for start in range(0, len(lines), _BATCH):
            pipe = self._redis.pipeline(transaction=False)
            for data in lines[start : start + _BATCH]:
                pipe.xadd(self._stream, {"e": data})
            await pipe.execute()

    async def flush(self) -> None:
        """Write everything buffered so far to the stream (raises if Redis is unreachable)."""
        while self._buffer:
            batch = self._buffer[:_BATCH]
            await self._xadd(batch)
            del self._buffer[: len(batch)]
        self._oldest = None

    def _take_all(self) -> list[bytes]:
        taken, self._buffer, self._oldest = self._buffer, [], None
        return taken

    # --- spool -------------------------------------------------------------------------------------
    def _spool(self, lines: list[bytes]) -> None:
        if not lines:
            return
        self._spool_dir.mkdir(parents=True, exist_ok=True)
        path = self._spool_dir / f"{os.getpid()}-{time.time_ns()}.jsonl"
        partial = path.with_suffix(".partial")
        with open(partial, "wb") as handle:
            handle.write(b"\n".join(lines) + b"\n")
            handle.flush()
            os.fsync(handle.fileno())
        partial.rename(path)  # only complete files are ever visible to a replaying worker
        self.spooled += len(lines)
        logger.warning("Redis unavailable: %d usage events spooled to %s", len(lines), path.name)

    def _claim_spool_files(self) -> list[Path]:
        if not self._spool_dir.is_dir():
            return []
        claimed = []
        now = time.time()
        for path in sorted(self._spool_dir.iterdir()):
            try:
                stale = path.suffix == ".replaying" and now - path.stat().st_mtime > _STALE_REPLAY_S
            except FileNotFoundError:
                continue
            if path.suffix == ".jsonl" or stale:
                target = path.with_name(f"{path.stem.split('.')[0]}.{os.getpid()}.replaying")
                try:
                    path.rename(target)  # atomic: one worker wins each file
                    os.utime(target)  # fresh mtime: the claim is alive
                except FileNotFoundError:
                    continue
                claimed.append(target)
        return claimed

    async def replay_spool(self) -> int:
        """Send spooled events to the stream; a file is deleted only after all of it was written."""
        replayed = 0
        for path in await asyncio.to_thread(self._claim_spool_files):
            lines = [line for line in path.read_bytes().split(b"\n") if line]
            await self._xadd(lines)
            path.unlink(missing_ok=True)
            replayed += len(lines)
        if replayed:
            logger.info("replayed %d spooled usage events", replayed)
        return replayed

    # --- loop --------------------------------------------------------------------------------------
    async def _run(self) -> None:
        delay = 0.05
        next_replay = 0.0
        while True:
            if time.monotonic() >= next_replay:
                next_replay = time.monotonic() + 5.0
                with contextlib.suppress(Exception):
                    await self.replay_spool()
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
                if self._oldest is not None and time.monotonic() - self._oldest > _SPOOL_AFTER_S:
                    await asyncio.to_thread(self._spool, self._take_all())
                    next_replay = time.monotonic() + delay
                else:
                    logger.warning("usage stream unavailable (%s); %d events held", exc.__class__.__name__,
                                   len(self._buffer))
                if self._stopping:
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
