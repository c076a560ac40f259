"""Prometheus metrics with vLLM's V1 names, labels and buckets (protocol reference §4).

A private registry keeps the simulator's metrics out of the default one, so several simulators (or a
simulator and the gateway) can live in one test process without clashing. Gauges read the scheduler
state when scraped instead of being updated on every request.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
ENGINE = "0"
FINISHED_REASONS = ("stop", "length", "abort", "error")

TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75,
    1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
REQUEST_LATENCY_BUCKETS = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0,
    60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0,
)  # fmt: skip
INTER_TOKEN_BUCKETS = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class ModelMetrics:
    """Pre-bound label children for one served model, so recording costs no label lookups."""

    prompt_tokens: Counter
    generation_tokens: Counter
    finished: dict[str, Counter]
    ttft: Histogram
    e2e: Histogram
    queue_time: Histogram
    itl: Histogram

    def record_finished(
        self,
        *,
        finished_reasons: list[str],
        prompt_tokens: int,
        generation_tokens: int,
        e2e_seconds: float,
    ) -> None:
        self.prompt_tokens.inc(prompt_tokens)
        if generation_tokens:
            self.generation_tokens.inc(generation_tokens)
        for reason in finished_reasons:
            self.finished[reason].inc()
        self.e2e.observe(e2e_seconds)


class SimulatorMetrics:
    def __init__(self, model_names: tuple[str, ...], max_model_len: int) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        labels = ["model_name", "engine"]
        r = self.registry
        self._running = Gauge(
            "vllm:num_requests_running", "Number of requests in model execution batches.", labels, registry=r
        )
        self._waiting = Gauge(
            "vllm:num_requests_waiting", "Number of requests waiting to be processed.", labels, registry=r
        )
        self._kv = Gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", labels, registry=r)
        prompt = Counter("vllm:prompt_tokens", "Number of prefill tokens processed.", labels, registry=r)
        generation = Counter("vllm:generation_tokens", "Number of generation tokens processed.", labels, registry=r)
        success = Counter(
            "vllm:request_success",
            "Count of successfully processed requests.",
            [*labels, "finished_reason"],
            registry=r,
        )
        ttft = Histogram(
            "vllm:time_to_first_token_seconds",
            "Histogram of time to first token in seconds.",
            labels,
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        e2e = Histogram(
            "vllm:e2e_request_latency_seconds",
            "Histogram of e2e request latency in seconds.",
            labels,
            buckets=REQUEST_LATENCY_BUCKETS,
            registry=r,
        )
        queue = Histogram(
            "vllm:request_queue_time_seconds",
            "Histogram of time spent in WAITING phase for request.",
            labels,
            buckets=REQUEST_LATENCY_BUCKETS,
            registry=r,
        )
        itl = Histogram(
            "vllm:inter_token_latency_seconds",
            "Histogram of inter-token latency in seconds.",
            labels,
            buckets=INTER_TOKEN_BUCKETS,
            registry=r,
        )
        self.max_model_len = max_model_len
        self.models: dict[str, ModelMetrics] = {}
        for name in model_names:
            self.models[name] = ModelMetrics(
                prompt_tokens=prompt.labels(name, ENGINE),
                generation_tokens=generation.labels(name, ENGINE),
                finished={reason: success.labels(name, ENGINE, reason) for reason in FINISHED_REASONS},
                ttft=ttft.labels(name, ENGINE),
                e2e=e2e.labels(name, ENGINE),
                queue_time=queue.labels(name, ENGINE),
                itl=itl.labels(name, ENGINE),
            )

    def bind_gauges(
        self,
        model: str,
        *,
        running: Callable[[], float],
        waiting: Callable[[], float],
        kv_cache_usage: Callable[[], float],
    ) -> None:
        self._running.labels(model, ENGINE).set_function(running)
        self._waiting.labels(model, ENGINE).set_function(waiting)
        self._kv.labels(model, ENGINE).set_function(kv_cache_usage)

    def render(self) -> bytes:
        return generate_latest(self.registry)
