"""Prometheus metrics of the data plane, served at ``/metrics`` to internal callers or with a token.

A request costs a few dictionary updates (no locks: the event loop is the only writer); the metric families
are built when scraped, and backend gauges are read from the pool then. With ``PROMETHEUS_MULTIPROC_DIR`` set
(several uvicorn workers), prometheus_client's shared files add the workers' samples up instead.
"""

from __future__ import annotations

import bisect
import os

from django.conf import settings
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from core.proxies import InternalCallers, internal_callers_for

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1)

_MULTIPROCESS = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))

_DOCS = {
    "wattle_requests": "Requests served by the /v1 API.",
    "wattle_rejections": "Requests refused before reaching a backend, by reason.",
    "wattle_tokens": "Tokens billed, by model and kind (prompt or completion).",
    "wattle_request_duration_seconds": "End-to-end request time.",
    "wattle_time_to_first_token_seconds": "Time to the first token.",
    "wattle_gateway_overhead_seconds": "Time spent in the gateway rather than waiting on a backend.",
    "wattle_pending_requests": (
        "Requests admitted and not finished, by model (includes requests held for a cold start): scale on this."
    ),
    "wattle_open_streams": "Streaming responses in progress.",
}


class _Level:
    """A gauge without a lock: the event loop is the only writer."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0

    def inc(self) -> None:
        self.value += 1

    def dec(self) -> None:
        self.value -= 1


class _Histogram:
    __slots__ = ("buckets", "counts", "sum")

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value

    def cumulative(self) -> list[tuple[str, int]]:
        total, out = 0, []
        for bound, count in zip((*self.buckets, float("inf")), self.counts, strict=True):
            total += count
            out.append(("+Inf" if bound == float("inf") else repr(float(bound)), total))
        return out


class _Store:
    """The data plane's metrics in plain dictionaries: updating one is a dict lookup and an addition, where
    prometheus_client takes a lock per sample. Turned into metric families only when scraped."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, str], int] = {}
        self.rejections: dict[str, int] = {}
        self.tokens: dict[tuple[str, str], int] = {}
        self.latency: dict[tuple[str, str], _Histogram] = {}
        self.ttft: dict[str, _Histogram] = {}
        self.overhead = _Histogram(_OVERHEAD_BUCKETS)
        self.pending: dict[str, _Level] = {}
        self.open_streams = _Level()

    def observe(self, endpoint, model, status, duration_s, ttft_s, prompt_tokens, completion_tokens, overhead_s,
                error_code) -> None:
        key = (endpoint, model, status)
        self.requests[key] = self.requests.get(key, 0) + 1
        histogram = self.latency.get((endpoint, model))
        if histogram is None:
            histogram = self.latency[(endpoint, model)] = _Histogram(_LATENCY_BUCKETS)
        histogram.observe(duration_s)
        self.overhead.observe(overhead_s)
        if ttft_s is not None:
            histogram = self.ttft.get(model)
            if histogram is None:
                histogram = self.ttft[model] = _Histogram(_LATENCY_BUCKETS)
            histogram.observe(ttft_s)
        if prompt_tokens:
            self.tokens[(model, "prompt")] = self.tokens.get((model, "prompt"), 0) + prompt_tokens
        if completion_tokens:
            self.tokens[(model, "completion")] = self.tokens.get((model, "completion"), 0) + completion_tokens
        if status >= 400 and status != 499:
            reason = error_code or str(status)
            self.rejections[reason] = self.rejections.get(reason, 0) + 1

    def collect(self):
        families = []
        family = CounterMetricFamily(
            "wattle_requests", _DOCS["wattle_requests"], labels=["endpoint", "model", "status"]
        )
        for (endpoint, model, status), value in self.requests.items():
            family.add_metric([endpoint, model, str(status)], value)
        families.append(family)
        family = CounterMetricFamily("wattle_rejections", _DOCS["wattle_rejections"], labels=["reason"])
        for reason, value in self.rejections.items():
            family.add_metric([reason], value)
        families.append(family)
        family = CounterMetricFamily("wattle_tokens", _DOCS["wattle_tokens"], labels=["model", "kind"])
        for (model, kind), value in self.tokens.items():
            family.add_metric([model, kind], value)
        families.append(family)
        for name, labels, items in (
            ("wattle_request_duration_seconds", ["endpoint", "model"], [(list(k), h) for k, h in self.latency.items()]),
            ("wattle_time_to_first_token_seconds", ["model"], [([k], h) for k, h in self.ttft.items()]),
            ("wattle_gateway_overhead_seconds", [], [([], self.overhead)]),
        ):
            family = HistogramMetricFamily(name, _DOCS[name], labels=labels)
            for label_values, histogram in items:
                family.add_metric(label_values, histogram.cumulative(), histogram.sum)
            families.append(family)
        family = GaugeMetricFamily("wattle_pending_requests", _DOCS["wattle_pending_requests"], labels=["model"])
        for model, level in self.pending.items():
            family.add_metric([model], level.value)
        families.append(family)
        families.append(GaugeMetricFamily("wattle_open_streams", _DOCS["wattle_open_streams"],
                                          value=self.open_streams.value))
        return families


