"""Usage events leave the data plane through a Redis stream, batched off the request path.

Each finished request appends one event to an in-memory buffer; a background task writes the buffer to the
stream with one pipelined round trip per batch. While Redis is unreachable, events go to an fsynced spool
file on local disk (``INFERENCE_USAGE_SPOOL_DIR``) and are replayed once Redis answers again, by this worker
or, if it died, by any other.

Redis may also come back empty (a restart without persistence), taking with it events not yet ingested. So
a worker keeps each event it wrote until the ingest group has acknowledged it (which happens only after the
database commit), and writes again whatever was unconfirmed when it sees that Redis lost its data (the
epoch key it set is gone). The ingest (``billing.services.usage_ingest``) is idempotent on ``request_id``,
so any event written twice is stored once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
from collections import deque
from pathlib import Path

import orjson
from django.conf import settings
from redis.exceptions import ResponseError

from core import contract
from core.fastredis import RedisPyCommands

logger = logging.getLogger("wattle.usage")

_BATCH = 1000
_GATHER_S = 0.005
_PER_ENTRY = 200  # events per stream entry (JSON lines: orjson never writes a raw newline)
_SPOOL_AFTER_S = 1.0  # how long events may wait in memory for Redis before they go to disk
_STALE_REPLAY_S = 60.0  # a ".replaying" file this old was left by a worker that died mid-replay
_CONFIRM_EVERY_S = 0.5
# Unconfirmed events kept for re-sending; past this (ingest down for long), the oldest rely on Redis alone.
_MAX_UNCONFIRMED = 200_000


def _stream_id(raw: bytes | str) -> tuple[int, int]:
    text = raw.decode() if isinstance(raw, bytes) else raw
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


class UsageEmitter:
    def __init__(self, redis, hot=None) -> None:
        """``redis``: a redis-py client (bookkeeping); ``hot``: the per-request command client for XADDs
        (``core.redis.new_hot_redis``; defaults to ``redis`` itself)."""
        self._redis = redis
        self._hot = hot if hot is not None else RedisPyCommands(redis)
        self._stream = settings.INFERENCE_USAGE_STREAM
        self._spool_dir = Path(settings.INFERENCE_USAGE_SPOOL_DIR)
        self._buffer: list[bytes] = []
        self._oldest: float | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._stopping = False
        self.spooled = 0  # events written to disk since start (for metrics and tests)
        self.resent = 0  # events written again after Redis lost them
        self._unconfirmed: deque[tuple[tuple[int, int], bytes]] = deque()
        self._epoch: bytes | None = None
        self._epoch_key = contract.usage_epoch_key()
        self._group = settings.USAGE_INGEST_GROUP

    def emit(self, event: dict) -> None:
        self.emit_bytes(orjson.dumps(event))

    def emit_bytes(self, data: bytes) -> None:
        """An event already serialised (the gateway shares one encoding with its access log)."""
        if not self._buffer:
            self._oldest = time.monotonic()
        self._buffer.append(data)
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

    @property
    def unconfirmed(self) -> int:
        return len(self._unconfirmed)

    async def _xadd(self, lines: list[bytes]) -> None:
        """Write events as stream entries of up to ``_PER_ENTRY`` newline-separated events each: one XADD
        carries a whole burst, which costs Redis and the worker far less than an entry per event."""
        entries = [b"\n".join(lines[i : i + _PER_ENTRY]) for i in range(0, len(lines), _PER_ENTRY)]
        for start in range(0, len(entries), _BATCH):
            batch = entries[start : start + _BATCH]
            ids = await asyncio.gather(*(self._hot.execute("XADD", self._stream, "*", "e", d) for d in batch))
            self._unconfirmed.extend(zip(map(_stream_id, ids), batch, strict=True))
        while len(self._unconfirmed) > _MAX_UNCONFIRMED:
            self._unconfirmed.popleft()

    async def _claim_epoch(self) -> bytes:
        await self._redis.set(self._epoch_key, uuid.uuid4().hex, nx=True)
        return await self._redis.get(self._epoch_key)

    async def confirm(self) -> None:
        """Forget events the ingest group has acknowledged; write again the unconfirmed ones if Redis lost them."""
        epoch = await self._redis.get(self._epoch_key)
        if epoch is None or epoch != self._epoch:
            if self._epoch is not None and self._unconfirmed:
                lost = [data for _id, data in self._unconfirmed]
                self._unconfirmed.clear()
                self._buffer[:0] = lost
                self._oldest = self._oldest or time.monotonic()
                events = sum(entry.count(b"\n") + 1 for entry in lost)
                self.resent += events
                logger.warning("Redis lost its data: writing %d unconfirmed usage events again", events)
            self._epoch = await self._claim_epoch()
            return
        if not self._unconfirmed:
            return
        try:
            groups = await self._redis.xinfo_groups(self._stream)
        except ResponseError:
            return  # no stream yet
        group = next((g for g in groups if g.get("name") in (self._group, self._group.encode())), None)
        if group is None:
            return
        delivered = _stream_id(group["last-delivered-id"])
        summary = await self._redis.xpending(self._stream, self._group)
        first_pending = _stream_id(summary["min"]) if summary.get("pending") else None
        while self._unconfirmed:
            entry_id = self._unconfirmed[0][0]
            if entry_id > delivered or (first_pending is not None and entry_id >= first_pending):
                break
            self._unconfirmed.popleft()

    async def flush(self) -> None:
        """Write everything buffered so far to the stream (raises if Redis is unreachable)."""
        while self._buffer:
            batch = self._buffer[: _BATCH * _PER_ENTRY]
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
        next_confirm = 0.0
        while True:
            now = time.monotonic()
            if now >= next_replay:
                next_replay = now + 5.0
                with contextlib.suppress(Exception):
                    await self.replay_spool()
            if now >= next_confirm:
                next_confirm = now + _CONFIRM_EVERY_S
                with contextlib.suppress(Exception):
                    await self.confirm()
            if not self._buffer:
                if self._stopping:
                    return
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), _CONFIRM_EVERY_S)
                continue
            if not self._stopping:
                # Gather a few milliseconds of events into one write (they are billing records, not replies).
                await asyncio.sleep(_GATHER_S)
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
