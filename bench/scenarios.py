"""The scenarios of PERFORMANCE.md that exist today, and how each one is judged.

Each load scenario runs the same closed loop against the simulator directly and through the gateway, back
to back, round after round; a verdict compares the two runs of each round and takes the median over rounds.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench.environment import MODEL
from bench.loadgen import LoadResult, LoadSpec

# A contact-centre turn. The simulator answers a message starting with ``/echo `` with that text, token by
# token, so ``max_tokens`` (shorter than the text) fixes exactly how many tokens every reply has.
REPLY = (
    "Thanks for calling. I can see your order for the kettle was dispatched on Monday from our Sydney "
    "warehouse and is with the courier now. It should arrive by Thursday, and you will get a text message "
    "with a tracking link this afternoon. If it has not arrived by Friday, reply to that message and we "
    "will send a replacement straight away at no cost to you. Is there anything else I can help with today?"
)
MESSAGES = [
    {"role": "system", "content": "You are a helpful contact-centre assistant for an Australian retailer."},
    {"role": "user", "content": "/echo " + REPLY},
]


@dataclass(frozen=True)
class Timing:
    duration_s: float
    warmup_s: float
    ramp_s: float = 0.0


@dataclass
class Verdict:
    scenario: str
    workers: int
    target: str
    direct: str
    gateway: str
    comparison: str
    passed: bool
    metrics: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass
class Pair:
    """One round: the direct run and the gateway run taken back to back."""

    direct: LoadResult
    gateway: LoadResult
    extra: dict[str, Any] = field(default_factory=dict)
    direct_extra: dict[str, Any] = field(default_factory=dict)


Judge = Callable[["Scenario", int, list[Pair]], Verdict]


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    target: str
    concurrency: int
    max_tokens: int
    stream: bool
    include_usage: bool
    simulator: dict[str, float]
    timing: Timing
    quick: Timing
    judge: Judge
    # P5 runs on one worker only, whatever the --workers list says.
    single_worker: bool = False
    # Each client sends this many requests and stops (None: as many as fit in the duration).
    requests_per_client: int | None = None
    # A --quick run's shorter replies, where a scenario's length comes from its replies.
    quick_max_tokens: int | None = None

    def spec(
        self, url: str, *, api_key: str | None, timing: Timing, duration_s: float | None, quick: bool = False
    ) -> LoadSpec:
        max_tokens = self.quick_max_tokens if quick and self.quick_max_tokens else self.max_tokens
        body: dict[str, Any] = {"model": MODEL, "messages": MESSAGES, "max_tokens": max_tokens}
        if self.stream:
            body["stream"] = True
            if self.include_usage:
                body["stream_options"] = {"include_usage": True}
        return LoadSpec(
            url=url + "/v1/chat/completions",
            body=body,
            headers={"authorization": f"Bearer {api_key}"} if api_key else {},
            concurrency=self.concurrency,
            duration_s=duration_s if duration_s is not None else timing.duration_s,
            warmup_s=timing.warmup_s,
            ramp_s=timing.ramp_s,
            max_requests=self.requests_per_client * self.concurrency if self.requests_per_client else None,
            request_timeout_s=120.0,
            expect_usage=self.include_usage,
        )


# --- judging -----------------------------------------------------------------------------------------
def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _errors(pairs: list[Pair]) -> tuple[int, int]:
    return sum(p.direct.errors_total for p in pairs), sum(p.gateway.errors_total for p in pairs)


def _pct(result: LoadResult, name: str, attr: str) -> float:
    summary = getattr(result, name)
    return getattr(summary, attr) if summary is not None else float("nan")


def _overhead_note(pairs: list[Pair]) -> str:
    p50 = _median([_pct(p.gateway, "overhead_ms", "p50") for p in pairs])
    p99 = _median([_pct(p.gateway, "overhead_ms", "p99") for p in pairs])
    note = f"x-wattle-overhead-ms p50 {p50:.2f} / p99 {p99:.2f}"
    cpu = _median([p.extra.get("gateway_cpu_ms_per_request", float("nan")) for p in pairs])
    sim = _median([p.direct_extra.get("simulator_cpu_ms_per_request", float("nan")) for p in pairs])
    redis = _median([p.extra.get("redis_cpu_ms_per_request", float("nan")) for p in pairs])
    return note + f"; CPU per request: gateway {cpu:.3f} ms, Redis {redis:.3f} ms, simulator {sim:.3f} ms (direct)"


def _base(scenario: Scenario, workers: int, pairs: list[Pair]) -> dict[str, Any]:
    direct_errors, gateway_errors = _errors(pairs)
    return {
        "rounds": len(pairs),
        "direct_rps": [round(p.direct.rps, 1) for p in pairs],
        "gateway_rps": [round(p.gateway.rps, 1) for p in pairs],
        "direct_errors": direct_errors,
        "gateway_errors": gateway_errors,
        "gateway_error_kinds": _merge_kinds([p.gateway for p in pairs]),
        "overhead_p50_ms": _median([_pct(p.gateway, "overhead_ms", "p50") for p in pairs]),
        "overhead_p99_ms": _median([_pct(p.gateway, "overhead_ms", "p99") for p in pairs]),
        "gateway_cpu_ms_per_request": _median([p.extra.get("gateway_cpu_ms_per_request", float("nan")) for p in pairs]),
        "simulator_cpu_ms_per_request": _median(
            [p.direct_extra.get("simulator_cpu_ms_per_request", float("nan")) for p in pairs]
        ),
        "redis_cpu_ms_per_request": _median([p.extra.get("redis_cpu_ms_per_request", float("nan")) for p in pairs]),
        "usage_events_match": all(p.extra.get("usage_match", True) for p in pairs),
    }


def _merge_kinds(results: list[LoadResult]) -> dict[str, int]:
    merged: dict[str, int] = {}
    for result in results:
        for kind, count in result.error_kinds.items():
            merged[kind] = merged.get(kind, 0) + count
    return merged


def _error_notes(metrics: dict[str, Any]) -> list[str]:
    notes = []
    if not metrics["usage_events_match"]:
        notes.append("usage rows stored != requests sent (see the run lines)")
    if metrics["gateway_errors"]:
        notes.append(f"gateway errors: {metrics['gateway_error_kinds']}")
    if metrics["direct_errors"]:
        notes.append(f"direct errors: {metrics['direct_errors']} (the upstream itself failed)")
    return notes


def judge_added_latency(scenario: Scenario, workers: int, pairs: list[Pair]) -> Verdict:
    """P1: what one request pays for going through the gateway, with nothing else going on."""
    metrics = _base(scenario, workers, pairs)
    added_p50 = _median([_pct(p.gateway, "latency_ms", "p50") - _pct(p.direct, "latency_ms", "p50") for p in pairs])
    added_p99 = _median([_pct(p.gateway, "latency_ms", "p99") - _pct(p.direct, "latency_ms", "p99") for p in pairs])
    d50 = _median([_pct(p.direct, "latency_ms", "p50") for p in pairs])
    d99 = _median([_pct(p.direct, "latency_ms", "p99") for p in pairs])
    g50 = _median([_pct(p.gateway, "latency_ms", "p50") for p in pairs])
    g99 = _median([_pct(p.gateway, "latency_ms", "p99") for p in pairs])
    metrics.update(added_p50_ms=added_p50, added_p99_ms=added_p99)
    passed = added_p50 <= 1.0 and added_p99 <= 3.0 and metrics["gateway_errors"] == 0
    return Verdict(
        scenario.key, workers, scenario.target,
        direct=f"p50 {d50:.2f} / p99 {d99:.2f} ms",
        gateway=f"p50 {g50:.2f} / p99 {g99:.2f} ms",
        comparison=f"+{added_p50:.2f} / +{added_p99:.2f} ms",
        passed=passed, metrics=metrics, notes=[_overhead_note(pairs), *_error_notes(metrics)],
    )  # fmt: skip


def _throughput(pairs: list[Pair]) -> tuple[float, float, float]:
    ratio = _median([p.gateway.rps / p.direct.rps if p.direct.rps else 0.0 for p in pairs])
    return _median([p.direct.rps for p in pairs]), _median([p.gateway.rps for p in pairs]), ratio


def judge_throughput(scenario: Scenario, workers: int, pairs: list[Pair]) -> Verdict:
    """P2 and P3: gateway throughput as a share of the upstream's, at the same concurrency."""
    metrics = _base(scenario, workers, pairs)
    direct_rps, gateway_rps, ratio = _throughput(pairs)
    metrics.update(throughput_ratio=ratio)
    passed = ratio >= 0.40 and metrics["gateway_errors"] == 0
    gateway = f"{gateway_rps:,.0f} req/s"
    comparison = f"{ratio:.0%}"
    if scenario.stream:
        added_ttft = _median([_pct(p.gateway, "ttft_ms", "p50") - _pct(p.direct, "ttft_ms", "p50") for p in pairs])
        metrics.update(ttft_added_p50_ms=added_ttft)
        passed = passed and added_ttft <= 2.0
        comparison += f"; TTFT +{added_ttft:.1f} ms"
    notes = [_overhead_note(pairs), *_error_notes(metrics)]
    commands = [p.extra["redis_commands"] for p in pairs if "redis_commands" in p.extra]
    if commands:
        per_request = _median([c["per_request"] for c in commands])
        trips = _median([c["round_trips_per_request"] for c in commands])
        metrics.update(redis_commands_per_request=per_request, redis_round_trips_per_request=trips,
                       redis_commands=commands)  # fmt: skip
        detail = ", ".join(f"{name} {calls:.3f}" for name, calls in commands[-1]["by_command"].items())
        notes.append(f"Redis per request: {per_request:.3f} commands ({detail}); ~{trips:.3f} round trips")
    return Verdict(
        scenario.key, workers, scenario.target,
        direct=f"{direct_rps:,.0f} req/s", gateway=gateway, comparison=comparison,
        passed=passed, metrics=metrics, notes=notes,
    )  # fmt: skip


