"""The admin page's SVG charts: well-formed, proportional, escaped, drawable without CSS, and sane with no data."""

from __future__ import annotations

import itertools
import math
import xml.etree.ElementTree as ET
from collections.abc import Callable

import pytest

from supportbot.admin.charts import bar_chart, hbar_chart, multi_bar_chart, plain

SVG = "{http://www.w3.org/2000/svg}"
HOSTILE = "<script>alert(1)</script> R&D \"q\" 'a' \x00\x1b\ufffe"


def parse(svg: str) -> ET.Element:
    root = ET.fromstring(svg)
    assert root.tag == f"{SVG}svg"
    return root


def bars(root: ET.Element) -> list[ET.Element]:
    """The data bars: rects with a tooltip (legend swatches have none)."""
    return [r for r in root.iter(f"{SVG}rect") if r.find(f"{SVG}title") is not None]


def tooltip(bar: ET.Element) -> str:
    title = bar.find(f"{SVG}title")
    assert title is not None and title.text is not None
    return title.text


def texts(root: ET.Element) -> list[str]:
    return [t.text or "" for t in root.iter(f"{SVG}text")]


def y_ticks(root: ET.Element) -> list[str]:
    return [t.text or "" for t in root.iter(f"{SVG}text") if t.get("text-anchor") == "end"]


def size(bar: ET.Element, attribute: str) -> float:
    return float(bar.get(attribute, "nan"))


def test_bar_heights_are_proportional_and_stand_on_one_baseline() -> None:
    root = parse(bar_chart([("Mon", 1), ("Tue", 2), ("Wed", 4), ("Thu", 0)], title="Tickets per day"))
    drawn = bars(root)
    assert len(drawn) == 4
    heights = [size(b, "height") for b in drawn]
    assert heights[3] == 0 and heights[1] == pytest.approx(2 * heights[0], abs=0.2)
    assert heights[2] == pytest.approx(4 * heights[0], abs=0.2)
    assert len({round(size(b, "y") + size(b, "height"), 1) for b in drawn}) == 1
    xs = [size(b, "x") for b in drawn]
    assert xs == sorted(xs) and all(size(b, "width") > 0 for b in drawn)
    assert [tooltip(b) for b in drawn] == ["Mon: 1", "Tue: 2", "Wed: 4", "Thu: 0"]
    assert {"Mon", "Tue", "Wed", "Thu"} <= set(texts(root))


def test_the_chart_is_named_for_assistive_technology() -> None:
    root = parse(bar_chart([("a", 1)], title="Cost per day (USD)"))
    assert root.get("role") == "img" and root.get("aria-label") == "Cost per day (USD)"
    title = root.find(f"{SVG}title")
    assert title is not None and title.text == "Cost per day (USD)"
    assert root.get("viewBox") == "0 0 560 180"


@pytest.mark.parametrize("peak", [1, 2, 3, 4, 7, 9, 10, 11, 37, 100, 999, 1234, 0.3, 0.0123, 4.04, 0.5, 17.5, 2.5e6])
def test_the_y_axis_has_three_to_five_round_ticks_from_zero_past_the_top(peak: float) -> None:
    root = parse(bar_chart([("a", 0), ("b", peak)], title="t", value_format=str))
    ticks = [float(t) for t in y_ticks(root)]
    assert 3 <= len(ticks) <= 5 and ticks[0] == 0 and ticks[-1] >= peak
    step = ticks[1]
    assert all(b - a == pytest.approx(step) for a, b in itertools.pairwise(ticks))
    mantissa = step / 10 ** math.floor(math.log10(step))
    assert round(mantissa, 6) in (1, 2, 2.5, 5)
    if peak == int(peak) and peak < 1e6:
        assert all(t == int(t) for t in ticks)  # counts: no axis line at 0.25 tickets


def test_fractional_values_may_have_fractional_ticks() -> None:
    assert y_ticks(parse(bar_chart([("a", 0.25), ("b", 1)], title="t"))) == ["0", "0.25", "0.5", "0.75", "1"]
    assert y_ticks(parse(bar_chart([("a", 0), ("b", 1)], title="t"))) == ["0", "1", "2"]


def test_the_value_format_writes_the_axis_and_the_tooltips() -> None:
    root = parse(bar_chart([("Nov 23", 0.5), ("Nov 24", 1.25)], title="Cost", value_format=lambda v: f"${v:.2f}"))
    assert y_ticks(root)[0] == "$0.00" and [tooltip(b) for b in bars(root)] == ["Nov 23: $0.50", "Nov 24: $1.25"]


def test_many_labels_are_thinned_out_but_every_bar_is_drawn() -> None:
    points = [(f"Nov {day:02d}", float(day)) for day in range(1, 61)]
    root = parse(bar_chart(points, title="Sixty days"))
    assert len(bars(root)) == 60
    shown = [t for t in texts(root) if t.startswith("Nov ")]
    assert 4 <= len(shown) < 60 and shown[0] == "Nov 01"
    assert {tooltip(b) for b in bars(root)} == {f"{label}: {plain(value)}" for label, value in points}


