"""`make bench` P8 is an in-process scenario: selected by name, it measures redaction per KB on the corpus and
transcript texts and judges the corpus against 0.2 ms/KB."""

from __future__ import annotations

from bench import redaction
from bench.__main__ import _parse_args


def test_p8_is_selected_as_an_in_process_scenario():
    args = _parse_args(["--scenarios", "P8"])
    assert args.selected == [] and args.p8 is True and args.p9 is False


def test_p8_reports_ms_per_kb_for_each_text_and_judges_the_corpus():
    lines: list[str] = []
    verdict = redaction.run(repeats=3, log=lines.append)
    rows = verdict.metrics["rows"]
    assert [r["text"] for r in rows] == ["corpus 4 KB", "corpus 32 KB", "transcript 4 KB", "transcript 32 KB"]
    assert all(r["p50_ms_per_kb"] > 0 and r["replacements"] > 0 for r in rows)
    worst = max(r["p50_ms_per_kb"] for r in rows if r["text"].startswith("corpus"))
    assert verdict.scenario == "P8" and verdict.passed == (worst <= redaction.TARGET_MS_PER_KB)
    assert len(lines) == 4