def judge_stream_latency(scenario: Scenario, workers: int, pairs: list[Pair]) -> Verdict:
    """P4: a stream paced by the model should take as long through the gateway as without it."""
    metrics = _base(scenario, workers, pairs)
    e2e_ratio = _median([_pct(p.gateway, "latency_ms", "p50") / _pct(p.direct, "latency_ms", "p50") for p in pairs])
    added_ttft = _median([_pct(p.gateway, "ttft_ms", "p50") - _pct(p.direct, "ttft_ms", "p50") for p in pairs])
    d50 = _median([_pct(p.direct, "latency_ms", "p50") for p in pairs])
    g50 = _median([_pct(p.gateway, "latency_ms", "p50") for p in pairs])
    metrics.update(e2e_p50_ratio=e2e_ratio, ttft_added_p50_ms=added_ttft)
    passed = e2e_ratio <= 1.05 and added_ttft <= 3.0 and metrics["gateway_errors"] == 0
    return Verdict(
        scenario.key, workers, scenario.target,
        direct=f"e2e p50 {d50:.0f} ms", gateway=f"e2e p50 {g50:.0f} ms",
        comparison=f"x{e2e_ratio:.3f}; TTFT +{added_ttft:.1f} ms",
        passed=passed, metrics=metrics, notes=[_overhead_note(pairs), *_error_notes(metrics)],
    )  # fmt: skip