if _MULTIPROCESS:
    # Several uvicorn workers behind one scrape: prometheus_client adds their samples up through its files.
    _REQUESTS = Counter("wattle_requests", _DOCS["wattle_requests"], ["endpoint", "model", "status"])
    _REJECTIONS = Counter("wattle_rejections", _DOCS["wattle_rejections"], ["reason"])
    _TOKENS = Counter("wattle_tokens", _DOCS["wattle_tokens"], ["model", "kind"])
    _LATENCY = Histogram("wattle_request_duration_seconds", _DOCS["wattle_request_duration_seconds"],
                         ["endpoint", "model"], buckets=_LATENCY_BUCKETS)
    _TTFT = Histogram("wattle_time_to_first_token_seconds", _DOCS["wattle_time_to_first_token_seconds"], ["model"],
                      buckets=_LATENCY_BUCKETS)
    _OVERHEAD = Histogram("wattle_gateway_overhead_seconds", _DOCS["wattle_gateway_overhead_seconds"],
                          buckets=_OVERHEAD_BUCKETS)
    _PENDING = Gauge("wattle_pending_requests", _DOCS["wattle_pending_requests"], ["model"],
                     multiprocess_mode="livesum")
    OPEN_STREAMS = Gauge("wattle_open_streams", _DOCS["wattle_open_streams"], multiprocess_mode="livesum")
    _STORE = None
else:
    _STORE = _Store()
    OPEN_STREAMS = _STORE.open_streams


def pending(model: str):
    """The gauge of requests in flight for ``model`` (inc when admitted, dec when done)."""
    if _STORE is not None:
        level = _STORE.pending.get(model)
        if level is None:
            level = _STORE.pending[model] = _Level()
        return level
    return _PENDING.labels(model)


# Label values come from our own vocabulary (endpoints, error codes) or from the pool's known models: the
# gateway records a model name only once it is known. Anything else is "unknown", so that no client-chosen
# string can add a time series (a million made-up model names would be a million series).
_MAX_LABEL_CHARS = 128


def _label(value: str) -> str:
    return value if value and len(value) <= _MAX_LABEL_CHARS else "unknown"


def observe_request(*, endpoint: str, model: str, status: int, duration_s: float, ttft_s: float | None,
                    prompt_tokens: int, completion_tokens: int, overhead_s: float, error_code: str) -> None:
    model = _label(model)
    error_code = _label(error_code) if error_code else error_code
    if _STORE is not None:
        _STORE.observe(endpoint, model, status, duration_s, ttft_s, prompt_tokens, completion_tokens, overhead_s,
                       error_code)
        return
    _REQUESTS.labels(endpoint, model, status).inc()
    _LATENCY.labels(endpoint, model).observe(duration_s)
    _OVERHEAD.observe(overhead_s)
    if ttft_s is not None:
        _TTFT.labels(model).observe(ttft_s)
    if prompt_tokens:
        _TOKENS.labels(model, "prompt").inc(prompt_tokens)
    if completion_tokens:
        _TOKENS.labels(model, "completion").inc(completion_tokens)
    if status >= 400 and status != 499:
        _REJECTIONS.labels(error_code or str(status)).inc()


class BackendCollector:
    """Backend health and load, read from this worker's pool when scraped."""

    def __init__(self, gateway) -> None:
        self._gateway = gateway

    def collect(self):
        healthy = GaugeMetricFamily("wattle_backend_healthy", "1 if the backend answers /health.", labels=["backend"])
        outstanding = GaugeMetricFamily(
            "wattle_backend_outstanding_requests", "Requests in flight to the backend from this worker.",
            labels=["backend"],
        )
        waiting = GaugeMetricFamily(
            "wattle_backend_queue_waiting", "vLLM's num_requests_waiting at the last probe.", labels=["backend"]
        )
        pool = self._gateway.pool
        for backend in pool.backends.values() if pool else ():
            healthy.add_metric([backend.name], 1.0 if backend.healthy else 0.0)
            outstanding.add_metric([backend.name], backend.outstanding)
            waiting.add_metric([backend.name], backend.queue_waiting)
        return [healthy, outstanding, waiting]


def build_registry(gateway) -> CollectorRegistry:
    if _MULTIPROCESS:
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = CollectorRegistry()
        registry.register(_STORE)
    registry.register(BackendCollector(gateway))
    return registry


def render(registry) -> tuple[bytes, str]:
    return generate_latest(registry), CONTENT_TYPE_LATEST


def internal_callers() -> InternalCallers:
    """The internal-caller rule from the settings (cached per value: tests and operators may change them)."""
    return internal_callers_for(
        settings.METRICS_TOKEN or "", tuple(settings.METRICS_ALLOWED_NETWORKS), settings.TRUSTED_PROXIES
    )


def scrape_allowed(scope, headers: dict[bytes, bytes]) -> bool:
    """A bearer token (``METRICS_TOKEN``), or a caller from an internal network: its own address, or the one
    the trusted proxies vouch for (``TRUSTED_PROXIES``). Forwarding headers no trusted proxy wrote mean public
    traffic came through a proxy we don't know, whatever the peer address says."""
    client = scope.get("client")
    forwarded_for = headers.get(b"x-forwarded-for")
    return internal_callers().allowed(
        peer=client[0] if client else None,
        forwarded_for=forwarded_for.decode("latin-1") if forwarded_for is not None else None,
        forwarded=b"forwarded" in headers,
        authorization=headers.get(b"authorization", b""),
    )
