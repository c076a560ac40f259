"""The capacity and cost model's arithmetic (deploy/costmodel.py), and that docs/deploy.md quotes it."""

from __future__ import annotations

import pytest

from deploy import checks, costmodel
from deploy.costmodel import MISTRAL_7B, MISTRAL_LARGE


def test_throughput_per_h100_follows_the_published_figure():
    # 12,553 tok/s offline (vLLM, Llama 3.1 8B, one H100) at 50% online: 6,276.5 tok/s; 150-token replies.
    assert costmodel.serving_tokens_per_s_per_h100(MISTRAL_7B) == pytest.approx(6276.5)
    assert costmodel.requests_per_s_per_h100(MISTRAL_7B) == pytest.approx(41.843, abs=1e-3)
    assert costmodel.requests_per_s_per_node(MISTRAL_7B) == pytest.approx(334.75, abs=0.01)
    # Large scaled by parameters: 12,553 x 8 / 123 = 816.45 offline, 408.2 online, 2.72 req/s, 21.8 per p5.
    assert MISTRAL_LARGE.offline_tokens_per_s_per_h100 == pytest.approx(816.45, abs=0.01)
    assert costmodel.requests_per_s_per_h100(MISTRAL_LARGE) == pytest.approx(2.7215, abs=1e-3)
    assert costmodel.requests_per_s_per_node(MISTRAL_LARGE) == pytest.approx(21.77, abs=0.01)


def test_a_small_model_is_not_credited_above_the_published_figure():
    tiny = costmodel.Model("tiny", 1.0, 1)
    assert tiny.offline_tokens_per_s_per_h100 == costmodel.PUBLISHED_8B_TOKENS_PER_S_PER_H100


@pytest.mark.parametrize(("load", "model", "nodes"), [
    (10, MISTRAL_LARGE, 1),    # 10 / (21.77 x 0.7 = 15.24) -> 1
    (16, MISTRAL_LARGE, 2),    # just over one node's 15.24
    (50, MISTRAL_LARGE, 4),    # 3.28 -> 4
    (200, MISTRAL_LARGE, 14),  # 13.1 -> 14
    (200, MISTRAL_7B, 1),      # 334.75 x 0.7 = 234.3 per node
    (240, MISTRAL_7B, 2),
    (0, MISTRAL_7B, 1),        # a serving endpoint needs a node when it has traffic at all
])
def test_nodes_for_a_load(load, model, nodes):
    assert costmodel.nodes_for(load, model) == nodes


def test_always_on_baseline_is_a_p5_for_a_month():
    assert costmodel.always_on_usd_per_month() == pytest.approx(55.04 * 730)
    assert costmodel.always_on_usd_per_month(3) == pytest.approx(3 * 55.04 * 730)


def test_scale_to_zero_hours():
    # Pre-warm only: 21.74 business days x 1.25 h.
    assert costmodel.scale_to_zero_hours_per_month(0.0) == pytest.approx(27.175)
    # 10% of 14 business hours, and 6 bursts of (10 min cold start + 5 min cool-down) a day.
    assert costmodel.scale_to_zero_hours_per_month(0.10, bursts_per_day=6) == pytest.approx(
        21.74 * (1.25 + 1.4 + 1.5))
    with pytest.raises(ValueError, match="between 0 and 1"):
        costmodel.scale_to_zero_hours_per_month(1.5)


def test_the_briefs_saving_band_is_reproduced():
    """The brief's -85..95%: traffic in 5-10% of business hours lands inside it; pre-warm alone saves a
    little more; keeping GPUs up all of business hours saves about half, not 85%."""
    savings = {label: cut for label, _h, _usd, cut in costmodel.cost_table()}
    assert savings["quiet: 5% of business hours, 4 bursts"] == pytest.approx(0.912, abs=0.001)
    assert savings["typical: 10% of business hours, 6 bursts"] == pytest.approx(0.876, abs=0.001)
    assert 0.85 <= savings["typical: 10% of business hours, 6 bursts"] <= savings[
        "quiet: 5% of business hours, 4 bursts"] <= 0.95
    assert savings["pre-warm only, no traffic"] > 0.95
    assert savings["busy: 25% of business hours, 8 bursts"] < 0.85
    assert savings["all of business hours"] == pytest.approx(1 - 21.74 * 15.25 / 730)


def test_model_matches_the_manifests():
    """The cost model's pre-warm hold and cool-down are the ones deployed."""
    docs = checks.render(checks.OVERLAY)
    job = next(d for d in docs if d["kind"] == "CronJob" and d["metadata"]["name"] == "vllm-prewarm-mistral-large")
    command = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["command"][-1]
    hold_s = int(command.split("sleep(")[1].rstrip(")"))
    assert hold_s / 3600 == costmodel.PREWARM_HOURS_PER_DAY
    scaled = [d for d in docs if d["kind"] == "ScaledObject" and d["metadata"]["name"].startswith("vllm-")]
    assert {d["spec"]["cooldownPeriod"] for d in scaled} == {costmodel.COOLDOWN_MINUTES * 60}
    large = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "vllm-mistral-large")
    args = large["spec"]["template"]["spec"]["containers"][0]["args"]
    assert f"--tensor-parallel-size={MISTRAL_LARGE.tensor_parallel}" in args


def test_docs_quote_the_models_numbers():
    text = (checks.ROOT / "docs" / "deploy.md").read_text(encoding="utf-8")
    for _name, tokens, rps, node_rps in costmodel.capacity_table():
        assert f"{tokens:,.0f}" in text and f"{rps:.1f}" in text and f"{node_rps:.1f}" in text
    assert f"US${costmodel.always_on_usd_per_month():,.0f}" in text
    for label, hours, usd, cut in costmodel.cost_table():
        assert f"| {label} | {hours:.1f} | {usd:,.0f} | {cut:.1%} |" in text
