"""Prometheus metrics with vLLM's V1 names, labels and buckets (protocol reference §4).

Requests record into plain integers and bucket arrays; a custom collector turns them into metric
families only when ``/metrics`` is scraped. prometheus_client's own metric objects take a lock and
walk every bucket on each update, which at the simulator's request rates costs more than the rest
of a request. The registry is private, so several simulators (or a simulator and the gateway) can
share a test process without clashing.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

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


@dataclass(slots=True)
class _Histogram:
    bounds: tuple[float, ...]
    counts: list[int] = field(init=False)  # per bucket, non-cumulative; last slot is +Inf
    total: float = 0.0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        # bisect_left: a value equal to a bound belongs in that bucket (Prometheus "le").
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def buckets(self) -> list[tuple[str, float]]:
        out, running = [], 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += count
            out.append((floatToGoString(bound), float(running)))
        return out


@dataclass(slots=True)
class ModelMetrics:
    """Everything recorded for one served model."""

    prompt_tokens: int = 0
    generation_tokens: int = 0
    finished: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FINISHED_REASONS, 0))
    ttft: _Histogram = field(default_factory=lambda: _Histogram(TTFT_BUCKETS))
    e2e: _Histogram = field(default_factory=lambda: _Histogram(REQUEST_LATENCY_BUCKETS))
    queue_time: _Histogram = field(default_factory=lambda: _Histogram(REQUEST_LATENCY_BUCKETS))

    def record_finished(
        self, *, finished_reasons: list[str], prompt_tokens: int, generation_tokens: int, e2e_seconds: float
    ) -> None:
        self.prompt_tokens += prompt_tokens
        self.generation_tokens += generation_tokens
        for reason in finished_reasons:
            self.finished[reason] += 1
        self.e2e.observe(e2e_seconds)


@dataclass(slots=True)
class _Gauges:
    running: Callable[[], float]
    waiting: Callable[[], float]
    kv_cache_usage: Callable[[], float]


class SimulatorMetrics(Collector):
    def __init__(self, model_names: tuple[str, ...]) -> None:
        self.models: dict[str, ModelMetrics] = {name: ModelMetrics() for name in model_names}
        self._gauges: dict[str, _Gauges] = {}
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    def bind_gauges(
        self,
        model: str,
        *,
        running: Callable[[], float],
        waiting: Callable[[], float],
        kv_cache_usage: Callable[[], float],
    ) -> None:
        self._gauges[model] = _Gauges(running, waiting, kv_cache_usage)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def collect(self) -> Iterator[Metric]:
        labels = ["model_name", "engine"]
        running = GaugeMetricFamily(
            "vllm:num_requests_running", "Number of requests in model execution batches.", labels=labels
        )
        waiting = GaugeMetricFamily(
            "vllm:num_requests_waiting", "Number of requests waiting to be processed.", labels=labels
        )
        kv = GaugeMetricFamily("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", labels=labels)
        prompt = CounterMetricFamily("vllm:prompt_tokens", "Number of prefill tokens processed.", labels=labels)
        generation = CounterMetricFamily(
            "vllm:generation_tokens", "Number of generation tokens processed.", labels=labels
        )
        success = CounterMetricFamily(
            "vllm:request_success", "Count of successfully processed requests.", labels=[*labels, "finished_reason"]
        )
        ttft = HistogramMetricFamily(
            "vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.", labels=labels
        )
        e2e = HistogramMetricFamily(
            "vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.", labels=labels
        )
        queue = HistogramMetricFamily(
            "vllm:request_queue_time_seconds",
            "Histogram of time spent in WAITING phase for request.",
            labels=labels,
        )
        for name, metrics in self.models.items():
            label_values = [name, ENGINE]
            gauges = self._gauges.get(name)
            if gauges is not None:
                running.add_metric(label_values, gauges.running())
                waiting.add_metric(label_values, gauges.waiting())
                kv.add_metric(label_values, gauges.kv_cache_usage())
            prompt.add_metric(label_values, metrics.prompt_tokens)
            generation.add_metric(label_values, metrics.generation_tokens)
            for reason in FINISHED_REASONS:
                success.add_metric([*label_values, reason], metrics.finished[reason])
            for family, histogram in ((ttft, metrics.ttft), (e2e, metrics.e2e), (queue, metrics.queue_time)):
                family.add_metric(label_values, histogram.buckets(), histogram.total)
        yield from (running, waiting, kv, prompt, generation, success, ttft, e2e, queue)
