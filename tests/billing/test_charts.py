"""Server-rendered SVG charts (billing/charts.py): the bars are the numbers, accessible, and safe markup."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from decimal import Decimal

import pytest

from billing.charts import Series, bar_chart, column_chart, fmt_aud, fmt_compact, nice_ceiling

SVG = "{http://www.w3.org/2000/svg}"


def _svg(chart) -> ET.Element:
    return ET.fromstring(str(chart.svg))  # noqa: S314 (markup the code under test rendered)


def _bars(root: ET.Element, series: str) -> list[ET.Element]:
    return [r for r in root.iter(f"{SVG}rect") if r.get("data-series") == series]


def test_stacked_columns_hold_each_days_values_and_stack_bottom_up():
    chart = column_chart(title="Tokens per day", labels=["1 Dec", "2 Dec", "3 Dec"],
                         series=[Series("Input tokens", "input", [300, 0, 1_000]),
                                 Series("Output tokens", "output", [100, 50, 1_000])])
    root = _svg(chart)
    inputs, outputs = _bars(root, "input"), _bars(root, "output")
    assert [int(r.get("data-value")) for r in inputs] == [300, 1_000]  # a zero draws no bar
    assert [int(r.get("data-value")) for r in outputs] == [100, 50, 1_000]
    # Heights are proportional to the values on one axis (2,000 is the tallest stack and the axis maximum).
    assert nice_ceiling(2_000) == 2_000
    plot_h = 260 - 24 - 34
    tallest_in, tallest_out = inputs[1], outputs[2]
    assert float(tallest_in.get("height")) == pytest.approx(plot_h / 2)
    assert float(tallest_out.get("height")) == pytest.approx(plot_h / 2)
    # The output bar sits on top of the input bar of the same day.
    assert float(tallest_out.get("y")) + float(tallest_out.get("height")) == pytest.approx(float(tallest_in.get("y")))
    # The data table carries the same numbers, with totals.
    assert chart.columns == ["Day", "Input tokens", "Output tokens"]
    assert chart.rows[0] == ["1 Dec", "300", "100"]
    assert chart.total_row == ["Total", "1,300", "1,150"]


def test_charts_are_accessible_images_with_tooltips():
    chart = column_chart(title="A$ per day", labels=["1 Dec", "2 Dec"], fmt=fmt_aud,
                         series=[Series("Usage", "cost", [Decimal("1.5"), Decimal("12.25")])])
    root = _svg(chart)
    assert root.get("role") == "img"
    assert root.get("aria-label") == "A$ per day, 1 Dec to 2 Dec: usage A$13.75; highest 2 Dec (A$12.25)."
    titles = [r.find(f"{SVG}title").text for r in _bars(root, "cost")]
    assert titles == ["1 Dec: A$1.50 usage", "2 Dec: A$12.25 usage"]
    assert root.find(f"{SVG}title").text == "A$ per day"


def test_labels_are_escaped_and_long_ones_shortened_on_the_chart_only():
    name = '<script>alert("x")</script> a very long key name indeed'
    chart = bar_chart(title="Tokens per key", labels=[name], series=[Series("Input tokens", "input", [5])])
    markup = str(chart.svg)
    assert "<script>" not in markup and "&lt;script&gt;" in markup
    root = _svg(chart)
    label = next(t for t in root.iter(f"{SVG}text") if t.get("class") == "chart-label")
    assert label.text.endswith("…") and len(label.text) == 24
    assert label.find(f"{SVG}title").text == name  # the whole name on hover
    assert chart.rows == [[name, "5"]]


def test_no_style_attributes_so_the_csp_allows_them():
    chart = bar_chart(title="A$ per model", labels=["m1", "m2"], fmt=fmt_aud,
                      series=[Series("Usage", "cost", [Decimal("2"), Decimal("3")])])
    assert "style=" not in str(chart.svg) and "<style" not in str(chart.svg)


def test_an_empty_chart_says_so_and_draws_no_bars():
    chart = column_chart(title="Tokens per day", labels=[], series=[Series("Input tokens", "input", [])])
    assert chart.empty
    assert _bars(_svg(chart), "input") == []
    assert _svg(chart).get("aria-label") == "Tokens per day: no data."


@pytest.mark.parametrize(("value", "expected"), [(0, 1), (7, 10), (1_001, 2_000), (2_400, 2_500), (4_100, 5_000),
                                                 (0.3, 0.5)])
def test_axis_maximum_is_a_round_number_at_or_above_the_data(value, expected):
    assert nice_ceiling(value) == pytest.approx(expected)


def test_axis_ticks_are_compact():
    assert [fmt_compact(v) for v in (0, 250, 1_500, 2_000_000, 2.5)] == ["0", "250", "1.5k", "2M", "2.5"]