def judge_open_streams(scenario: Scenario, workers: int, pairs: list[Pair]) -> Verdict:
    """P5: thousands of slow streams held open by one worker, without errors and within its memory budget."""
    metrics = _base(scenario, workers, pairs)
    peak_rss = max((p.extra.get("peak_rss_mb", 0.0) for p in pairs), default=0.0)
    idle_rss = min((p.extra.get("idle_rss_mb", 0.0) for p in pairs), default=0.0)
    open_direct = max((p.direct_extra.get("peak_upstream_running", 0) for p in pairs), default=0)
    open_gateway = max((p.extra.get("peak_upstream_running", 0) for p in pairs), default=0)
    metrics.update(peak_rss_mb=peak_rss, idle_rss_mb=idle_rss, open_direct=open_direct, open_gateway=open_gateway)
    passed = metrics["gateway_errors"] == 0 and 0 < peak_rss <= 200.0 and open_gateway >= scenario.concurrency * 0.95
    d50 = _median([_pct(p.direct, "latency_ms", "p50") for p in pairs])
    g50 = _median([_pct(p.gateway, "latency_ms", "p50") for p in pairs])
    if open_gateway < scenario.concurrency * 0.95:
        metrics_note = f"only {open_gateway} of {scenario.concurrency} streams were open upstream at once"
    else:
        metrics_note = ""
    return Verdict(
        scenario.key, workers, scenario.target,
        direct=f"{open_direct} open, e2e p50 {d50 / 1000:.1f} s, {metrics['direct_errors']} err",
        gateway=f"{open_gateway} open, e2e p50 {g50 / 1000:.1f} s, {metrics['gateway_errors']} err",
        comparison=f"RSS {peak_rss:.0f} MB (idle {idle_rss:.0f})",
        passed=passed, metrics=metrics,
        notes=[_overhead_note(pairs), *_error_notes(metrics), *([metrics_note] if metrics_note else [])],
    )  # fmt: skip


# --- the scenarios -----------------------------------------------------------------------------------
NO_DELAY = {"ttft_ms": 0.0, "tpot_ms": 0.0}
# Many clients start one after another over the warm-up, as independent callers would, not all in the same
# millisecond: identical requests paced by the model (P4) would otherwise arrive in bursts of N for the whole
# run, every request waiting behind the other N-1 at both the gateway and the simulator. Measured from the end
# of the warm-up, when every client is running.
STAGGERED = Timing(4.0, 1.0, ramp_s=1.0)
STAGGERED_QUICK = Timing(1.5, 0.5, ramp_s=0.5)

