"""Small self-contained SVG plots: a histogram and a line plot.

The report and the analyses need two simple charts. Writing them as SVG text keeps the CLI
free of a plotting stack (startup time, package size), and the files open offline anywhere
(browser, image viewer, inside the HTML report) with no fonts or scripts to fetch.
"""
from __future__ import annotations

import math
from html import escape
from typing import Sequence

import numpy as np

WIDTH, HEIGHT = 480, 260
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 52, 16, 28, 44
BAR_COLOUR = "#4a78b5"
LINE_COLOUR = "#c0392b"
FONT = 'font-family="sans-serif"'


def _nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """About `count` round tick values covering [lo, hi]."""
    if not math.isfinite(lo) or not math.isfinite(hi):
        return []
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / max(count, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.ceil(lo / step) * step
    ticks = []
    value = first
    while value <= hi + step * 1e-9:
        ticks.append(round(value, 12))
        value += step
    return ticks


def _fmt(value: float) -> str:
    """Compact tick label."""
    if value == 0:
        return "0"
    if abs(value) >= 1e4 or abs(value) < 1e-3:
        return f"{value:.0e}"
    return f"{value:.4g}"


def _frame(title: str, xlabel: str, ylabel: str) -> list[str]:
    """Opening tag, background, title and axis labels."""
    plot_bottom = HEIGHT - MARGIN_BOTTOM
    return [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(title)}">',
        f'<rect width="{WIDTH}" height="{HEIGHT}" fill="#ffffff"/>',
        f'<text x="{WIDTH / 2}" y="18" text-anchor="middle" font-size="13" {FONT}>{escape(title)}</text>',
        f'<text x="{(MARGIN_LEFT + WIDTH - MARGIN_RIGHT) / 2}" y="{HEIGHT - 8}" text-anchor="middle" '
        f'font-size="11" {FONT}>{escape(xlabel)}</text>',
        f'<text x="12" y="{(MARGIN_TOP + plot_bottom) / 2}" text-anchor="middle" font-size="11" {FONT} '
        f'transform="rotate(-90 12 {(MARGIN_TOP + plot_bottom) / 2})">{escape(ylabel)}</text>',
        f'<line x1="{MARGIN_LEFT}" y1="{plot_bottom}" x2="{WIDTH - MARGIN_RIGHT}" y2="{plot_bottom}" stroke="#333"/>',
        f'<line x1="{MARGIN_LEFT}" y1="{MARGIN_TOP}" x2="{MARGIN_LEFT}" y2="{plot_bottom}" stroke="#333"/>',
    ]


def _y_axis(parts: list[str], lo: float, hi: float, to_y) -> None:
    """Horizontal grid lines and labels for the y axis."""
    for tick in _nice_ticks(lo, hi, 4):
        y = to_y(tick)
        parts.append(f'<line x1="{MARGIN_LEFT - 3}" y1="{y:.1f}" x2="{WIDTH - MARGIN_RIGHT}" '
                     f'y2="{y:.1f}" stroke="#ddd"/>')
        parts.append(f'<text x="{MARGIN_LEFT - 5}" y="{y + 4:.1f}" text-anchor="end" font-size="10" '
                     f'{FONT}>{_fmt(tick)}</text>')


