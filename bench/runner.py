"""One `make bench` run: the scenarios in order, direct and gateway runs alternating, verdicts at the end."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench import audit_chain, console, conversation, ingest, playground, redaction
from bench.environment import (
    PYTHON,
    REPO_ROOT,
    BenchEnvironment,
    GatewayProcess,
    cpu_seconds,
    die_with_parent,
    read_rss_mb,
)
from bench.loadgen import LoadResult, LoadSpec
from bench.report import ResultsFile
from bench.scenarios import P7_TITLE, Pair, Scenario, Timing, Verdict

# Commands the bench itself sends while it measures the gateway's; left out of the per-request count.
_BENCH_COMMANDS = {"info", "xlen"}


@dataclass
class Options:
    scenarios: list[Scenario]
    p7: bool
    workers: list[int]
    rounds: int = 2
    quick: bool = False
    duration_s: float | None = None
    p7_events: int = 30_000
    p8: bool = False
    p8_repeats: int = 200
    p9: bool = False
    p9_events: int = 10_000_000
    p9_requests: int = 40
    p10: bool = False
    p10_entries: int = 1_000_000
    p6: bool = False
    p6_sockets: int = playground.P6_SOCKETS
    p12: bool = False
    p12_pairs: int = 300


@dataclass
class Target:
    """Where one run sends its traffic: the simulator itself, or a gateway in front of it."""

    name: str
    base_url: str
    api_key: str | None
    gateway: GatewayProcess | None = None


def run_loadgen(spec: LoadSpec, *, tick: Callable[[], None] | None = None, interval: float = 0.25) -> LoadResult:
    """Run the load generator in its own interpreter (its own event loop, its own core when one is free)."""
    process = subprocess.Popen(
        [PYTHON, "-m", "bench.loadgen"],
        cwd=REPO_ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        preexec_fn=die_with_parent if sys.platform.startswith("linux") else None,
    )
    limit = time.monotonic() + spec.warmup_s + spec.duration_s + spec.ramp_s + spec.request_timeout_s + 30
    payload: bytes | None = spec.to_json()
    while True:
        try:
            out, err = process.communicate(input=payload, timeout=interval)
            break
        except subprocess.TimeoutExpired:
            payload = None
            if tick is not None:
                tick()
            if time.monotonic() > limit:
                process.kill()
                process.communicate()
                raise TimeoutError("the load generator overran its bound") from None
    if process.returncode != 0:
        raise RuntimeError(f"load generator failed:\n{err.decode(errors='replace')[-3000:]}")
    return LoadResult.from_json(out)


def redis_commandstats() -> dict[str, int]:
    """Calls per command so far, plus ``(reads)``: socket reads Redis processed, about one per round trip
    (a pipeline arrives in one read)."""
    from core.redis import get_redis

    client = get_redis()
    stats = client.info("commandstats")
    counts = {name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in stats.items()}
    counts["(reads)"] = int(client.info("stats").get("total_reads_processed", 0))
    return counts


@dataclass
class BenchRun:
    env: BenchEnvironment
    options: Options
    results: ResultsFile
    log: Callable[[str], None] = print
    verdicts: list[Verdict] = field(default_factory=list)

    def run(self) -> list[Verdict]:
        self._record_environment()
        load_scenarios = [s for s in self.options.scenarios if not s.single_worker]
        single = [s for s in self.options.scenarios if s.single_worker]
        if load_scenarios:
            for workers in self.options.workers:
                self.env.start_gateway(workers)
            for scenario in load_scenarios:
                self._run_scenario(scenario, self.options.workers)
        if single:
            # One worker holds every stream; other gateways stay down so they take no CPU from it.
            for workers in [w for w in self.env.gateways if w != 1]:
                self._record_gateway_logs(workers)
                self.env.stop_gateway(workers)
            self.env.start_gateway(1)
            for scenario in single:
                self._run_scenario(scenario, [1])
        for workers in list(self.env.gateways):
            self._record_gateway_logs(workers)
            self.env.stop_gateway(workers)
        if self.options.p6:
            self._run_p6()
        if self.options.p7:
            self._run_p7()
        if self.options.p8:
            self._run_p8()
        if self.options.p9:
            self._run_p9()
        if self.options.p10:
            self._run_p10()
        if self.options.p12:
            self._run_p12()
        return self.verdicts

    # --- load scenarios ----------------------------------------------------------------------------
    def _timing(self, scenario: Scenario) -> Timing:
        return scenario.quick if self.options.quick else scenario.timing

    def _targets(self, workers: list[int]) -> list[Target]:
        targets = [Target("direct", self.env.simulator_url, None)]
        for n in workers:
            gateway = self.env.gateways[n]
            targets.append(Target(f"gateway-{n}w", gateway.base_url, self.env.api_key, gateway))
        return targets

    def _run_scenario(self, scenario: Scenario, workers: list[int]) -> None:
        self.log(f"\n{scenario.key}: {scenario.title}")
        self.env.simulator_control(**scenario.simulator)
        targets = self._targets(workers)
        pairs: dict[int, list[Pair]] = {n: [] for n in workers}
        for round_no in range(self.options.rounds):
            # ABBA order: drift on a shared machine lands on both sides alike.
            order = targets if round_no % 2 == 0 else list(reversed(targets))
            results: dict[str, tuple[LoadResult, dict[str, Any]]] = {}
            for target in order:
                result, extra = self._one_run(scenario, target)
                results[target.name] = (result, extra)
                self.results.write(
                    "run", scenario=scenario.key, round=round_no, target=target.name,
                    workers=target.gateway.workers if target.gateway else 0, result=result, extra=extra,
                )  # fmt: skip
                self.log(self._describe(target.name, result, extra))
            direct, direct_extra = results["direct"]
            for n in workers:
                result, extra = results[f"gateway-{n}w"]
                pairs[n].append(Pair(direct=direct, gateway=result, extra=extra, direct_extra=direct_extra))
        for n in workers:
            verdict = scenario.judge(scenario, n, pairs[n])
            self.verdicts.append(verdict)
            self.results.write("verdict", verdict=verdict)

    def _one_run(self, scenario: Scenario, target: Target) -> tuple[LoadResult, dict[str, Any]]:
        timing = self._timing(scenario)
        duration = self.options.duration_s if not scenario.single_worker else None
        spec = scenario.spec(
            target.base_url, api_key=target.api_key, timing=timing, duration_s=duration, quick=self.options.quick
        )
        extra: dict[str, Any] = {}
        sampler = _Sampler(self.env, target.gateway) if scenario.single_worker else None
        before = redis_commandstats() if target.gateway is not None and scenario.key == "P2" else None
        if sampler is not None:
            extra["idle_rss_mb"] = sampler.rss()
        cpu = _CpuMeter(self.env, target.gateway)
        result = run_loadgen(spec, tick=sampler.tick if sampler else None)
        extra.update(cpu.per_request(result.sent))
        if target.gateway is not None:
            extra.update(self._usage_check(result.sent, before))
        if sampler is not None:
            extra.update(sampler.summary())
        return result, extra

    def _usage_check(self, sent: int, before: dict[str, int] | None) -> dict[str, Any]:
        """Every request the gateway answered became exactly one usage row, through the real ingest.

        The bench plays the ingest workers' part between runs (``USAGE_INGEST_IN_PROCESS=false`` and no
        Celery here), outside the measured window, so the stream stays small and the emitter sees its events
        acknowledged as in production.
        """
        from django.conf import settings

        from billing.models import UsageEvent
        from billing.services import usage_ingest
        from core.redis import get_redis

        client = get_redis()
        stream = settings.INFERENCE_USAGE_STREAM
        stored_before = UsageEvent.objects.filter(key_id=self.env.key_id).count()
        deadline = time.monotonic() + 5
        seen, stable_since = -1, time.monotonic()
        while time.monotonic() < deadline:
            count = client.xlen(stream)
            if count != seen:
                seen, stable_since = count, time.monotonic()
            if count >= sent or time.monotonic() - stable_since > 1.0:
                break
            time.sleep(0.05)
        extra: dict[str, Any] = {"usage_events_in_stream": seen}
        if before is not None:
            after = redis_commandstats()
            reads = after.pop("(reads)") - before.pop("(reads)")
            diff = {
                name: after[name] - before.get(name, 0)
                for name in sorted(after)
                if name not in _BENCH_COMMANDS and after[name] != before.get(name, 0)
            }
            total = sum(diff.values())
            extra["redis_commands"] = {
                "requests": sent,
                "total": total,
                "per_request": total / sent if sent else 0.0,
                "by_command": {name: calls / sent for name, calls in diff.items()} if sent else {},
                "round_trips_per_request": reads / sent if sent else 0.0,
                "shared_redis": not self.env.private_redis,
            }
        started = time.perf_counter()
        usage_ingest()
        stored = UsageEvent.objects.filter(key_id=self.env.key_id).count() - stored_before
        extra.update(
            usage_rows=stored,
            usage_match=stored == sent,
            ingest_events_per_s=stored / (time.perf_counter() - started) if stored else 0.0,
        )
        return extra

    @staticmethod
    def _describe(name: str, result: LoadResult, extra: dict[str, Any]) -> str:
        text = f"  {name:<12} {result.rps:8.1f} req/s"
        if result.latency_ms:
            text += f"  p50 {result.latency_ms.p50:7.2f}  p99 {result.latency_ms.p99:7.2f} ms"
        if result.ttft_ms:
            text += f"  ttft p50 {result.ttft_ms.p50:6.2f} ms"
        if result.overhead_ms:
            text += f"  overhead p50 {result.overhead_ms.p50:.2f} ms"
        text += f"  errors {result.errors_total}"
        if result.error_kinds:
            text += f" {result.error_kinds}"
        if "usage_rows" in extra and not extra["usage_match"]:
            text += f"  USAGE ROWS {extra['usage_rows']} != {result.sent} requests"
        if "gateway_cpu_ms_per_request" in extra:
            text += f"  gateway cpu {extra['gateway_cpu_ms_per_request']:.3f} ms/req"
        if "simulator_cpu_ms_per_request" in extra:
            text += f"  sim cpu {extra['simulator_cpu_ms_per_request']:.3f} ms/req"
        if "redis_cpu_ms_per_request" in extra:
            text += f"  redis cpu {extra['redis_cpu_ms_per_request']:.3f} ms/req"
        if "peak_rss_mb" in extra:
            text += f"  rss peak {extra['peak_rss_mb']:.0f} MB"
        if "peak_upstream_running" in extra:
            text += f"  open upstream {extra['peak_upstream_running']}"
        return text

    # --- P6 ----------------------------------------------------------------------------------------
    def _run_p6(self) -> None:
        settings = playground.P6Settings(sockets=self.options.p6_sockets)
        self.log(f"\nP6: {playground.P6_TITLE} ({settings.sockets} sockets)")
        verdict, results = playground.run(self.env, settings, log=self.log)
        for result in results:
            self.results.write("p6_run", result=result)
        self._record_gateway_logs(1)
        self.env.stop_gateway(1)
        self.verdicts.append(verdict)
        self.results.write("verdict", verdict=verdict)

    # --- P7 ----------------------------------------------------------------------------------------
    def _run_p7(self) -> None:
        events = max(1000, self.options.p7_events // (5 if self.options.quick else 1))
        self.log(f"\nP7: {P7_TITLE} ({events:,} events per round)")
        rounds = []
        for round_no in range(self.options.rounds):
            result = ingest.run_round(events, tenant_id=self.env.tenant_id, key_id=self.env.key_id)
            rounds.append(result)
            self.results.write("p7_round", round=round_no, result=result, events_per_s=result.events_per_s)
            self.log(f"  round {round_no}: {result.events_per_s:,.0f} events/s, {result.lost} lost")
        verdict = ingest.judge(rounds)
        self.verdicts.append(verdict)
        self.results.write("verdict", verdict=verdict)

    # --- P8 ----------------------------------------------------------------------------------------
    def _run_p8(self) -> None:
        self.log(f"\nP8: {redaction.P8_TITLE} ({self.options.p8_repeats} runs per text)")
        verdict = redaction.run(repeats=self.options.p8_repeats, log=self.log)
        self.verdicts.append(verdict)
        self.results.write("verdict", verdict=verdict)

    # --- P9 ----------------------------------------------------------------------------------------
    def _run_p9(self) -> None:
        self.log(f"\nP9: {console.P9_TITLE} ({self.options.p9_events:,} events, "
                 f"{self.options.p9_requests} timed requests per page)")
        verdict, timings, _rate = console.run(events=self.options.p9_events, requests=self.options.p9_requests,
                                             log=self.log)
        for timing in timings:
            self.results.write("p9_page", page=timing.page, samples_ms=timing.samples_ms,
                               empty_samples_ms=timing.empty_ms, status=timing.status)
        self.verdicts.append(verdict)
        self.results.write("verdict", verdict=verdict)

    # --- P10 ---------------------------------------------------------------------------------------
    def _run_p10(self) -> None:
        self.log(f"\nP10: {audit_chain.P10_TITLE} ({self.options.p10_entries:,} entries)")
        verdict = audit_chain.run(entries=self.options.p10_entries, log=self.log)
        self.verdicts.append(verdict)
        self.results.write("verdict", verdict=verdict)

    # --- P12 ---------------------------------------------------------------------------------------
    def _run_p12(self) -> None:
        self.log(f"\nP12: {conversation.P12_TITLE} ({self.options.p12_pairs} pairs)")
        verdict = conversation.run(self.env, pairs=self.options.p12_pairs, log=self.log)
        self._record_gateway_logs(1)
        self.env.stop_gateway(1)
        self.verdicts.append(verdict)
        self.results.write("verdict", verdict=verdict)

    # --- context -----------------------------------------------------------------------------------
    def _record_gateway_logs(self, workers: int) -> None:
        gateway = self.env.gateways.get(workers)
        if gateway is None:
            return
        report = gateway.log_report()
        self.results.write("gateway_log", workers=workers, **report)
        if report["error_lines"]:
            self.log(f"gateway ({workers}w) logged {report['error_lines']} error line(s):")
            for line in report["error_samples"]:
                self.log(f"    {line}")

    def _record_environment(self) -> None:
        def git(*args: str) -> str:
            done = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=False)
            return done.stdout.strip()

        self.results.write(
            "environment",
            commit=git("rev-parse", "HEAD"),
            dirty=bool(git("status", "--porcelain")),
            python=platform.python_version(),
            cpus=os.cpu_count(),
            workers=self.options.workers,
            rounds=self.options.rounds,
            quick=self.options.quick,
            pinning="none",
            redis="private redis-server" if self.env.private_redis else "REDIS_URL",
            features=(
                "auth (Redis key snapshot), limits (admission script, all six kinds set far above the load), "
                "usage events (Redis stream), Prometheus metrics, access log at INFO to a file"
            ),
            server="uvicorn --loop uvloop --http httptools --no-access-log --log-level warning",
        )


class _CpuMeter:
    """CPU time the gateway's workers and the simulator spent on a run: cost per request, whatever the noise."""

    def __init__(self, env: BenchEnvironment, gateway: GatewayProcess | None) -> None:
        self.pids = {"gateway": gateway.worker_pids() if gateway is not None else []}
        self.pids["simulator"] = [env.simulator.pid] if env.simulator is not None else []
        # Only a private redis-server's CPU is this run's alone; a shared one also serves others.
        self.pids["redis"] = [env.redis_pid] if env.redis_pid is not None and gateway is not None else []
        self.start = {name: self._total(pids) for name, pids in self.pids.items()}

    @staticmethod
    def _total(pids: list[int]) -> float:
        return sum(cpu_seconds(pid) or 0.0 for pid in pids)

    def per_request(self, requests: int) -> dict[str, float]:
        out = {}
        for name, pids in self.pids.items():
            if pids and requests:
                out[f"{name}_cpu_ms_per_request"] = (self._total(pids) - self.start[name]) * 1000 / requests
        return out


class _Sampler:
    """Peak RSS of the gateway's worker(s) and peak streams running upstream, while a run goes on."""

    def __init__(self, env: BenchEnvironment, gateway: GatewayProcess | None) -> None:
        self.env = env
        self.pids = gateway.worker_pids() if gateway is not None else []
        self.peak_rss = 0.0
        self.peak_running = 0

    def rss(self) -> float:
        return max((read_rss_mb(pid) or 0.0 for pid in self.pids), default=0.0)

    def tick(self) -> None:
        self.peak_rss = max(self.peak_rss, self.rss())
        try:
            running = int(self.env.simulator_state()["counters"]["running"])
        except (OSError, KeyError, ValueError):
            return
        self.peak_running = max(self.peak_running, running)

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"peak_upstream_running": self.peak_running}
        if self.pids:
            out["peak_rss_mb"] = self.peak_rss
        return out
