"""A small SVG plotting kit for the report: lines, bars, histograms, matrices, density grids.

Every chart is a self-contained ``<svg>`` string (no scripts, fonts or images), sized in pixels and
styled by the page's CSS classes (``axis``, ``grid``, ``tick``, ``label``, ``legend``). Every text
that reaches the SVG is escaped, so a feature named ``<script>`` is drawn as those characters.

Examples
--------
>>> svg = lines([Series("valid", [0, 0.5, 1], [0, 0.8, 1])], x_label="false positive rate",
...             y_label="true positive rate", x_range=(0, 1), y_range=(0, 1), diagonal=True)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

#: Colours of successive series (the first bundle or side first).
PALETTE = ("#1f6fb4", "#e07b10", "#2a9d4b", "#8e44ad", "#c0392b", "#7f8c8d")
MUTED = "#9aa5b1"
WIDTH, HEIGHT = 440, 300
_LEFT, _RIGHT, _TOP, _BOTTOM = 62, 14, 14, 46


def text(value: object) -> str:
    """``value`` as text safe inside an element or an attribute."""
    return escape(str(value), quote=True)


def number(value: float | None, digits: int = 4) -> str:
    """A compact number: ``0.7687``, ``1.2e+06``, ``15962``."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, int) or float(value).is_integer() and abs(value) < 1e15:
        return f"{int(value):,}".replace(",", "\u2009") if abs(value) >= 1e4 else str(int(value))
    return f"{value:.{digits}g}"


def ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values covering ``[low, high]``, about ``count`` of them."""
    if not high > low:
        return [low]
    raw = (high - low) / max(count, 1)
    step = 10 ** math.floor(math.log10(raw))
    step *= next((m for m in (1, 2, 2.5, 5, 10) if raw <= step * m), 10)
    first = math.ceil(low / step - 1e-9) * step
    n = int(math.floor((high - first) / step + 1e-9)) + 1
    return [round(first + i * step, 12) for i in range(max(n, 1))]


@dataclass(frozen=True)
class Series:
    """One line of a chart: its legend name, points, colour and style."""

    name: str
    x: Sequence[float]
    y: Sequence[float]
    color: str = PALETTE[0]
    dashed: bool = False
    markers: bool = False


class Frame:
    """A plotting area mapping data ranges to pixels, with axes, grid and labels."""

    def __init__(
        self,
        x_range: tuple[float, float],
        y_range: tuple[float, float],
        *,
        x_label: str = "",
        y_label: str = "",
        width: int = WIDTH,
        height: int = HEIGHT,
        left: int = _LEFT,
        legend: int = 0,
    ):
        """``legend`` entries get a band of their own above the plotting area."""
        self.x0, self.x1 = _widen(x_range)
        self.y0, self.y1 = _widen(y_range)
        self.legend_rows = math.ceil(legend / 3) if legend > 1 else 0
        self.top = _TOP + 16 * self.legend_rows
        self.width, self.height, self.left = width, height + 16 * self.legend_rows, left
        self.x_label, self.y_label = x_label, y_label
        self.inner_w = width - left - _RIGHT
        self.inner_h = height - _TOP - _BOTTOM

    def px(self, x: float) -> float:
        return round(self.left + (x - self.x0) / (self.x1 - self.x0) * self.inner_w, 2)

    def py(self, y: float) -> float:
        return round(self.top + (1 - (y - self.y0) / (self.y1 - self.y0)) * self.inner_h, 2)

    def axes(self, *, x_ticks: bool = True, y_ticks: bool = True) -> list[str]:
        out = []
        bottom, right = self.top + self.inner_h, self.left + self.inner_w
        if y_ticks:
            for v in ticks(self.y0, self.y1):
                y = self.py(v)
                out.append(f'<line class="grid" x1="{self.left}" y1="{y}" x2="{right}" y2="{y}"/>')
                out.append(f'<text class="tick" x="{self.left - 6}" y="{y + 4}" text-anchor="end">{number(v)}</text>')
        if x_ticks:
            for v in ticks(self.x0, self.x1):
                x = self.px(v)
                out.append(f'<line class="grid" x1="{x}" y1="{self.top}" x2="{x}" y2="{bottom}"/>')
                out.append(f'<text class="tick" x="{x}" y="{bottom + 16}" text-anchor="middle">{number(v)}</text>')
        out.append(
            f'<rect class="axis" x="{self.left}" y="{self.top}" width="{self.inner_w}" height="{self.inner_h}"/>'
        )
        if self.x_label:
            out.append(
                f'<text class="label" x="{self.left + self.inner_w / 2}" y="{self.height - 8}"'
                f' text-anchor="middle">{text(self.x_label)}</text>'
            )
        if self.y_label:
            cy = self.top + self.inner_h / 2
            out.append(
                f'<text class="label" x="14" y="{cy}" text-anchor="middle"'
                f' transform="rotate(-90 14 {cy})">{text(self.y_label)}</text>'
            )
        return out

    def path(self, xs: Sequence[float], ys: Sequence[float], color: str, *, dashed: bool = False) -> str:
        points = [(self.px(x), self.py(y)) for x, y in zip(xs, ys) if _finite(x) and _finite(y)]
        if not points:
            return ""
        d = "M" + " L".join(f"{x},{y}" for x, y in points)
        dash = ' stroke-dasharray="6 4"' if dashed else ""
        return f'<path class="series" d="{d}" stroke="{color}"{dash}/>'

    def svg(self, body: Sequence[str], *, legend: Sequence[tuple[str, str, bool]] = (), title: str = "") -> str:
        items = []
        if len(legend) < 2:
            legend = ()
        column = max(self.inner_w // 3, 60)
        for i, (name, color, dashed) in enumerate(legend):
            y = 8 + 16 * (i // 3) + 8
            x = self.left + column * (i % 3)
            dash = ' stroke-dasharray="6 4"' if dashed else ""
            items.append(
                f'<line x1="{x}" y1="{y - 4}" x2="{x + 18}" y2="{y - 4}" stroke="{color}" stroke-width="3"{dash}/>'
                f'<text class="legend" x="{x + 24}" y="{y}">{text(_short(name, (column - 30) // 6))}</text>'
            )
        head = f"<title>{text(title)}</title>" if title else ""
        return (
            f'<svg viewBox="0 0 {self.width} {self.height}" width="{self.width}" height="{self.height}"'
            f' role="img">{head}{"".join(body)}{"".join(items)}</svg>'
        )


def _short(name: str, room: int) -> str:
    return name if len(name) <= room else name[: max(room - 1, 1)] + "…"


def _finite(v: float | None) -> bool:
    return v is not None and math.isfinite(v)


def _widen(r: tuple[float, float]) -> tuple[float, float]:
    lo, hi = float(r[0]), float(r[1])
    if hi > lo:
        return lo, hi
    pad = abs(lo) * 0.05 or 1.0
    return lo - pad, hi + pad


def _extent(values: Sequence[float], *, zero: bool = False) -> tuple[float, float]:
    finite = [v for v in values if _finite(v)] + ([0.0] if zero else [])
    if not finite:
        return 0.0, 1.0
    lo, hi = min(finite), max(finite)
    pad = (hi - lo) * 0.04
    return lo - (0 if zero and lo == 0 else pad), hi + pad


# -- charts ------------------------------------------------------------------------------------
def lines(
    series: Sequence[Series],
    *,
    x_label: str,
    y_label: str,
    x_range: tuple[float, float] | None = None,
    y_range: tuple[float, float] | None = None,
    diagonal: bool = False,
    title: str = "",
) -> str:
    """Lines (ROC, PR, calibration, learning curves); ``diagonal`` draws y = x dotted."""
    frame = Frame(
        x_range or _extent([v for s in series for v in s.x]),
        y_range or _extent([v for s in series for v in s.y]),
        x_label=x_label,
        y_label=y_label,
        legend=len([s for s in series if s.name]),
    )
    body = frame.axes()
    if diagonal:
        lo, hi = max(frame.x0, frame.y0), min(frame.x1, frame.y1)
        body.append(frame.path([lo, hi], [lo, hi], MUTED, dashed=True))
    for s in series:
        body.append(frame.path(s.x, s.y, s.color, dashed=s.dashed))
        if s.markers:
            body.extend(
                f'<circle cx="{frame.px(x)}" cy="{frame.py(y)}" r="3" fill="{s.color}"/>'
                for x, y in zip(s.x, s.y)
                if _finite(x) and _finite(y)
            )
    return frame.svg(body, legend=[(s.name, s.color, s.dashed) for s in series if s.name], title=title)


def bars(
    categories: Sequence[str],
    series: Sequence[tuple[str, Sequence[float | None], str]],
    *,
    x_label: str,
    title: str = "",
) -> str:
    """Horizontal bars, one group per category (feature importance, a metric per slice value)."""
    per = max(len(series), 1)
    row = 6 + 9 * per
    height = _TOP + _BOTTOM + row * max(len(categories), 1)
    longest = max((len(str(c)) for c in categories), default=4)
    left = min(12 + 6 * longest, 200)
    values = [v for _, vs, _ in series for v in vs if v is not None and _finite(v)]
    frame = Frame(
        (0, max(values, default=1.0) * 1.05 or 1.0), (0, 1), x_label=x_label, height=height, left=left, legend=per
    )
    body = frame.axes(y_ticks=False)
    for i, category in enumerate(categories):
        top = frame.top + i * row + 3
        shown = category if len(str(category)) <= 32 else str(category)[:31] + "…"
        body.append(f'<text class="tick" x="{left - 6}" y="{top + row / 2}" text-anchor="end">{text(shown)}</text>')
        for j, (_, vs, color) in enumerate(series):
            found = vs[i] if i < len(vs) else None
            v = found if found is not None and _finite(found) else 0.0
            w = max(frame.px(v) - frame.px(0), 0.0)
            body.append(f'<rect x="{left}" y="{top + 9 * j}" width="{w:.2f}" height="8" fill="{color}"/>')
    return frame.svg(body, legend=[(name, color, False) for name, _, color in series], title=title)


def histogram(edges: Sequence[float], series: Sequence[tuple[str, Sequence[float], str]], *, x_label: str) -> str:
    """Counts per bin as filled steps, one outline per series (residuals of one or two bundles)."""
    top = max((v for _, counts, _ in series for v in counts), default=1.0) or 1.0
    frame = Frame((edges[0], edges[-1]), (0, top * 1.05), x_label=x_label, y_label="rows", legend=len(series))
    body = frame.axes()
    for _, counts, color in series:
        xs, ys = [edges[0]], [0.0]
        for i, c in enumerate(counts):
            xs += [edges[i], edges[i + 1]]
            ys += [c, c]
        xs.append(edges[-1])
        ys.append(0.0)
        d = "M" + " L".join(f"{frame.px(x)},{frame.py(y)}" for x, y in zip(xs, ys)) + " Z"
        body.append(f'<path class="area" d="{d}" fill="{color}" stroke="{color}"/>')
    return frame.svg(body, legend=[(name, color, False) for name, _, color in series])


def matrix(values: Sequence[Sequence[float]], labels: Sequence[str], *, x_label: str, y_label: str) -> str:
    """A matrix of counts (a confusion matrix), each cell shaded by its share of its row."""
    k = max(len(labels), 1)
    cell = max(min(300 // k, 90), 16)
    left = 70
    size = cell * k
    frame = Frame((0, k), (0, k), x_label=x_label, y_label=y_label, width=left + size + _RIGHT, left=left)
    frame.inner_w = frame.inner_h = size
    frame.height = _TOP + size + _BOTTOM
    body = []
    for i, row in enumerate(values):
        total = sum(row) or 1
        for j, v in enumerate(row):
            share = v / total
            x, y = left + j * cell, _TOP + i * cell
            body.append(
                f'<rect x="{x}" y="{y}" width="{cell}" height="{cell}" fill="{PALETTE[0]}"'
                f' fill-opacity="{0.08 + 0.85 * share:.3f}" stroke="#fff"/>'
            )
            if cell >= 28:
                tone = "light" if share > 0.55 else "dark"
                body.append(
                    f'<text class="cell {tone}" x="{x + cell / 2}" y="{y + cell / 2 + 4}"'
                    f' text-anchor="middle">{number(v)}</text>'
                )
    for i, name in enumerate(labels):
        c = _TOP + i * cell + cell / 2
        body.append(f'<text class="tick" x="{left - 6}" y="{c + 4}" text-anchor="end">{text(name)}</text>')
        body.append(
            f'<text class="tick" x="{left + i * cell + cell / 2}" y="{_TOP + size + 16}"'
            f' text-anchor="middle">{text(name)}</text>'
        )
    body += frame.axes(x_ticks=False, y_ticks=False)
    return frame.svg(body)


def density(
    cells: Sequence[Sequence[int]], grid: int, value_range: Sequence[float], *, x_label: str, y_label: str
) -> str:
    """Counts on a ``grid`` x ``grid`` square (predicted against actual), shaded on a log scale."""
    lo, hi = float(value_range[0]), float(value_range[1])
    frame = Frame((lo, hi), (lo, hi), x_label=x_label, y_label=y_label, width=HEIGHT + _LEFT, height=HEIGHT)
    frame.inner_w = frame.inner_h = HEIGHT - _TOP - _BOTTOM
    body = frame.axes()
    step = (hi - lo) / grid
    top = max((c[2] for c in cells), default=1)
    for actual, predicted, count in cells:
        x0, x1 = frame.px(lo + actual * step), frame.px(lo + (actual + 1) * step)
        y0, y1 = frame.py(lo + (predicted + 1) * step), frame.py(lo + predicted * step)
        shade = 0.15 + 0.85 * math.log1p(count) / math.log1p(top)
        body.append(
            f'<rect x="{x0}" y="{y0}" width="{max(x1 - x0, 0.5):.2f}" height="{max(y1 - y0, 0.5):.2f}"'
            f' fill="{PALETTE[0]}" fill-opacity="{shade:.3f}"/>'
        )
    body.append(frame.path([lo, hi], [lo, hi], PALETTE[1], dashed=True))
    return frame.svg(body)
