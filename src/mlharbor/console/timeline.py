"""A time axis with spans on it, drawn as SVG on the server: a Kinesis Video stream's fragments over a window.

The caller hands the spans already merged to the drawing's resolution (one per pixel column at most), so
the SVG stays a few kilobytes whatever the window holds. Times are epoch seconds, labels UTC.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from markupsafe import Markup, escape

WIDTH = 1000  # the viewBox's width; the SVG scales to its box
HEIGHT = 70
LEFT, RIGHT = 8, 8  # margins of the plot inside the viewBox
BAR_TOP, BAR_HEIGHT = 8, 34
# Tick spacing (seconds) for a window: about 6 to 12 labelled ticks.
_STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400)


@dataclass(frozen=True, slots=True)
class Span:
    """Time covered by fragments: [start, end), ``count`` fragments of ``size`` bytes together."""

    start: float
    end: float
    count: int
    size: int


def merge(spans: list[Span], tolerance: float, distinct: float = 0.0) -> list[Span]:
    """Spans sorted by start, those closer than ``tolerance`` seconds made one, unless both are at least
    ``distinct`` seconds long (fragments wide enough to be told apart stay apart)."""
    merged: list[Span] = []
    for span in sorted(spans, key=lambda s: s.start):
        last = merged[-1] if merged else None
        wide = (
            distinct > 0 and min(last.end - last.start, span.end - span.start) >= distinct if last else False
        )
        if last is not None and span.start <= last.end + tolerance and not wide:
            merged[-1] = Span(
                last.start, max(last.end, span.end), last.count + span.count, last.size + span.size
            )
        else:
            merged.append(span)
    return merged


def _step(seconds: float) -> int:
    for step in _STEPS:
        if seconds / step <= 12:
            return step
    return _STEPS[-1]


def _label(at: float, step: int) -> str:
    moment = datetime.fromtimestamp(at, UTC)
    return moment.strftime("%H:%M:%S" if step < 60 else "%H:%M")


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def svg(spans: list[Span], start: float, end: float, *, css_class: str = "timeline chart") -> Markup:
    """The window [start, end] as an axis, each span a bar (``rect.fragment``); what no span covers is a gap.

    The ``svg`` element carries ``data-start``, ``data-end``, ``data-left`` and ``data-right`` (the plot's
    x range in viewBox units) so a script can turn a click into a time."""
    plot = WIDTH - LEFT - RIGHT
    scale = plot / max(end - start, 1e-9)

    def x(at: float) -> float:
        return LEFT + (min(max(at, start), end) - start) * scale

    parts = [
        f'<svg class="{escape(css_class)}" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'role="img" aria-label="fragments from {_label(start, 1)} to {_label(end, 1)} UTC" '
        f'data-start="{start:.3f}" data-end="{end:.3f}" data-left="{LEFT}" data-right="{WIDTH - RIGHT}" '
        f'xmlns="http://www.w3.org/2000/svg">',
        f'<rect class="track" x="{LEFT}" y="{BAR_TOP}" width="{plot}" height="{BAR_HEIGHT}" fill="#eef2f6"/>',
    ]
    for span in spans:
        left, right = x(span.start), x(span.end)
        if right <= LEFT or left >= WIDTH - RIGHT:
            continue
        width = max(right - left, 1.0)  # a short fragment is still seen
        stroke = ' stroke="#fff" stroke-width="0.5"' if width > 3 else ""
        first = datetime.fromtimestamp(span.start, UTC).strftime("%Y-%m-%d %H:%M:%S")
        title = (
            f"{first} UTC, {_duration(span.end - span.start)}: "
            f"{span.count} fragment{'s' if span.count != 1 else ''}, {span.size / 1e6:.2f} MB"
        )
        parts.append(
            f'<rect class="fragment" x="{left:.2f}" y="{BAR_TOP}" width="{width:.2f}" height="{BAR_HEIGHT}" '
            f'fill="#1f6feb"{stroke} data-start="{span.start:.3f}" data-end="{span.end:.3f}">'
            f"<title>{escape(title)}</title></rect>"
        )
    step = _step(end - start)
    tick = (int(start) // step + 1) * step
    axis = BAR_TOP + BAR_HEIGHT
    parts.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{axis}" y2="{axis}" stroke="#98a2b3"/>')
    while tick < end:
        at = x(tick)
        parts.append(f'<line x1="{at:.2f}" x2="{at:.2f}" y1="{axis}" y2="{axis + 5}" stroke="#98a2b3"/>')
        parts.append(f'<text x="{at:.2f}" y="{axis + 17}" text-anchor="middle">{_label(tick, step)}</text>')
        tick += step
    parts.append("</svg>")
    return Markup("".join(parts))