def histogram_svg(values: Sequence[float], title: str, xlabel: str, bins: int = 30) -> str:
    """Histogram of the finite `values` (NaNs dropped) as an SVG document."""
    data = np.asarray([v for v in values if v is not None], dtype=np.float64)
    data = data[np.isfinite(data)]
    parts = _frame(title, xlabel, "units")
    plot_w = WIDTH - MARGIN_LEFT - MARGIN_RIGHT
    plot_h = HEIGHT - MARGIN_TOP - MARGIN_BOTTOM
    plot_bottom = HEIGHT - MARGIN_BOTTOM
    if data.size == 0:
        parts.append(f'<text x="{WIDTH / 2}" y="{HEIGHT / 2}" text-anchor="middle" font-size="12" '
                     f'{FONT}>no values</text></svg>')
        return "\n".join(parts)
    lo, hi = float(data.min()), float(data.max())
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    counts, edges = np.histogram(data, bins=bins, range=(lo, hi))
    top = max(int(counts.max()), 1)

    def to_x(v: float) -> float:
        return MARGIN_LEFT + (v - lo) / (hi - lo) * plot_w

    def to_y(v: float) -> float:
        return plot_bottom - v / top * plot_h

    _y_axis(parts, 0, top, to_y)
    for count, left, right in zip(counts, edges[:-1], edges[1:]):
        if count == 0:
            continue
        x0, x1 = to_x(left), to_x(right)
        parts.append(f'<rect x="{x0:.1f}" y="{to_y(count):.1f}" width="{max(x1 - x0 - 1, 0.5):.1f}" '
                     f'height="{plot_bottom - to_y(count):.1f}" fill="{BAR_COLOUR}">'
                     f'<title>{_fmt(left)} to {_fmt(right)}: {int(count)}</title></rect>')
    for tick in _nice_ticks(lo, hi, 5):
        x = to_x(tick)
        parts.append(f'<line x1="{x:.1f}" y1="{plot_bottom}" x2="{x:.1f}" y2="{plot_bottom + 4}" stroke="#333"/>')
        parts.append(f'<text x="{x:.1f}" y="{plot_bottom + 16}" text-anchor="middle" font-size="10" '
                     f'{FONT}>{_fmt(tick)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def line_plot_svg(xs: Sequence[float], ys: Sequence[float], title: str, xlabel: str,
                  ylabel: str, log_x: bool = False, reference_y: float | None = None,
                  reference_label: str = "") -> str:
    """Line plot with markers (x on a log2 axis when `log_x`), optional labelled dashed horizontal line."""
    x = np.asarray(xs, dtype=np.float64)
    y = np.asarray(ys, dtype=np.float64)
    keep = np.isfinite(x) & np.isfinite(y) & ((x > 0) if log_x else True)
    x, y = x[keep], y[keep]
    parts = _frame(title, xlabel, ylabel)
    if x.size == 0:
        parts.append(f'<text x="{WIDTH / 2}" y="{HEIGHT / 2}" text-anchor="middle" font-size="12" '
                     f'{FONT}>no values</text></svg>')
        return "\n".join(parts)
    tx = np.log2(x) if log_x else x
    x_lo, x_hi = float(tx.min()), float(tx.max())
    if x_hi <= x_lo:
        x_lo, x_hi = x_lo - 1, x_hi + 1
    all_y = np.append(y, reference_y) if reference_y is not None else y
    y_lo, y_hi = float(all_y.min()), float(all_y.max())
    pad = (y_hi - y_lo) * 0.08 or 0.05
    y_lo, y_hi = y_lo - pad, y_hi + pad
    plot_w = WIDTH - MARGIN_LEFT - MARGIN_RIGHT
    plot_h = HEIGHT - MARGIN_TOP - MARGIN_BOTTOM
    plot_bottom = HEIGHT - MARGIN_BOTTOM

    def to_x(v: float) -> float:
        return MARGIN_LEFT + (v - x_lo) / (x_hi - x_lo) * plot_w

    def to_y(v: float) -> float:
        return plot_bottom - (v - y_lo) / (y_hi - y_lo) * plot_h

    _y_axis(parts, y_lo, y_hi, to_y)
    if log_x:
        ticks = list(range(math.ceil(x_lo), math.floor(x_hi) + 1))
        step = max(1, len(ticks) // 8)
        labelled = [(t, f"2^{t}") for t in ticks[::step]]
    else:
        labelled = [(t, _fmt(t)) for t in _nice_ticks(x_lo, x_hi, 6)]
    for tick, text in labelled:
        px = to_x(tick)
        parts.append(f'<line x1="{px:.1f}" y1="{plot_bottom}" x2="{px:.1f}" y2="{plot_bottom + 4}" stroke="#333"/>')
        parts.append(f'<text x="{px:.1f}" y="{plot_bottom + 16}" text-anchor="middle" font-size="10" '
                     f'{FONT}>{escape(text)}</text>')
    if reference_y is not None:
        ry = to_y(reference_y)
        parts.append(f'<line x1="{MARGIN_LEFT}" y1="{ry:.1f}" x2="{WIDTH - MARGIN_RIGHT}" y2="{ry:.1f}" '
                     f'stroke="#777" stroke-dasharray="4 3"/>')
        parts.append(f'<text x="{WIDTH - MARGIN_RIGHT}" y="{ry - 4:.1f}" text-anchor="end" font-size="10" '
                     f'fill="#555" {FONT}>{escape(reference_label)} {reference_y:.4g}</text>')
    points = " ".join(f"{to_x(a):.1f},{to_y(b):.1f}" for a, b in zip(tx, y))
    parts.append(f'<polyline points="{points}" fill="none" stroke="{LINE_COLOUR}" stroke-width="1.5"/>')
    for a, b, raw in zip(tx, y, x):
        parts.append(f'<circle cx="{to_x(a):.1f}" cy="{to_y(b):.1f}" r="2.5" fill="{LINE_COLOUR}">'
                     f'<title>{_fmt(raw)}: {b:.4f}</title></circle>')
    parts.append("</svg>")
    return "\n".join(parts)
