"""Charts drawn on the server as SVG: no chart library in the page, and nothing to load before it paints.

``line_chart`` draws one series (x ascending) with its axes; every number is formatted here and every text
escaped, so the result can go into a page as it is.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from markupsafe import Markup, escape

# Room around the plot for the axes' ticks and titles (pixels of the viewBox).
LEFT, RIGHT, TOP, BOTTOM = 52, 16, 14, 40


def _nice_step(span: float, most: int) -> float:
    """A step of 1, 2 or 5 times a power of ten giving at most ``most`` intervals over ``span``."""
    if span <= 0:
        return 1.0
    raw = span / most
    power = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 5, 10):
        if factor * power >= raw:
            return factor * power
    return 10 * power


def _num(value: float) -> str:
    """Coordinates with two decimals at most: small SVGs, stable output."""
    return f"{value:.2f}".rstrip("0").rstrip(".")


def line_chart(
    points: Sequence[tuple[float, float]],
    *,
    best: float | None = None,
    x_label: str = "Epoch",
    y_label: str = "Dev F1",
    y_max: float = 1.0,
    percent: bool = True,
    width: int = 640,
    height: int = 260,
    title: str = "",
) -> Markup:
    """An SVG line chart of ``points`` ((x, y), x ascending) on y from 0 to ``y_max`` (shown as 0-100% when
    ``percent``), x from 1 (or the first x) to the last; integer x ticks. The point whose x is ``best`` gets
    a larger dot (class ``best``) and a label with its value."""
    plot_w, plot_h = width - LEFT - RIGHT, height - TOP - BOTTOM
    x_first = min((p[0] for p in points), default=1.0)
    x_low = min(1.0, x_first)
    x_high = max(max((p[0] for p in points), default=1.0), x_low + 1)

    def sx(x: float) -> float:
        return LEFT + (x - x_low) / (x_high - x_low) * plot_w

    def sy(y: float) -> float:
        return TOP + plot_h - max(0.0, min(y, y_max)) / y_max * plot_h

    def value(y: float) -> str:
        return f"{y / y_max * 100:.1f}%" if percent else f"{y:g}"

    label = title or f"{y_label} per {x_label.lower()}"
    parts = [
        f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" role="img" aria-label="{escape(label)}">',
        f"<title>{escape(label)}</title>",
        f'<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="#fff" stroke="#e4e7ec"/>',
    ]
    # Y axis: gridlines and labels at 0, 25, 50, 75, 100%.
    for i in range(5):
        y = y_max * i / 4
        py = _num(sy(y))
        parts.append(
            f'<line class="grid" x1="{LEFT}" x2="{LEFT + plot_w}" y1="{py}" y2="{py}" stroke="#eef2f6"/>'
        )
        tick = f"{i * 25}%" if percent else f"{y:g}"
        parts.append(
            f'<text x="{LEFT - 6}" y="{py}" text-anchor="end" dominant-baseline="middle">{tick}</text>'
        )
    # X axis: integer ticks, at most about 10.
    step = max(1, int(_nice_step(x_high - x_low, 10)))
    tick_x = math.ceil(x_low / step) * step if step > 1 else int(math.ceil(x_low))
    while tick_x <= x_high + 1e-9:
        px = _num(sx(tick_x))
        parts.append(
            f'<line x1="{px}" x2="{px}" y1="{TOP + plot_h}" y2="{TOP + plot_h + 4}" stroke="#98a2b3"/>'
            f'<text x="{px}" y="{TOP + plot_h + 16}" text-anchor="middle">{tick_x}</text>'
        )
        tick_x += step
    parts.append(
        f'<line class="axis" x1="{LEFT}" x2="{LEFT + plot_w}" y1="{TOP + plot_h}" y2="{TOP + plot_h}" '
        f'stroke="#98a2b3"/><line class="axis" x1="{LEFT}" x2="{LEFT}" y1="{TOP}" y2="{TOP + plot_h}" '
        f'stroke="#98a2b3"/>'
    )
    parts.append(
        f'<text class="axis-title" x="{_num(LEFT + plot_w / 2)}" y="{height - 6}" text-anchor="middle">'
        f"{escape(x_label)}</text>"
    )
    parts.append(
        f'<text class="axis-title" transform="translate(12 {_num(TOP + plot_h / 2)}) rotate(-90)" '
        f'text-anchor="middle">{escape(y_label)}</text>'
    )
    if points:
        line = " ".join(f"{_num(sx(x))},{_num(sy(y))}" for x, y in points)
        parts.append(
            f'<polyline class="series" points="{line}" fill="none" stroke="#1f6feb" stroke-width="2" '
            'stroke-linejoin="round"/>'
        )
        for x, y in points:
            parts.append(
                f'<circle class="point" cx="{_num(sx(x))}" cy="{_num(sy(y))}" r="2.5" fill="#1f6feb">'
                f"<title>{escape(x_label)} {x:g}: {value(y)}</title></circle>"
            )
    marked = next(((x, y) for x, y in points if best is not None and x == best), None)
    if marked is not None:
        x, y = marked
        px, py = sx(x), sy(y)
        # The label sits above the dot, or below it near the top, and inside the plot at either end.
        anchor = "end" if px > LEFT + plot_w * 0.75 else "start"
        dx = -8 if anchor == "end" else 8
        ly = py - 9 if py - TOP > 20 else py + 16
        parts.append(
            f'<g class="best"><circle cx="{_num(px)}" cy="{_num(py)}" r="5.5" fill="#2e7d32" stroke="#fff" '
            f'stroke-width="1.5"/><text x="{_num(px + dx)}" y="{_num(ly)}" text-anchor="{anchor}" '
            f'font-weight="600">best: {escape(x_label.lower())} {x:g}, {value(y)}</text></g>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))