SCENARIOS: dict[str, Scenario] = {
    s.key: s
    for s in [
        Scenario(
            "P1", "JSON, 16 tokens, no delay, concurrency 1", "added p50 <= 1 ms, p99 <= 3 ms",
            concurrency=1, max_tokens=16, stream=False, include_usage=False, simulator=NO_DELAY,
            timing=Timing(4.0, 1.0), quick=Timing(1.5, 0.5), judge=judge_added_latency,
        ),
        Scenario(
            "P2", "JSON, 16 tokens, no delay, concurrency 64", ">= 40% of direct req/s, 0 errors",
            concurrency=64, max_tokens=16, stream=False, include_usage=False, simulator=NO_DELAY,
            timing=STAGGERED, quick=STAGGERED_QUICK, judge=judge_throughput,
        ),
        Scenario(
            "P3", "stream, 16 tokens, no delay, concurrency 64", ">= 40% req/s; TTFT added p50 <= 2 ms",
            concurrency=64, max_tokens=16, stream=True, include_usage=True, simulator=NO_DELAY,
            timing=STAGGERED, quick=STAGGERED_QUICK, judge=judge_throughput,
        ),
        Scenario(
            "P4/64", "stream, 64 tokens at 2 ms/token, concurrency 64", "e2e p50 <= 1.05x; TTFT added <= 3 ms",
            concurrency=64, max_tokens=64, stream=True, include_usage=False,
            simulator={"ttft_ms": 0.0, "tpot_ms": 2.0},
            timing=STAGGERED, quick=Timing(2.0, 0.5, ramp_s=0.5), judge=judge_stream_latency,
        ),
        Scenario(
            "P4/256", "stream, 64 tokens at 2 ms/token, concurrency 256", "e2e p50 <= 1.05x; TTFT added <= 3 ms",
            concurrency=256, max_tokens=64, stream=True, include_usage=False,
            simulator={"ttft_ms": 0.0, "tpot_ms": 2.0},
            timing=STAGGERED, quick=Timing(2.0, 0.5, ramp_s=0.5), judge=judge_stream_latency,
        ),
        # Every client opens one slow stream (32 tokens at 400 ms: ~13 s) within the first 3 s, so all 2,000 are
        # open at once for several seconds while the worker's RSS is sampled. Slow tokens keep the relay's chunk
        # rate (5,000/s) within what this shared machine gives one worker: the scenario is about holding streams.
        Scenario(
            "P5", "2,000 open streams (32 tokens at 400 ms/token) on one worker", "0 errors; RSS/worker <= 200 MB",
            concurrency=2000, max_tokens=32, stream=True, include_usage=True,
            simulator={"ttft_ms": 0.0, "tpot_ms": 400.0},
            timing=Timing(60.0, 0.0, ramp_s=3.0), quick=Timing(60.0, 0.0, ramp_s=3.0), judge=judge_open_streams,
            single_worker=True, requests_per_client=1, quick_max_tokens=24,
        ),
    ]
}  # fmt: skip

P7_TARGET = ">= 20,000 events/s, 0 lost"
P7_TITLE = "usage ingest: Redis stream -> PostgreSQL"
ALL_KEYS = ["P1", "P2", "P3", "P4", "P5", "P6", "P7", "P8", "P9", "P10", "P12"]
# Not load scenarios of the direct/gateway kind: run after the load scenarios' gateways are down (``bench.ingest``,
# ``bench.redaction``, ``bench.console``, ``bench.audit_chain`` in-process; ``bench.playground`` with a server
# process of its own; ``bench.conversation`` with a one-worker gateway of its own).
IN_PROCESS = ("P6", "P7", "P8", "P9", "P10", "P12")


def select(keys: list[str]) -> tuple[list[Scenario], bool]:
    """The load scenarios named (``P4`` means both of its concurrencies) and whether P7 was asked for (P8, P9: see
    ``selected_in_process``)."""
    chosen: list[Scenario] = []
    for key in keys:
        key = key.strip().upper()
        if key in IN_PROCESS:
            continue
        matches = [s for k, s in SCENARIOS.items() if k == key or k.split("/")[0] == key]
        if not matches:
            raise ValueError(f"unknown scenario {key!r}; known: {', '.join(ALL_KEYS)} (and P4/64, P4/256)")
        chosen.extend(s for s in matches if s not in chosen)
    return chosen, any(k.strip().upper() == "P7" for k in keys)


def selected_in_process(keys: list[str]) -> set[str]:
    return {k.strip().upper() for k in keys} & set(IN_PROCESS)
