"""Closed-loop load generator: N clients, each sending its next request as soon as the last one finished.

Every response is validated (status, content, ``[DONE]``, usage when asked for and only then), latencies
are kept per request, and TTFT for streams is the time to the first ``data:`` event that carries content.
The run is bounded: no new request after the deadline or ``max_requests``, and whatever is still in flight
then gets ``request_timeout_s`` to finish before it is cancelled.

``python -m bench.loadgen`` reads a ``LoadSpec`` as JSON on stdin and writes a ``LoadResult`` as JSON on
stdout, so that the orchestrator can run it in its own process with its own event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson

_ERROR_SAMPLES = 5


@dataclass(frozen=True, slots=True)
class LoadSpec:
    url: str
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)
    concurrency: int = 1
    duration_s: float = 5.0
    warmup_s: float = 1.0
    # Client starts are spread over this long, so thousands of streams don't open in one burst.
    ramp_s: float = 0.0
    max_requests: int | None = None
    request_timeout_s: float = 60.0
    # Stream responses must carry the ``choices: []`` usage chunk exactly when this is true.
    expect_usage: bool = False

    @property
    def stream(self) -> bool:
        return self.body.get("stream") is True

    def to_json(self) -> bytes:
        return orjson.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, raw: bytes) -> LoadSpec:
        return cls(**orjson.loads(raw))


@dataclass(slots=True)
class Summary:
    """Distribution of one measurement, in milliseconds."""

    count: int
    mean: float
    p50: float
    p95: float
    p99: float
    max: float

    @classmethod
    def of(cls, samples: list[float]) -> Summary | None:
        if not samples:
            return None
        ordered = sorted(samples)
        return cls(
            count=len(ordered),
            mean=sum(ordered) / len(ordered),
            p50=percentile(ordered, 50),
            p95=percentile(ordered, 95),
            p99=percentile(ordered, 99),
            max=ordered[-1],
        )


@dataclass(slots=True)
class LoadResult:
    url: str
    concurrency: int
    stream: bool
    window_s: float
    # Requests that finished inside the measurement window (after the warm-up, before the deadline).
    ok: int
    errors: int
    # Every request sent, warm-up and drain included: what the gateway must have settled and billed.
    sent: int
    errors_total: int
    cancelled: int
    rps: float
    latency_ms: Summary | None
    ttft_ms: Summary | None
    overhead_ms: Summary | None
    error_kinds: dict[str, int]
    error_samples: list[str]

    def to_json(self) -> bytes:
        return orjson.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, raw: bytes) -> LoadResult:
        data = orjson.loads(raw)
        for name in ("latency_ms", "ttft_ms", "overhead_ms"):
            if data[name] is not None:
                data[name] = Summary(**data[name])
        return cls(**data)


def percentile(ordered: list[float], pct: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


class InvalidResponse(Exception):
    """The response arrived but is not what an OpenAI client would accept."""

    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind


def validate_json_body(data: bytes) -> None:
    """A non-stream completion: choices with non-empty content, and usage (always sent without streaming)."""
    try:
        payload = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise InvalidResponse("invalid json", data[:120].decode(errors="replace")) from None
    if not isinstance(payload, dict):
        raise InvalidResponse("invalid json", "not an object")
    choices = payload.get("choices")
    if not isinstance(choices, list) or not choices:
        raise InvalidResponse("no choices")
    for choice in choices:
        message = choice.get("message") if isinstance(choice, dict) else None
        content = message.get("content") if isinstance(message, dict) else choice.get("text")
        if not isinstance(content, str) or not content:
            raise InvalidResponse("no content")
    usage = payload.get("usage")
    if not isinstance(usage, dict) or not usage.get("completion_tokens"):
        raise InvalidResponse("no usage")


def _has_content(choices: Any) -> bool:
    if not isinstance(choices, list):
        return False
    for choice in choices:
        if not isinstance(choice, dict):
            continue
        delta = choice.get("delta")
        text = delta.get("content") if isinstance(delta, dict) else choice.get("text")
        if isinstance(text, str) and text:
            return True
    return False


class StreamValidator:
    """Checks an SSE completion stream as it arrives: ``data:`` events only, content, usage, ``[DONE]`` last.

    ``feed`` returns True when the chunk contained the first content event (the TTFT moment).
    """

    __slots__ = ("_buffer", "content_seen", "done", "events", "expect_usage", "usage_seen")

    def __init__(self, *, expect_usage: bool) -> None:
        self.expect_usage = expect_usage
        self._buffer = b""
        self.content_seen = False
        self.usage_seen = False
        self.done = False
        self.events = 0

    def feed(self, chunk: bytes) -> bool:
        self._buffer += chunk
        first_content = False
        while True:
            end = self._buffer.find(b"\n\n")
            if end < 0:
                return first_content
            event = self._buffer[:end]
            self._buffer = self._buffer[end + 2 :]
            if self._event(event):
                first_content = True

    def _event(self, event: bytes) -> bool:
        if not event.startswith(b"data: "):
            raise InvalidResponse("malformed sse", event[:80].decode(errors="replace"))
        if self.done:
            raise InvalidResponse("event after [DONE]")
        payload = event[6:]
        self.events += 1
        if payload == b"[DONE]":
            self.done = True
            return False
        # Once content was seen only usage and error frames matter; skip parsing the rest to keep the
        # load generator's own CPU cost per chunk low (it shares the machine with what it measures).
        if self.content_seen and b'"usage":{' not in payload and not payload.startswith(b'{"error"'):
            return False
        try:
            obj = orjson.loads(payload)
        except orjson.JSONDecodeError:
            raise InvalidResponse("invalid json in stream", payload[:80].decode(errors="replace")) from None
        if not isinstance(obj, dict):
            raise InvalidResponse("invalid json in stream", "not an object")
        if "error" in obj:
            raise InvalidResponse("stream error frame", str(obj["error"])[:120])
        choices = obj.get("choices")
        if choices == [] and isinstance(obj.get("usage"), dict):
            self.usage_seen = True
            return False
        if not self.content_seen and _has_content(choices):
            self.content_seen = True
            return True
        return False

    def finish(self) -> None:
        if self._buffer.strip():
            raise InvalidResponse("truncated event", self._buffer[:80].decode(errors="replace"))
        if not self.done:
            raise InvalidResponse("no [DONE]")
        if not self.content_seen:
            raise InvalidResponse("no content")
        if self.expect_usage and not self.usage_seen:
            raise InvalidResponse("no usage")
        if not self.expect_usage and self.usage_seen:
            raise InvalidResponse("unrequested usage")


@dataclass(slots=True)
class _Sample:
    finished: float
    latency_ms: float
    ttft_ms: float | None
    overhead_ms: float | None
    error: str | None


class LoadGenerator:
    def __init__(self, spec: LoadSpec) -> None:
        if urlsplit(spec.url).hostname not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError("the load generator only sends traffic to this machine (127.0.0.1)")
        self.spec = spec
        self._body = orjson.dumps(spec.body)
        self._headers = {"content-type": "application/json", **spec.headers}
        self._samples: list[_Sample] = []
        self._error_samples: list[str] = []
        self._sent = 0
        self._cancelled = 0

    async def run(self) -> LoadResult:
        spec = self.spec
        connector = aiohttp.TCPConnector(limit=0, force_close=False)
        timeout = aiohttp.ClientTimeout(total=spec.request_timeout_s)
        async with aiohttp.ClientSession(
            connector=connector, timeout=timeout, auto_decompress=False, skip_auto_headers=("User-Agent",)
        ) as session:
            start = time.perf_counter()
            window_start = start + spec.warmup_s
            deadline = window_start + spec.duration_s
            tasks = [asyncio.create_task(self._client(session, n, start, deadline)) for n in range(spec.concurrency)]
            # In-flight requests at the deadline may finish (that is what the server must settle), but no
            # longer than one request timeout.
            grace = max(0.0, deadline - time.perf_counter()) + spec.request_timeout_s + 1.0
            _done, pending = await asyncio.wait(tasks, timeout=grace)
            for task in pending:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        return self._result(window_start, deadline)

    async def _client(self, session: aiohttp.ClientSession, n: int, start: float, deadline: float) -> None:
        spec = self.spec
        if spec.ramp_s > 0 and spec.concurrency > 1:
            await asyncio.sleep(spec.ramp_s * n / spec.concurrency)
        while time.perf_counter() < deadline:
            if spec.max_requests is not None and self._sent >= spec.max_requests:
                return
            self._sent += 1
            try:
                await self._one(session)
            except asyncio.CancelledError:
                self._cancelled += 1
                raise

    async def _one(self, session: aiohttp.ClientSession) -> None:
        started = time.perf_counter()
        ttft_ms: float | None = None
        overhead_ms: float | None = None
        error: str | None = None
        try:
            async with session.post(self.spec.url, data=self._body, headers=self._headers) as response:
                header = response.headers.get("x-wattle-overhead-ms")
                if header is not None:
                    with contextlib.suppress(ValueError):
                        overhead_ms = float(header)
                if response.status != 200:
                    detail = (await response.read())[:160].decode(errors="replace")
                    raise InvalidResponse(f"http {response.status}", detail)
                if self.spec.stream:
                    validator = StreamValidator(expect_usage=self.spec.expect_usage)
                    async for chunk in response.content.iter_any():
                        if validator.feed(chunk) and ttft_ms is None:
                            ttft_ms = (time.perf_counter() - started) * 1000
                    validator.finish()
                else:
                    validate_json_body(await response.read())
        except InvalidResponse as exc:
            error = exc.kind
            self._note_error(str(exc))
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            error = type(exc).__name__
            self._note_error(f"{error}: {exc}")
        finished = time.perf_counter()
        self._samples.append(_Sample(finished, (finished - started) * 1000, ttft_ms, overhead_ms, error))

    def _note_error(self, text: str) -> None:
        if len(self._error_samples) < _ERROR_SAMPLES:
            self._error_samples.append(text[:240])

    def _result(self, window_start: float, deadline: float) -> LoadResult:
        in_window = [s for s in self._samples if window_start <= s.finished <= deadline]
        good = [s for s in in_window if s.error is None]
        last = max((s.finished for s in self._samples), default=deadline)
        # A run that ran out of requests (max_requests) before its deadline is measured up to its end.
        window_s = max(1e-3, min(deadline, last) - window_start)
        return LoadResult(
            url=self.spec.url,
            concurrency=self.spec.concurrency,
            stream=self.spec.stream,
            window_s=window_s,
            ok=len(good),
            errors=len(in_window) - len(good),
            sent=self._sent,
            errors_total=sum(1 for s in self._samples if s.error is not None) + self._cancelled,
            cancelled=self._cancelled,
            rps=len(good) / window_s if window_s > 0 else 0.0,
            latency_ms=Summary.of([s.latency_ms for s in good]),
            ttft_ms=Summary.of([s.ttft_ms for s in good if s.ttft_ms is not None]),
            overhead_ms=Summary.of([s.overhead_ms for s in good if s.overhead_ms is not None]),
            error_kinds=dict(Counter(s.error for s in self._samples if s.error is not None)),
            error_samples=self._error_samples,
        )


async def run_load(spec: LoadSpec) -> LoadResult:
    return await LoadGenerator(spec).run()


def main() -> int:
    spec = LoadSpec.from_json(sys.stdin.buffer.read())
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    with runner:
        result = runner.run(run_load(spec))
    sys.stdout.buffer.write(result.to_json())
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
