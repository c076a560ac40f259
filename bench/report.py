"""Results: JSON lines under ``bench/results/`` and the table printed at the end of a run."""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any

import orjson

from bench.scenarios import Verdict

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def _clean(value: Any) -> Any:
    """JSON has no NaN: a metric that could not be measured is null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


class ResultsFile:
    def __init__(self, run_id: str, directory: Path = RESULTS_DIR) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.run_id = run_id
        self.path = directory / f"{run_id}.jsonl"

    def write(self, kind: str, **fields: Any) -> None:
        record = {"run_id": self.run_id, "time": time.time(), "kind": kind}
        for name, value in fields.items():
            record[name] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
        with self.path.open("ab") as out:
            out.write(orjson.dumps(_clean(record)) + b"\n")


def render_table(verdicts: list[Verdict]) -> str:
    headers = ["scenario", "workers", "target", "direct", "gateway", "gateway vs direct", "result"]
    rows = [
        [v.scenario, str(v.workers) if v.workers else "-", v.target, v.direct, v.gateway, v.comparison,
         "PASS" if v.passed else "FAIL"]
        for v in verdicts
    ]  # fmt: skip
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = [
        "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)),
        "  ".join("-" * w for w in widths),
    ]
    for row in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
    notes = [f"  {v.scenario} ({v.workers or '-'}w): {note}" for v in verdicts for note in v.notes]
    if notes:
        lines += ["", "notes:", *notes]
    return "\n".join(lines)


def render_markdown(verdicts: list[Verdict]) -> str:
    lines = [
        "| scenario | workers | target | direct | gateway | gateway vs direct | result |",
        "|---|---|---|---|---|---|---|",
    ]
    for v in verdicts:
        lines.append(
            f"| {v.scenario} | {v.workers or '-'} | {v.target} | {v.direct} | {v.gateway} | {v.comparison} | "
            f"{'PASS' if v.passed else 'FAIL'} |"
        )
    return "\n".join(lines)
