"""Prometheus metrics of the data plane, served at ``/metrics`` to internal callers or with a token.

Label children are cached so a request costs a few dictionary lookups; backend gauges are read from the
pool at scrape time, costing the request path nothing. With ``PROMETHEUS_MULTIPROC_DIR`` set (several
uvicorn workers), counters and histograms are aggregated across workers by prometheus_client.
"""

from __future__ import annotations

import ipaddress
import os

from django.conf import settings
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1)

_MULTIPROCESS = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))

REQUESTS = Counter("wattle_requests", "Requests served by the /v1 API.", ["endpoint", "model", "status"])
REJECTIONS = Counter("wattle_rejections", "Requests refused before reaching a backend, by reason.", ["reason"])
TOKENS = Counter("wattle_tokens", "Tokens billed, by model and kind (prompt or completion).", ["model", "kind"])
LATENCY = Histogram(
    "wattle_request_duration_seconds", "End-to-end request time.", ["endpoint", "model"], buckets=_LATENCY_BUCKETS
)
TTFT = Histogram("wattle_time_to_first_token_seconds", "Time to the first token.", ["model"], buckets=_LATENCY_BUCKETS)
OVERHEAD = Histogram(
    "wattle_gateway_overhead_seconds", "Time spent in the gateway rather than waiting on a backend.",
    buckets=_OVERHEAD_BUCKETS,
)
_gauge_mode = {"multiprocess_mode": "livesum"} if _MULTIPROCESS else {}
PENDING = Gauge(
    "wattle_pending_requests",
    "Requests admitted and not finished, by model (includes requests held for a cold start): scale on this.",
    ["model"], **_gauge_mode,
)
OPEN_STREAMS = Gauge("wattle_open_streams", "Streaming responses in progress.", **_gauge_mode)

_requests_children: dict[tuple[str, str, int], object] = {}
_latency_children: dict[tuple[str, str], object] = {}
_ttft_children: dict[str, object] = {}
_token_children: dict[tuple[str, str], object] = {}
_pending_children: dict[str, object] = {}


def _child(cache: dict, metric, key):
    child = cache.get(key)
    if child is None:
        child = cache[key] = metric.labels(*key) if isinstance(key, tuple) else metric.labels(key)
    return child


def pending(model: str):
    return _child(_pending_children, PENDING, model)


def observe_request(*, endpoint: str, model: str, status: int, duration_s: float, ttft_s: float | None,
                    prompt_tokens: int, completion_tokens: int, overhead_s: float, error_code: str) -> None:
    model = model or "-"
    _child(_requests_children, REQUESTS, (endpoint, model, status)).inc()
    _child(_latency_children, LATENCY, (endpoint, model)).observe(duration_s)
    OVERHEAD.observe(overhead_s)
    if ttft_s is not None:
        _child(_ttft_children, TTFT, model).observe(ttft_s)
    if prompt_tokens:
        _child(_token_children, TOKENS, (model, "prompt")).inc(prompt_tokens)
    if completion_tokens:
        _child(_token_children, TOKENS, (model, "completion")).inc(completion_tokens)
    if status >= 400 and status != 499:
        REJECTIONS.labels(error_code or str(status)).inc()


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
        from prometheus_client import REGISTRY as registry
    registry.register(BackendCollector(gateway))
    return registry


def render(registry) -> tuple[bytes, str]:
    return generate_latest(registry), CONTENT_TYPE_LATEST


def _networks():
    return [ipaddress.ip_network(n, strict=False) for n in settings.METRICS_ALLOWED_NETWORKS]


def scrape_allowed(scope, headers: dict[bytes, bytes]) -> bool:
    """A bearer token (``METRICS_TOKEN``), or a direct caller from an internal network with no proxy in between."""
    token = settings.METRICS_TOKEN
    if token:
        presented = headers.get(b"authorization", b"").decode("latin-1")
        import hmac

        if hmac.compare_digest(presented, f"Bearer {token}"):
            return True
    if b"x-forwarded-for" in headers or b"forwarded" in headers:
        return False  # it came through the load balancer: public traffic, whatever the peer address says
    client = scope.get("client")
    if not client:
        return False
    try:
        address = ipaddress.ip_address(client[0])
    except ValueError:
        return False
    return any(address in network for network in _networks())
