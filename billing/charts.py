"""Charts as server-rendered SVG: series in, markup out, no JavaScript.

Why SVG from the server rather than a vendored chart library: the portal's CSP allows scripts and styles only
from our own files (no inline script, no ``style`` attributes), so a JS library would need its data served from
separate JSON endpoints (or a nonce) and would draw nothing until it ran. An SVG in the page needs no script and
no extra request, works offline and in tests, and is just markup: the numbers a test reads from it are the ones
the page shows. Colours come from classes in ``static/css/billing.css`` (CSP ``style-src 'self'``); geometry is
presentation attributes (``x``, ``y``, ``width``, ``height``), which CSP does not treat as styles.

Every chart is ``role="img"`` with an ``aria-label`` summarising it, each bar has a ``<title>`` (the tooltip),
and the same rows feed the data table the page shows beside the chart (``Chart.rows``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal

from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from core.quotas import format_aud

Number = int | Decimal | float
Formatter = Callable[[Number], str]


def fmt_int(value: Number) -> str:
    return f"{int(value):,}"


def fmt_aud(value: Number) -> str:
    return format_aud(value)


def fmt_compact(value: Number) -> str:
    """Axis ticks: 0, 250, 1.5k, 2M."""
    value = float(value)
    for size, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= size:
            scaled = value / size
            return f"{scaled:.1f}".rstrip("0").rstrip(".") + suffix
    return f"{value:.2f}".rstrip("0").rstrip(".") if value % 1 else f"{int(value)}"


def fmt_compact_aud(value: Number) -> str:
    return "A$" + fmt_compact(value)


@dataclass(frozen=True)
class Series:
    name: str  # the legend's and the table's word for it: "Input tokens"
    css: str  # its colour class, ``chart-<css>`` in billing.css
    values: Sequence[Number]


@dataclass(frozen=True)
class Chart:
    title: str
    svg: SafeString
    columns: list[str]  # the data table's header: the label column, then one per series
    rows: list[list[str]]  # the data table: a label, then each series' value, formatted
    total_row: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not self.rows


def nice_ceiling(value: float) -> float:
    """The axis maximum: the smallest of 1, 2, 2.5, 5 times 10^k at or above ``value`` (1 for nothing)."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if step * power >= value * (1 - 1e-12):
            return step * power
    return 10 * power  # pragma: no cover - the loop always returns


def _num(value: float) -> str:
    """A coordinate: two decimals at most, no trailing zeros (short markup, stable tests)."""
    return f"{value:.2f}".rstrip("0").rstrip(".")


def _clip(label: str, length: int) -> str:
    return label if len(label) <= length else label[: length - 1] + "…"


def _totals(series: Sequence[Series], count: int) -> list[Number]:
    return [sum((s.values[i] for s in series), start=0) for i in range(count)]


def _table(labels: Sequence[str], series: Sequence[Series], fmt: Formatter, label_heading: str):
    columns = [label_heading, *[s.name for s in series]]
    rows = [[label, *[fmt(s.values[i]) for s in series]] for i, label in enumerate(labels)]
    total = ["Total", *[fmt(sum(s.values, start=0)) for s in series]] if labels else []
    return columns, rows, total


def _summary(title: str, labels: Sequence[str], series: Sequence[Series], fmt: Formatter) -> str:
    if not labels:
        return f"{title}: no data."
    parts = ", ".join(f"{s.name.lower()} {fmt(sum(s.values, start=0))}" for s in series)
    totals = _totals(series, len(labels))
    top = max(range(len(labels)), key=lambda i: totals[i])
    return f"{title}, {labels[0]} to {labels[-1]}: {parts}; highest {labels[top]} ({fmt(totals[top])})."


def _legend(series: Sequence[Series], x: float, y: float) -> list[str]:
    parts = []
    for s in series:
        parts.append(format_html(
            '<g class="chart-legend-item"><rect class="chart-{}" x="{}" y="{}" width="10" height="10"></rect>'
            '<text x="{}" y="{}">{}</text></g>',
            s.css, _num(x), _num(y), _num(x + 14), _num(y + 9), s.name))
        x += 24 + 7 * len(s.name)
    return parts


def _svg(*, width: int, height: int, label: str, body: list[str], css: str) -> SafeString:
    return format_html(
        '<svg class="chart {}" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {} {}" role="img" aria-label="{}" '
        'preserveAspectRatio="xMinYMin meet">{}</svg>',
        css, width, height, label, format_html_join("", "{}", ((part,) for part in body)))


