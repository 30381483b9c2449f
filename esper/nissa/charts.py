"""Inline SVG charts drawn in Python: no JavaScript, no fonts or styles fetched from anywhere.

A chart is a string holding one `<svg>`: line series over epochs, optional vertical markers (a seed
fossilized or was culled), and optional lanes under the plot, one per seed, with a coloured band for
each lifecycle stage. Every data point carries a `<title>`, so hovering shows its value in any browser.
"""

import html
import math
from typing import Callable, Sequence

import attrs

STAGE_COLORS = {
    "GERMINATED": "#a5b4fc",
    "TRAINING": "#60a5fa",
    "BLENDING": "#f59e0b",
    "FOSSILIZED": "#10b981",
    "CULLED": "#ef4444",
    "EMBARGOED": "#9ca3af",
}
RUN_COLORS = ["#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#4b5563"]
DASHES = ["", "6 3", "2 3", "8 3 2 3"]


@attrs.frozen
class Series:
    label: str
    points: Sequence[tuple[float, float | None]]
    color: str
    dash: str = ""
    step: bool = False
    """Draw as a step function (a value holds until the next point), e.g. parameter counts."""


@attrs.frozen
class Band:
    """One lifecycle stage of one seed, from boundary `x0` to `x1` (in epochs)."""

    lane: str
    stage: str
    x0: float
    x1: float
    label: str = ""


@attrs.frozen
class Marker:
    x: float
    color: str
    label: str


@attrs.frozen
class _Frame:
    width: int
    left: int
    right: int
    top: int
    plot_h: int
    x0: float
    x1: float
    y0: float
    y1: float

    def x(self, v: float) -> float:
        return self.left + (v - self.x0) / (self.x1 - self.x0) * (self.width - self.left - self.right)

    def y(self, v: float) -> float:
        # halved: the span of two finite values near the floats' limit overflows, the span of their halves cannot
        return self.top + (self.y1 / 2 - v / 2) / (self.y1 / 2 - self.y0 / 2) * self.plot_h


