"""The usage charts both the billing page and the usage page show, from one ``Breakdown`` (rollups): tokens per
day (input and output stacked), A$ per day, and tokens and A$ per key and per model."""

from __future__ import annotations

from dataclasses import dataclass

from billing.charts import Chart, Series, bar_chart, column_chart, fmt_aud, fmt_compact_aud
from billing.usage_reads import Breakdown


@dataclass(frozen=True)
class UsageCharts:
    tokens_per_day: Chart
    aud_per_day: Chart
    by_key: Chart
    by_model: Chart
    aud_by_key: Chart
    aud_by_model: Chart


def _day_label(day) -> str:
    return f"{day.day} {day:%b}"


def usage_charts(usage: Breakdown) -> UsageCharts:
    days = usage.days
    day_labels = [_day_label(d) for d in days]
    lines = [usage.by_day[d] for d in days]
    keys = list(usage.by_key)
    models = list(usage.by_model)
    key_labels = [usage.key_label(k) for k in keys]
    model_labels = [m or "(no model)" for m in models]
    return UsageCharts(
        tokens_per_day=column_chart(
            title="Tokens per day", labels=day_labels, label_heading="Day",
            series=[Series("Input tokens", "input", [line.prompt_tokens for line in lines]),
                    Series("Output tokens", "output", [line.completion_tokens for line in lines])]),
        aud_per_day=column_chart(
            title="A$ per day", labels=day_labels, label_heading="Day", fmt=fmt_aud, axis_fmt=fmt_compact_aud,
            series=[Series("Usage at list prices", "cost", [line.cost_aud for line in lines])]),
        by_key=bar_chart(
            title="Tokens per key", labels=key_labels, label_heading="Key",
            series=[Series("Input tokens", "input", [usage.by_key[k].prompt_tokens for k in keys]),
                    Series("Output tokens", "output", [usage.by_key[k].completion_tokens for k in keys])]),
        by_model=bar_chart(
            title="Tokens per model", labels=model_labels, label_heading="Model",
            series=[Series("Input tokens", "input", [usage.by_model[m].prompt_tokens for m in models]),
                    Series("Output tokens", "output", [usage.by_model[m].completion_tokens for m in models])]),
        aud_by_key=bar_chart(
            title="A$ per key", labels=key_labels, label_heading="Key", fmt=fmt_aud, axis_fmt=fmt_compact_aud,
            series=[Series("Usage at list prices", "cost", [usage.by_key[k].cost_aud for k in keys])]),
        aud_by_model=bar_chart(
            title="A$ per model", labels=model_labels, label_heading="Model", fmt=fmt_aud, axis_fmt=fmt_compact_aud,
            series=[Series("Usage at list prices", "cost", [usage.by_model[m].cost_aud for m in models])]),
    )