def column_chart(*, title: str, labels: Sequence[str], series: Sequence[Series], fmt: Formatter = fmt_int,
                 axis_fmt: Formatter = fmt_compact, label_heading: str = "Day", width: int = 720,
                 height: int = 260) -> Chart:
    """Vertical columns, one per label (a day), the series stacked in order from the bottom."""
    n = len(labels)
    left, right, top, bottom = 56, 8, 24, 34
    plot_w, plot_h = width - left - right, height - top - bottom
    totals = _totals(series, n)
    axis_max = nice_ceiling(float(max(totals, default=0)))
    body = [format_html("<title>{}</title>", title)]
    body += _legend(series, left, 4)
    # Axis: four gridlines with their values.
    for step in range(5):
        value = axis_max * step / 4
        y = top + plot_h - plot_h * step / 4
        body.append(format_html(
            '<line class="chart-gridline" x1="{}" y1="{}" x2="{}" y2="{}"></line>'
            '<text class="chart-tick" x="{}" y="{}" text-anchor="end">{}</text>',
            left, _num(y), width - right, _num(y), left - 6, _num(y + 4), axis_fmt(value)))
    band = plot_w / n if n else plot_w
    bar = band * 0.72
    every = max(1, math.ceil(n / 12))  # at most a dozen x labels, so they never overlap
    for i, label in enumerate(labels):
        x = left + band * i + (band - bar) / 2
        base = top + plot_h
        for s in series:
            value = s.values[i]
            h = plot_h * float(value) / axis_max
            if value:
                body.append(format_html(
                    '<rect class="chart-bar chart-{}" x="{}" y="{}" width="{}" height="{}" data-series="{}" '
                    'data-value="{}"><title>{}: {} {}</title></rect>',
                    s.css, _num(x), _num(base - h), _num(bar), _num(h), s.css, value, label, fmt(value),
                    s.name.lower()))
            base -= h
        if i % every == 0:
            body.append(format_html('<text class="chart-tick" x="{}" y="{}" text-anchor="middle">{}</text>',
                                    _num(x + bar / 2), top + plot_h + 16, label))
    body.append(format_html('<line class="chart-axis" x1="{}" y1="{}" x2="{}" y2="{}"></line>',
                            left, top + plot_h, width - right, top + plot_h))
    columns, rows, total = _table(labels, series, fmt, label_heading)
    return Chart(title=title, columns=columns, rows=rows, total_row=total,
                 svg=_svg(width=width, height=height, label=_summary(title, labels, series, fmt), body=body,
                          css="chart-columns"))


def bar_chart(*, title: str, labels: Sequence[str], series: Sequence[Series], fmt: Formatter = fmt_int,
              axis_fmt: Formatter = fmt_compact, label_heading: str = "", width: int = 720) -> Chart:
    """Horizontal bars, one per label (a key, a model), the series stacked left to right. Long labels are
    shortened on the chart; the ``<title>`` and the table carry them whole."""
    n = len(labels)
    left, right, top, bottom, row = 170, 16, 24, 22, 26
    plot_w = width - left - right
    height = top + max(n, 1) * row + bottom
    totals = _totals(series, n)
    axis_max = nice_ceiling(float(max(totals, default=0)))
    body = [format_html("<title>{}</title>", title)]
    body += _legend(series, left, 4)
    for step in range(5):
        x = left + plot_w * step / 4
        body.append(format_html(
            '<line class="chart-gridline" x1="{}" y1="{}" x2="{}" y2="{}"></line>'
            '<text class="chart-tick" x="{}" y="{}" text-anchor="middle">{}</text>',
            _num(x), top, _num(x), top + n * row, _num(x), top + n * row + 15, axis_fmt(axis_max * step / 4)))
    for i, label in enumerate(labels):
        y = top + i * row + 4
        body.append(format_html('<text class="chart-label" x="{}" y="{}" text-anchor="end">{}<title>{}</title></text>',
                                left - 6, _num(y + 13), _clip(label, 24), label))
        start = left
        for s in series:
            value = s.values[i]
            w = plot_w * float(value) / axis_max
            if value:
                body.append(format_html(
                    '<rect class="chart-bar chart-{}" x="{}" y="{}" width="{}" height="18" data-series="{}" '
                    'data-value="{}"><title>{}: {} {}</title></rect>',
                    s.css, _num(start), _num(y), _num(w), s.css, value, label, fmt(value), s.name.lower()))
            start += w
    columns, rows, total = _table(labels, series, fmt, label_heading or title)
    return Chart(title=title, columns=columns, rows=rows, total_row=total,
                 svg=_svg(width=width, height=height, label=_summary(title, labels, series, fmt), body=body,
                          css="chart-bars"))


__all__ = ["Chart", "Series", "bar_chart", "column_chart", "fmt_aud", "fmt_compact", "fmt_compact_aud",
           "fmt_int", "nice_ceiling"]