def nice_ticks(lo: float, hi: float, target: int = 5) -> list[float]:
    """Round tick values covering [lo, hi], about `target` of them (1, 2, 2.5 or 5 times a power of ten)."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return [0.0, 1.0]
    if hi - lo < 1e-12 or hi - lo < 1e-9 * max(abs(lo), abs(hi)):  # flat, at the resolution of floats this large:
        pad = abs(hi) * 0.05 or 1.0  # a step under it would never advance the loop below
        if math.isfinite(lo - pad) and math.isfinite(hi + pad):
            lo, hi = lo - pad, hi + pad
        else:  # a value near the floats' limit: padded toward zero only
            lo, hi = (lo - 2 * pad, hi) if hi > 0 else (lo, hi + 2 * pad)
    if not math.isfinite(abs(lo) + abs(hi) + 2 * (hi - lo)):  # near the floats' limit a step past hi overflows
        return [lo, hi]
    raw = (hi - lo) / target
    magnitude = 10 ** math.floor(math.log10(raw))
    step = magnitude
    for m in (1, 2, 2.5, 5, 10):
        step = m * magnitude
        if (hi - lo) / step <= target:
            break
    first = math.floor(lo / step + 1e-9) * step
    ticks = []
    v = first
    while v < hi + step * 0.999:
        ticks.append(round(v, 12))
        v += step
    return ticks


def line_chart(
    name: str,
    title: str,
    series: Sequence[Series],
    y_format: Callable[[float], str],
    y_label: str = "",
    bands: Sequence[Band] = (),
    markers: Sequence[Marker] = (),
    x_range: tuple[float, float] | None = None,
    width: int = 960,
    height: int = 260,
    x_label: str = "epoch",
) -> str:
    """One `<svg>` chart. X is the epoch (or what `x_label` names); `x_range` defaults to half a unit around the data."""
    xs = [x for s in series for x, y in s.points if _finite(y)]
    ys = [y for s in series for x, y in s.points if _finite(y)]
    if x_range is None:
        x_range = (min(xs) - 0.5, max(xs) + 0.5) if xs else (0.0, 1.0)
    y_ticks = nice_ticks(min(ys), max(ys)) if ys else [0.0, 1.0]
    lanes = list(dict.fromkeys(b.lane for b in bands))
    lane_h, lane_gap = 12, 4
    lanes_h = (len(lanes) * (lane_h + lane_gap) + 10) if lanes else 0
    frame = _Frame(width=width, left=64, right=16, top=12, plot_h=height - 48, x0=x_range[0], x1=x_range[1],
                   y0=y_ticks[0], y1=y_ticks[-1])
    total_h = height + lanes_h
    out = [
        f'<svg class="chart" data-chart="{_e(name)}" viewBox="0 0 {width} {total_h}" width="{width}" '
        f'height="{total_h}" role="img" aria-label="{_e(title)}">',
        f"<title>{_e(title)}</title>",
    ]
    out += _grid(frame, y_ticks, y_format, y_label, x_label)
    for m in markers:
        x = frame.x(m.x)
        out.append(
            f'<line class="marker" x1="{x:.1f}" y1="{frame.top}" x2="{x:.1f}" y2="{frame.top + frame.plot_h}" '
            f'stroke="{m.color}" stroke-dasharray="4 3" stroke-width="1.5"><title>{_e(m.label)}</title></line>'
        )
    for s in series:
        out += _series(frame, s, y_format, x_label)
    if lanes:
        out += _lanes(frame, lanes, bands, height + 4, lane_h, lane_gap)
    out.append("</svg>")
    return "\n".join(out)


def _grid(f: _Frame, y_ticks: list[float], y_format: Callable[[float], str], y_label: str, x_label: str) -> list[str]:
    out = []
    bottom = f.top + f.plot_h
    right = f.width - f.right
    for v in y_ticks:
        y = f.y(v)
        out.append(f'<line class="grid" x1="{f.left}" y1="{y:.1f}" x2="{right}" y2="{y:.1f}"/>')
        out.append(f'<text class="tick" x="{f.left - 6}" y="{y + 4:.1f}" text-anchor="end">{_e(y_format(v))}</text>')
    for v in nice_ticks(max(f.x0, 0.5), f.x1, target=10):
        if abs(v - round(v)) > 1e-9 or not (f.x0 <= v <= f.x1):
            continue
        x = f.x(v)
        out.append(f'<line class="tickmark" x1="{x:.1f}" y1="{bottom}" x2="{x:.1f}" y2="{bottom + 4}"/>')
        out.append(f'<text class="tick" x="{x:.1f}" y="{bottom + 16}" text-anchor="middle">{int(round(v))}</text>')
    out.append(f'<line class="axis" x1="{f.left}" y1="{bottom}" x2="{right}" y2="{bottom}"/>')
    out.append(f'<line class="axis" x1="{f.left}" y1="{f.top}" x2="{f.left}" y2="{bottom}"/>')
    out.append(f'<text class="label" x="{right}" y="{bottom + 30}" text-anchor="end">{_e(x_label)}</text>')
    if y_label:
        out.append(f'<text class="label" x="{f.left - 50}" y="{f.top + f.plot_h / 2:.1f}" text-anchor="middle" '
                   f'transform="rotate(-90 {f.left - 50} {f.top + f.plot_h / 2:.1f})">{_e(y_label)}</text>')
    return out


def _series(f: _Frame, s: Series, y_format: Callable[[float], str], x_label: str) -> list[str]:
    commands: list[str] = []
    pen_down = False
    previous_y: float | None = None
    for x, y in s.points:
        if not _finite(y):
            pen_down = False
            continue
        px, py = f.x(x), f.y(y)
        if not pen_down:
            commands.append(f"M{px:.1f},{py:.1f}")
            pen_down = True
        elif s.step and previous_y is not None:
            commands.append(f"H{px:.1f}V{py:.1f}")
        else:
            commands.append(f"L{px:.1f},{py:.1f}")
        previous_y = py
    if not commands:
        return []
    dash = f' stroke-dasharray="{s.dash}"' if s.dash else ""
    out = [f'<path class="series" data-series="{_e(s.label)}" d="{"".join(commands)}" fill="none" '
           f'stroke="{s.color}" stroke-width="2"{dash}/>']
    finite = [(x, y) for x, y in s.points if _finite(y)]
    if len(finite) <= 80:
        for x, y in finite:
            out.append(f'<circle class="point" cx="{f.x(x):.1f}" cy="{f.y(y):.1f}" r="2.5" fill="{s.color}">'
                       f"<title>{_e(s.label)}, {_e(x_label)} {x:g}: {_e(y_format(y))}</title></circle>")
    return out


def _lanes(f: _Frame, lanes: list[str], bands: Sequence[Band], top: int, lane_h: int, gap: int) -> list[str]:
    out = ['<g class="lanes">']
    for i, lane in enumerate(lanes):
        y = top + i * (lane_h + gap)
        out.append(f'<text class="lane" x="{f.left - 6}" y="{y + lane_h - 2}" text-anchor="end">{_e(lane)}</text>')
        out.append(f'<rect class="lane-bg" x="{f.left}" y="{y}" width="{f.width - f.left - f.right}" height="{lane_h}"/>')
        for b in bands:
            if b.lane != lane:
                continue
            x0, x1 = f.x(max(b.x0, f.x0)), f.x(min(b.x1, f.x1))
            w = max(x1 - x0, 2.0)
            color = STAGE_COLORS.get(b.stage, "#6b7280")
            tip = b.label or f"{lane}: {b.stage}"
            out.append(f'<rect class="band" data-stage="{_e(b.stage)}" x="{x0:.1f}" y="{y}" width="{w:.1f}" '
                       f'height="{lane_h}" fill="{color}"><title>{_e(tip)}</title></rect>')
    out.append("</g>")
    return out


def _finite(v: float | None) -> bool:
    return v is not None and isinstance(v, (int, float)) and math.isfinite(v)


def _e(text: str) -> str:
    return html.escape(str(text), quote=True)


FILE_STYLE = (
    ".grid { stroke: #e5e7eb; } .axis, .tickmark { stroke: #9ca3af; } "
    "text { font: 11px system-ui, sans-serif; fill: #6b7280; } .lane-bg { fill: #f3f4f6; }"
)
"""The styles a chart takes from the report's page, for a chart that is a file of its own."""


def svg_file(chart: str) -> str:
    """`chart` as a standalone `.svg` file (an image in a markdown page, say): with its namespace and styles."""
    head, rest = chart.split(">", 1)
    return f'<?xml version="1.0" encoding="utf-8"?>\n{head} xmlns="http://www.w3.org/2000/svg">' \
           f"<style>{FILE_STYLE}</style>{rest}\n"