def test_grouped_bars_with_a_legend() -> None:
    svg = multi_bar_chart(
        ["Nov 22", "Nov 23", "Nov 24"], [("opened", [2, 4, 0]), ("solved or closed", [1, 2, 4])], title="Tickets"
    )
    root = parse(svg)
    drawn = bars(root)
    assert [b.get("class") for b in drawn] == ["sb-bar", "sb-bar-2"] * 3
    assert [tooltip(b) for b in drawn][:2] == ["Nov 22 · opened: 2", "Nov 22 · solved or closed: 1"]
    heights = {tooltip(b): size(b, "height") for b in drawn}
    assert heights["Nov 23 · opened: 4"] == pytest.approx(heights["Nov 24 · solved or closed: 4"])
    assert heights["Nov 22 · opened: 2"] == pytest.approx(2 * heights["Nov 22 · solved or closed: 1"], abs=0.2)
    swatches = [r for r in root.iter(f"{SVG}rect") if r.find(f"{SVG}title") is None]
    assert [s.get("class") for s in swatches] == ["sb-bar", "sb-bar-2"]
    assert {"opened", "solved or closed"} <= set(texts(root))
    assert all(size(a, "x") + size(a, "width") <= size(b, "x") + 0.1 for a, b in itertools.pairwise(drawn))


def test_a_series_must_have_a_value_per_label() -> None:
    with pytest.raises(ValueError, match="series 'solved' has 2 values for 3 labels"):
        multi_bar_chart(["a", "b", "c"], [("opened", [1, 2, 3]), ("solved", [1, 2])], title="t")


def test_horizontal_bars_are_proportional_with_their_values_written() -> None:
    root = parse(hbar_chart([("general", 0.5), ("returns", 2.0), ("order_status", 1.0)], title="Cost per flow",
                            value_format=lambda v: f"${v:.2f}"))  # fmt: skip
    drawn = bars(root)
    widths = [size(b, "width") for b in drawn]
    assert widths[1] == pytest.approx(4 * widths[0], abs=0.2) and widths[2] == pytest.approx(2 * widths[0], abs=0.2)
    assert len({b.get("x") for b in drawn}) == 1
    ys = [size(b, "y") for b in drawn]
    assert ys == sorted(ys)
    assert [tooltip(b) for b in drawn] == ["general: $0.50", "returns: $2.00", "order_status: $1.00"]
    assert {"general", "returns", "order_status", "$0.50", "$2.00", "$1.00"} <= set(texts(root))
    taller = parse(hbar_chart([(str(i), 1.0) for i in range(12)], title="t"))
    assert float(taller.get("height", 0)) > float(root.get("height", 0))


CHARTS: list[Callable[[str, str, float], str]] = [
    lambda title, label, value: bar_chart([(label, value), ("x", 1)], title=title),
    lambda title, label, value: multi_bar_chart([label, "x"], [(label, [value, 1]), ("b", [1, 1])], title=title),
    lambda title, label, value: hbar_chart([(label, value), ("x", 1)], title=title),
]


@pytest.mark.parametrize("chart", CHARTS, ids=["bar", "multi", "hbar"])
def test_labels_and_titles_are_escaped_and_inert(chart: Callable[[str, str, float], str]) -> None:
    svg = chart(HOSTILE, "<script>x</script>&amp", 2.0)
    root = parse(svg)  # well-formed, even with characters XML does not allow
    assert "<script" not in svg.lower() and "R&amp;D" in svg and "&amp;amp" in svg
    assert all(element.tag.removeprefix(SVG) != "script" for element in root.iter())
    assert root.get("aria-label", "").startswith("<script>alert(1)</script> R&D \"q\" 'a' ")
    assert any("<script>x</script>&amp" in t for t in map(tooltip, bars(root)))
    assert not any(
        ord(c) < 0x20 for element in root.iter() for c in (element.text or "") + "".join(element.attrib.values())
    )


@pytest.mark.parametrize("chart", CHARTS, ids=["bar", "multi", "hbar"])
def test_no_inline_styles_and_default_colours_without_css(chart: Callable[[str, str, float], str]) -> None:
    root = parse(chart("t", "a", 2.0))
    assert all("style" not in element.attrib and element.tag != f"{SVG}style" for element in root.iter())
    assert all(r.get("fill") and r.get("class", "").startswith("sb-bar") for r in root.iter(f"{SVG}rect"))
    assert all(t.get("class") in ("sb-label", "sb-title") and t.get("fill") for t in root.iter(f"{SVG}text"))
    assert all("sb-axis" in (line.get("class") or "") and line.get("stroke") for line in root.iter(f"{SVG}line"))


NO_DATA: list[Callable[[list[tuple[str, float]]], str]] = [
    lambda points: bar_chart(points, title="Cost"),
    lambda points: multi_bar_chart(
        [p[0] for p in points], [("a", [p[1] for p in points]), ("b", [p[1] for p in points])], title="Cost"
    ),
    lambda points: hbar_chart(points, title="Cost"),
]


@pytest.mark.parametrize("chart", NO_DATA, ids=["bar", "multi", "hbar"])
@pytest.mark.parametrize(
    "points",
    [[], [("Mon", 0.0), ("Tue", 0.0)], [("Mon", -3.0), ("Tue", math.nan), ("Wed", math.inf)]],
    ids=["empty", "zeros", "negative-nan-inf"],
)
def test_no_data_is_said_not_drawn(
    chart: Callable[[list[tuple[str, float]]], str], points: list[tuple[str, float]]
) -> None:
    root = parse(chart(points))
    assert bars(root) == [] and "no data" in texts(root) and root.get("aria-label") == "Cost"
    assert not any(v in ("nan", "inf") for element in root.iter() for v in element.attrib.values())


def test_negative_and_non_finite_values_are_drawn_as_zero() -> None:
    root = parse(bar_chart([("a", -1.0), ("b", math.nan), ("c", 2.0)], title="t"))
    assert [size(b, "height") for b in bars(root)][:2] == [0, 0] and size(bars(root)[2], "height") > 0
