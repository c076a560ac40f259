"""Capacity and cost model on paper (docs/deploy.md, "Capacity and cost"). ``python -m deploy.costmodel`` prints
the tables the docs quote; tests/deploy/test_costmodel.py checks the arithmetic.

Throughput per H100 starts from a published vLLM figure and is scaled, with every assumption named here, so an
operator can replace them with their own ``vllm bench serve`` numbers:

* 7B class: 12,553 output tokens/s for vLLM serving Llama 3.1 8B-Instruct (bf16) on one H100 80 GB, 1,000
  ShareGPT prompts, offline batch (AIMultiple, "LLM inference engines benchmark", research.aimultiple.com/
  inference-engines). Mistral 7B has the same shape (32 layers, 4096 wide, 8 KV heads, GQA); we take the figure
  as is for Mistral-7B-Instruct-v0.3.
* Large class: no published vLLM figure for Mistral-Large-Instruct-2411 (123B) on H100s that we could cite;
  we scale the 7B figure by parameters (a forward pass costs ~2 FLOPs per parameter per token, so at large
  batch throughput per GPU falls with model size): 12,553 x 8.0 / 123 = ~816 tokens/s per H100. An
  estimate, to be replaced by a measurement.
* Online serving under a latency target keeps batches smaller than an offline run: we plan at
  ``SERVING_EFFICIENCY`` (50%) of the offline figure, and fill nodes to ``TARGET_UTILISATION`` (70%).
  vLLM's own v0.6.0 release notes (blog.vllm.ai/2024/09/05/perf-update.html) report the gap between engine
  versions on the same H100 (2.7x for Llama 8B, 1.8x for 70B on 4 H100s): the version matters as much as the
  hardware, which is why the figures are inputs.

Cost uses the brief's numbers: a p5.48xlarge (8x H100) as the always-on baseline, scale to zero saving
85-95%, pre-warm at 07:00 Sydney time, business hours 08:00-22:00 on business days.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass

HOURS_PER_MONTH = 730.0  # 8,760 / 12
BUSINESS_DAYS_PER_MONTH = 21.74  # 5 days x 52.18 weeks / 12 (public holidays ignored: a small overestimate)
BUSINESS_HOURS_PER_DAY = 14.0  # 08:00-22:00
PREWARM_HOURS_PER_DAY = 1.25  # the pre-warm job holds a replica 07:00-08:15 (deploy/k8s/base/vllm.yaml)
COOLDOWN_MINUTES = 5.0  # the ScaledObjects' cooldownPeriod
GPUS_PER_P5 = 8

# Price of a p5.48xlarge, on demand, in US$ an hour: AWS's us-east-1 list price after its June 2025 reduction
# of P5 prices. Sydney's is higher; check the ap-southeast-2 price (AWS pricing page or `aws pricing
# get-products`) and your savings plan before quoting. Everything below scales linearly with it.
P5_48XLARGE_USD_PER_HOUR = 55.04
AUD_PER_USD = 1.55

SERVING_EFFICIENCY = 0.5
TARGET_UTILISATION = 0.7

# Published: vLLM, Llama 3.1 8B-Instruct bf16, 1x H100 80 GB, ShareGPT, offline (see the module doc).
PUBLISHED_8B_TOKENS_PER_S_PER_H100 = 12_553.0
PUBLISHED_8B_PARAMS_B = 8.0


@dataclass(frozen=True)
class Model:
    name: str
    params_b: float
    tensor_parallel: int  # GPUs per replica

    @property
    def offline_tokens_per_s_per_h100(self) -> float:
        return PUBLISHED_8B_TOKENS_PER_S_PER_H100 * PUBLISHED_8B_PARAMS_B / max(self.params_b, PUBLISHED_8B_PARAMS_B)


MISTRAL_7B = Model("mistralai/Mistral-7B-Instruct-v0.3", 7.2, 1)
MISTRAL_LARGE = Model("mistralai/Mistral-Large-Instruct-2411", 123.0, 8)


@dataclass(frozen=True)
class Workload:
    """A contact-centre turn: a long shared system prompt (served from vLLM's prefix cache) and a short reply."""

    prompt_tokens: int = 1500
    completion_tokens: int = 150


CONTACT_CENTRE = Workload()


def serving_tokens_per_s_per_h100(model: Model) -> float:
    """Output tokens a second one H100 sustains online (decode-bound: prompts hit the prefix cache)."""
    return model.offline_tokens_per_s_per_h100 * SERVING_EFFICIENCY


def requests_per_s_per_h100(model: Model, workload: Workload = CONTACT_CENTRE) -> float:
    return serving_tokens_per_s_per_h100(model) / workload.completion_tokens


def requests_per_s_per_node(model: Model, workload: Workload = CONTACT_CENTRE) -> float:
    """A p5.48xlarge: 8 H100s, as 8 / tensor_parallel replicas."""
    return requests_per_s_per_h100(model, workload) * GPUS_PER_P5


def nodes_for(load_rps: float, model: Model, workload: Workload = CONTACT_CENTRE) -> int:
    """p5.48xlarge nodes to serve ``load_rps`` requests a second at the target utilisation (at least one)."""
    return max(1, math.ceil(load_rps / (requests_per_s_per_node(model, workload) * TARGET_UTILISATION)))


def always_on_usd_per_month(nodes: int = 1) -> float:
    return nodes * P5_48XLARGE_USD_PER_HOUR * HOURS_PER_MONTH


def scale_to_zero_hours_per_month(busy_fraction: float, bursts_per_day: float = 0.0,
                                  cold_start_minutes: float = 10.0) -> float:
    """Node-hours a month with scale to zero: the pre-warm hold each business day, the share of business hours
    with traffic, and for every burst of traffic after a quiet spell a cold start plus the cool-down tail."""
    if not 0.0 <= busy_fraction <= 1.0:
        raise ValueError("busy_fraction is a share of business hours, between 0 and 1")
    per_day = (PREWARM_HOURS_PER_DAY + BUSINESS_HOURS_PER_DAY * busy_fraction
               + bursts_per_day * (cold_start_minutes + COOLDOWN_MINUTES) / 60.0)
    return BUSINESS_DAYS_PER_MONTH * per_day


def scale_to_zero_usd_per_month(busy_fraction: float, nodes: int = 1, **kwargs) -> float:
    return nodes * P5_48XLARGE_USD_PER_HOUR * scale_to_zero_hours_per_month(busy_fraction, **kwargs)


def saving(busy_fraction: float, **kwargs) -> float:
    """The share of the always-on bill scale to zero saves (0.9 = 90% less)."""
    return 1.0 - scale_to_zero_hours_per_month(busy_fraction, **kwargs) / HOURS_PER_MONTH


def capacity_table() -> list[tuple[str, float, float, float]]:
    """(model, output tokens/s per H100, requests/s per H100, requests/s per p5.48xlarge)."""
    return [(m.name, serving_tokens_per_s_per_h100(m), requests_per_s_per_h100(m), requests_per_s_per_node(m))
            for m in (MISTRAL_7B, MISTRAL_LARGE)]


SCENARIOS = (  # (label, share of business hours with traffic, bursts a day)
    ("pre-warm only, no traffic", 0.0, 0),
    ("quiet: 5% of business hours, 4 bursts", 0.05, 4),
    ("typical: 10% of business hours, 6 bursts", 0.10, 6),
    ("busy: 25% of business hours, 8 bursts", 0.25, 8),
    ("all of business hours", 1.0, 0),
)


def cost_table() -> list[tuple[str, float, float, float]]:
    """(scenario, node-hours a month, US$ a month for one p5.48xlarge, saving against always on)."""
    return [(label, scale_to_zero_hours_per_month(f, bursts_per_day=b),
             scale_to_zero_usd_per_month(f, bursts_per_day=b), saving(f, bursts_per_day=b))
            for label, f, b in SCENARIOS]


def main() -> int:
    print("model | output tok/s per H100 | req/s per H100 | req/s per p5.48xlarge")
    for name, tokens, rps, node_rps in capacity_table():
        print(f"{name} | {tokens:,.0f} | {rps:.1f} | {node_rps:.1f}")
    print(f"\nalways on, one p5.48xlarge: {HOURS_PER_MONTH:.0f} h, US${always_on_usd_per_month():,.0f} "
          f"(A${always_on_usd_per_month() * AUD_PER_USD:,.0f}) a month")
    print("scenario | node-hours | US$ a month | saving")
    for label, hours, usd, cut in cost_table():
        print(f"{label} | {hours:.1f} | {usd:,.0f} | {cut:.1%}")
    for load in (10, 50, 200):
        print(f"{load} req/s: 7B {nodes_for(load, MISTRAL_7B)} node(s), Large {nodes_for(load, MISTRAL_LARGE)} node(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
