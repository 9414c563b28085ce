"""Small bar charts drawn on the server as SVG strings: no script, no library, no request to a CDN.

The admin page puts them inline, under a Content-Security-Policy without ``'unsafe-inline'``, so
they carry no ``style`` attribute and no ``<style>`` element: colours come from CSS classes
(``sb-bar``, ``sb-bar-2``…, ``sb-axis``, ``sb-grid``, ``sb-label``, ``sb-title``) that the page's
stylesheet may set, with presentation attributes as defaults, so a chart reads well without CSS
too. Labels and titles come from customers, the model and operators (a flow may be named
``<script>``): every one is escaped, and characters XML does not allow are replaced, so the
output is always well-formed and inert.

Values are drawn from zero up; a negative or non-finite value is drawn as zero. With no
points, or only zeros, a chart says "no data".
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from html import escape

__all__ = ["bar_chart", "hbar_chart", "multi_bar_chart", "plain"]

FILLS = ("#0b6e4f", "#84caff", "#f79009", "#9e77ed")  # the default fill of sb-bar, sb-bar-2, sb-bar-3, sb-bar-4
CHAR_WIDTH = 6.5  # average width of an 11 px sans-serif character, to size label space
LABEL_CHARS = 18  # longer labels are shortened on the chart; the tooltip has them whole
TITLE_HEIGHT = 26
LEGEND_HEIGHT = 18
ROW_HEIGHT = 22  # one bar of a horizontal chart

# XML 1.0 allows tab, newline, carriage return and everything from U+0020 on, except surrogates and U+FFFE/U+FFFF.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def plain(value: float) -> str:
    """A number for people, to three significant digits below 100: ``3``, ``1,250``, ``0.75``, ``0.0042``."""
    if value == int(value) or abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def bar_chart(
    points: Sequence[tuple[str, float]],
    *,
    title: str,
    width: int = 560,
    height: int = 180,
    value_format: Callable[[float], str] = plain,
) -> str:
    """Vertical bars, one per ``(label, value)``, on a y axis of 3 to 5 round ticks.

    Args:
        points: the bars, left to right.
        title: shown above the chart and given as its accessible name.
        width: of the drawing, in px (the page may scale it).
        height: of the drawing, in px.
        value_format: writes a value for the axis and the tooltips (e.g. ``lambda v: f"${v:.2f}"``).

    Returns:
        An ``<svg>`` element; each bar has a ``<title>`` tooltip ``label: value``.
    """
    labels = [label for label, _ in points]
    return multi_bar_chart(
        labels, [("", [value for _, value in points])], title=title, width=width, height=height,
        value_format=value_format,
    )  # fmt: skip


def multi_bar_chart(
    labels: Sequence[str],
    series: Sequence[tuple[str, Sequence[float]]],
    *,
    title: str,
    width: int = 560,
    height: int = 200,
    value_format: Callable[[float], str] = plain,
) -> str:
    """Groups of vertical bars, one group per label and one bar per series (e.g. opened vs solved per day).

    Args:
        labels: the groups, left to right.
        series: ``(name, values)``, one value per label; the first series is ``sb-bar``, the second
            ``sb-bar-2``, and so on. With more than one series (or a named one) a legend is shown.
        title: shown above the chart and given as its accessible name.
        width: of the drawing, in px.
        height: of the drawing, in px.
        value_format: writes a value for the axis and the tooltips.

    Raises:
        ValueError: a series does not have one value per label.
    """
    for name, values in series:
        if len(values) != len(labels):
            raise ValueError(f"series {name!r} has {len(values)} values for {len(labels)} labels; give one per label")
    columns = [[_value(v) for v in values] for _, values in series]
    legend = len(series) > 1 or any(name for name, _ in series)
    top = TITLE_HEIGHT + (LEGEND_HEIGHT if legend else 0)
    parts = _open(title, width, height)
    if legend:
        x = 8.0
        for index, (name, _) in enumerate(series):
            parts.append(f'<rect class="{_bar_class(index)}" fill="{_fill(index)}" x="{x:g}" y="{TITLE_HEIGHT:g}" '
                         'width="10" height="10"/>')  # fmt: skip
            parts.append(_text(name, x + 14, TITLE_HEIGHT + 9))
            x += 14 + CHAR_WIDTH * len(_short(name)) + 16
    peak = max((v for values in columns for v in values), default=0.0)
    if not labels or peak <= 0:
        return _no_data(parts, width, height, top)
    ticks = _ticks(peak, whole=all(v == int(v) for values in columns for v in values))
    tick_labels = [value_format(t) for t in ticks]
    left = 8 + CHAR_WIDTH * max(len(t) for t in tick_labels)
    bottom = 22
    plot_width, plot_height = width - left - 8, height - top - bottom - 6
    base = top + 6 + plot_height
    for tick, text in zip(ticks, tick_labels, strict=True):
        y = base - tick / ticks[-1] * plot_height
        kind = "sb-axis" if tick == 0 else "sb-axis sb-grid"
        parts.append(
            f'<line class="{kind}" stroke="#d0d5dd" x1="{left:.1f}" y1="{y:.1f}" x2="{width - 8}" y2="{y:.1f}"/>'
        )
        parts.append(_text(text, left - 4, y + 4, anchor="end"))
    band = plot_width / len(labels)
    bar = band * 0.8 / len(series)
    every = math.ceil(len(labels) * (CHAR_WIDTH * max(len(_short(label)) for label in labels) + 6) / plot_width)
    for i, label in enumerate(labels):
        for j, values in enumerate(columns):
            value = values[i]
            bar_height = value / ticks[-1] * plot_height
            x = left + i * band + band * 0.1 + j * bar
            name = series[j][0]
            tip = f"{label} · {name}: {value_format(value)}" if name else f"{label}: {value_format(value)}"
            parts.append(
                f'<rect class="{_bar_class(j)}" fill="{_fill(j)}" x="{x:.1f}" y="{base - bar_height:.1f}" '
                f'width="{bar:.1f}" height="{bar_height:.1f}"><title>{_escape(tip)}</title></rect>'
            )
        if i % every == 0:
            parts.append(_text(label, left + (i + 0.5) * band, base + 15, anchor="middle"))
    parts.append("</svg>")
    return "".join(parts)


def hbar_chart(
    points: Sequence[tuple[str, float]],
    *,
    title: str,
    width: int = 560,
    height: int | None = None,
    value_format: Callable[[float], str] = plain,
) -> str:
    """Horizontal bars, one row per ``(label, value)``, each with its value written at its end.

    Args:
        points: the rows, top to bottom (cost per flow, open tickets by age).
        title: shown above the chart and given as its accessible name.
        width: of the drawing, in px.
        height: of the drawing, in px; by default it grows with the rows.
        value_format: writes the values and the tooltips.
    """
    values = [_value(v) for _, v in points]
    height = height or TITLE_HEIGHT + 12 + ROW_HEIGHT * max(len(points), 3)
    parts = _open(title, width, height)
    peak = max(values, default=0.0)
    if peak <= 0:
        return _no_data(parts, width, height, TITLE_HEIGHT)
    texts = [value_format(v) for v in values]
    left = 8 + CHAR_WIDTH * min(max(len(_short(label)) for label, _ in points), LABEL_CHARS)
    right = 8 + CHAR_WIDTH * max(len(t) for t in texts)
    plot_width = max(width - left - right - 4, 1)
    row = (height - TITLE_HEIGHT - 8) / len(points)
    parts.append(
        f'<line class="sb-axis" stroke="#d0d5dd" x1="{left:.1f}" y1="{TITLE_HEIGHT}" x2="{left:.1f}" '
        f'y2="{height - 8}"/>'
    )
    for i, ((label, _), value, text) in enumerate(zip(points, values, texts, strict=True)):
        y = TITLE_HEIGHT + i * row
        bar_width = value / peak * plot_width
        parts.append(
            f'<rect class="sb-bar" fill="{FILLS[0]}" x="{left:.1f}" y="{y + row * 0.15:.1f}" width="{bar_width:.1f}" '
            f'height="{row * 0.7:.1f}"><title>{_escape(f"{label}: {text}")}</title></rect>'
        )
        parts.append(_text(label, left - 4, y + row / 2 + 4, anchor="end"))
        parts.append(_text(text, left + bar_width + 4, y + row / 2 + 4))
    parts.append("</svg>")
    return "".join(parts)


def _open(title: str, width: int, height: int) -> list[str]:
    name = _escape(title)
    return [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="sb-chart" role="img" aria-label="{name}" '
        f'viewBox="0 0 {width} {height}" width="{width}" height="{height}">',
        f"<title>{name}</title>",
        f'<text class="sb-title" x="8" y="17" fill="#101828" font-size="13" font-weight="600" '
        f'font-family="system-ui, sans-serif">{name}</text>',
    ]


def _no_data(parts: list[str], width: int, height: int, top: float) -> str:
    parts.append(_text("no data", width / 2, (top + height) / 2, anchor="middle", shorten=False))
    parts.append("</svg>")
    return "".join(parts)


def _text(text: str, x: float, y: float, *, anchor: str = "start", shorten: bool = True) -> str:
    shown = _short(text) if shorten else text
    return (
        f'<text class="sb-label" x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" fill="#667085" font-size="11" '
        f'font-family="system-ui, sans-serif">{_escape(shown)}</text>'
    )


def _ticks(peak: float, *, whole: bool) -> list[float]:
    """0 and 2 to 4 round steps (1, 2, 2.5 or 5 times a power of ten) up to at least ``peak``.

    For ``whole`` numbers (counts of tickets) the steps are whole too: no axis at 0.25 tickets.
    """
    raw = peak / 4
    magnitude = 10.0 ** math.floor(math.log10(raw))
    steps = [m * magnitude for m in (1, 2, 2.5, 5, 10)]
    if whole:
        steps = [max(step, 1) for step in steps if round(step, 9).is_integer() or step < 1]
    step = next(step for step in steps if step >= raw * (1 - 1e-9))
    count = max(math.ceil(peak / step - 1e-9), 2)
    return [round(step * i, 12) for i in range(count + 1)]


def _value(value: float) -> float:
    return float(value) if math.isfinite(value) and value > 0 else 0.0


def _bar_class(index: int) -> str:
    return "sb-bar" if index == 0 else f"sb-bar-{index + 1}"


def _fill(index: int) -> str:
    return FILLS[index % len(FILLS)]


def _short(text: str) -> str:
    return text if len(text) <= LABEL_CHARS else text[: LABEL_CHARS - 1] + "…"


def _escape(text: str) -> str:
    return escape(_NOT_XML.sub("\ufffd", str(text)), quote=True)
