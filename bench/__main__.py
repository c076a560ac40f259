"""``python -m bench``: set up the production shape, run the scenarios, print the table, write JSON lines."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from collections.abc import Sequence

from bench.environment import BenchEnvironment
from bench.report import ResultsFile, render_table
from bench.runner import BenchRun, Options
from bench.scenarios import ALL_KEYS, select, selected_in_process


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="The load scenarios of PERFORMANCE.md: the gateway against the simulator reached directly.",
    )
    parser.add_argument(
        "--scenarios", default=",".join(ALL_KEYS), help=f"comma-separated, default {','.join(ALL_KEYS)}"
    )
    parser.add_argument("--workers", default="1,2", help="gateway worker counts to measure, default 1,2")
    parser.add_argument("--duration", type=float, default=None, help="seconds measured per run (P1-P4)")
    parser.add_argument("--rounds", type=int, default=2, help="direct/gateway rounds per scenario (>= 2)")
    parser.add_argument("--quick", action="store_true", help="short runs: a smoke test, not a measurement")
    parser.add_argument("--p7-events", type=int, default=30_000, help="usage events per P7 round")
    parser.add_argument("--p9-events", type=int, default=10_000_000, help="usage events P9 loads (kept for later runs)")
    parser.add_argument("--p9-requests", type=int, default=40, help="timed requests per P9 page")
    parser.add_argument("--p10-entries", type=int, default=1_000_000,
                        help="chained audit entries P10 verifies (kept for later runs)")
    parser.add_argument("--p6-sockets", type=int, default=None,
                        help="playground sockets P6 holds at once (default 500; 50 with --quick)")
    parser.add_argument("--p12-pairs", type=int, default=None,
                        help="conversation turns (each beside its chat completion) P12 times (default 300; 40 with "
                             "--quick)")
    parser.add_argument("--keep-logs", action="store_true", help="keep the gateway/simulator logs")
    parser.add_argument("--server", choices=["uvicorn", "granian"], default="uvicorn",
                        help="the ASGI server the gateway runs under (default uvicorn)")
    parser.add_argument(
        "--serve",
        action="store_true",
        help="set up, start the gateway(s), print where they are and wait for Ctrl-C (to profile by hand)",
    )
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    try:
        args.workers = sorted({int(w) for w in args.workers.split(",") if w.strip()})
    except ValueError:
        parser.error("--workers takes integers, e.g. 1,2")
    if not args.workers or min(args.workers) < 1:
        parser.error("--workers takes positive integers")
    try:
        keys = [k for k in args.scenarios.split(",") if k.strip()]
        args.selected, args.p7 = select(keys)
        args.p8 = "P8" in selected_in_process(keys)
        args.p9 = "P9" in selected_in_process(keys)
        args.p10 = "P10" in selected_in_process(keys)
        args.p6 = "P6" in selected_in_process(keys)
        args.p12 = "P12" in selected_in_process(keys)
    except ValueError as exc:
        parser.error(str(exc))
    return args


def _stop_on_sigterm(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    # A shell starts background jobs with SIGINT ignored; Ctrl-C and `kill -INT` should still clean up.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    options = Options(
        scenarios=args.selected,
        p7=args.p7,
        workers=args.workers,
        rounds=args.rounds,
        quick=args.quick,
        duration_s=args.duration,
        p7_events=args.p7_events,
        p8=args.p8,
        p8_repeats=20 if args.quick else 200,
        p9=args.p9,
        p9_events=args.p9_events // (100 if args.quick else 1),
        p9_requests=args.p9_requests,
        p10=args.p10,
        p10_entries=args.p10_entries // (100 if args.quick else 1),
        p6=args.p6,
        p6_sockets=args.p6_sockets or (50 if args.quick else 500),
        p12=args.p12,
        p12_pairs=args.p12_pairs or (40 if args.quick else 300),
    )
    if args.serve:
        return _serve(args)
    results = ResultsFile(time.strftime("%Y%m%d-%H%M%S"))
    started = time.monotonic()
    with BenchEnvironment(keep_logs=args.keep_logs, server=args.server) as env:
        env.start()
        verdicts = BenchRun(env=env, options=options, results=results).run()
    print()
    print(
        f"{args.server}, workers {args.workers}; no CPU pinning; auth, limits, usage events, metrics and the "
        "access log (JSON to a file) on"
    )
    print(render_table(verdicts))
    print(f"\nresults: {results.path.relative_to(results.path.parents[2])} ({time.monotonic() - started:.0f} s)")
    return 0 if all(v.passed for v in verdicts) else 1


def _serve(args: argparse.Namespace) -> int:
    with BenchEnvironment(keep_logs=args.keep_logs, server=args.server) as env:
        env.start()
        for workers in args.workers:
            env.start_gateway(workers)
        print(
            f"\nsimulator {env.simulator_url} (pid {env.simulator.pid if env.simulator else '?'}); "
            f"knobs: POST {env.simulator_url}/sim/control"
        )
        for workers, gateway in env.gateways.items():
            print(f"gateway ({workers}w) {gateway.base_url}, worker pids {gateway.worker_pids()}")
        print(f"API key {env.api_key}\nlogs in {env.workdir}\nCtrl-C stops everything.")
        try:
            while all(g.managed.alive() for g in env.gateways.values()):
                time.sleep(1)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
