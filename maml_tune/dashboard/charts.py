"""A small terminal chart for rich: scatter and line series drawn with braille dots (2×4 per cell).

:class:`Chart` is a rich renderable that sizes itself to the width it is given, so the same
chart fits an 80-column pane or a 200-column screen. The y axis switches to a log scale when
all values are positive and span more than two decades (diverged trials would otherwise
flatten everything else).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from rich.console import Console, ConsoleOptions, RenderResult
from rich.measure import Measurement
from rich.segment import Segment
from rich.style import Style
from rich.text import Text

_BRAILLE = 0x2800
_DOTS = ((0x01, 0x08), (0x02, 0x10), (0x04, 0x20), (0x40, 0x80))  # [row][col] within a cell


@dataclass
class Series:
    points: list[tuple[float, float]]
    style: str = "cyan"
    line: bool = False
    label: str = ""


@dataclass
class Chart:
    series: list[Series] = field(default_factory=list)
    height: int = 8
    x_label: str = ""
    log_y: bool | None = None
    """``None``: log scale when positive values span more than two decades."""
    empty: str = "no data yet"
    _cache: dict[int, list[Segment]] = field(default_factory=dict, repr=False, compare=False)

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        return Measurement(20, options.max_width)

    def _ys(self) -> list[float]:
        return [y for s in self.series for _, y in s.points if math.isfinite(y)]

    def use_log(self) -> bool:
        ys = self._ys()
        if self.log_y is not None:
            return self.log_y and bool(ys) and min(ys) > 0
        return bool(ys) and min(ys) > 0 and max(ys) / min(ys) > 100

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        """Rendered once per width (rich lays tables out by rendering cells several times)."""
        width = max(options.max_width, 20)
        if width not in self._cache:
            self._cache[width] = list(self._render(console, width))
        yield from self._cache[width]

    def _render(self, console: Console, width: int) -> RenderResult:
        ys = self._ys()
        xs = [x for s in self.series for x, y in s.points if math.isfinite(y)]
        if not ys:
            yield Text(self.empty, style="dim")
            return
        log = self.use_log()

        def ty(y: float) -> float:
            return math.log10(y) if log else y

        lo, hi = ty(min(ys)), ty(max(ys))
        if hi == lo:
            lo, hi = lo - 0.5, hi + 0.5
        x_lo, x_hi = min(xs), max(xs)
        if x_hi == x_lo:
            x_lo, x_hi = x_lo - 0.5, x_hi + 0.5
        labels = [_num(min(ys)), _num(_inv(lo + (hi - lo) / 2, log)), _num(max(ys))]
        gutter = max(len(t) for t in labels) + 1
        cols = max(width - gutter - 1, 10)
        rows = max(self.height, 3)
        dot_w, dot_h = cols * 2, rows * 4
        cells: list[list[int]] = [[0] * cols for _ in range(rows)]
        styles: list[list[str | None]] = [[None] * cols for _ in range(rows)]

        def put(dx: int, dy: int, style: str) -> None:
            if 0 <= dx < dot_w and 0 <= dy < dot_h:
                r, c = dy // 4, dx // 2
                cells[r][c] |= _DOTS[dy % 4][dx % 2]
                styles[r][c] = style

        def to_dot(x: float, y: float) -> tuple[int, int]:
            dx = round((x - x_lo) / (x_hi - x_lo) * (dot_w - 1))
            dy = round((hi - ty(y)) / (hi - lo) * (dot_h - 1))
            return dx, dy

        for s in self.series:
            pts = [to_dot(x, y) for x, y in s.points if math.isfinite(y)]
            if s.line:
                for (x0, y0), (x1, y1) in zip(pts, pts[1:], strict=False):
                    for dx, dy in _segment(x0, y0, x1, y1):
                        put(dx, dy, s.style)
            for dx, dy in pts:
                put(dx, dy, s.style)

        label_rows = {0: labels[2], rows // 2: labels[1], rows - 1: labels[0]}
        axis = Style(dim=True)
        for r in range(rows):
            yield Segment(label_rows.get(r, "").rjust(gutter - 1) + " ", axis)
            yield Segment("│", axis)
            run_style: str | None = None
            run = []
            for c in range(cols):
                ch = chr(_BRAILLE + cells[r][c]) if cells[r][c] else " "
                st = styles[r][c]
                if st != run_style and run:
                    yield Segment("".join(run), console.get_style(run_style) if run_style else None)
                    run = []
                run_style = st
                run.append(ch)
            if run:
                yield Segment("".join(run), console.get_style(run_style) if run_style else None)
            yield Segment.line()
        left, right = _num(x_lo if xs else 0), _num(x_hi if xs else 0)
        bottom = " " * gutter + "└" + "─" * cols
        yield Segment(bottom, axis)
        yield Segment.line()
        caption = self.x_label + (" · log scale" if log else "")
        middle = max(cols - len(left) - len(right), 1)
        caption = caption[: max(middle - 2, 0)]
        pad = middle - len(caption)
        line = " " * (gutter + 1) + left + " " * (pad // 2) + caption + " " * (pad - pad // 2) + right
        yield Segment(line[:width], axis)
        yield Segment.line()
        legend = Text()
        for s in self.series:
            if s.label:
                if legend:
                    legend.append("  ")
                legend.append("⣿ " if not s.line else "── ", style=s.style)
                legend.append(s.label)
        if legend:
            legend.truncate(width)
            yield from legend.render(console)
            yield Segment.line()


def _inv(value: float, log: bool) -> float:
    return 10**value if log else value


def _num(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1e5 or abs(value) < 1e-3:
        return f"{value:.2e}"
    if float(value).is_integer():
        return str(int(value))
    return f"{value:.4g}"


def _segment(x0: int, y0: int, x1: int, y1: int) -> list[tuple[int, int]]:
    """Dots on the straight line between two dots (Bresenham)."""
    points = []
    dx, dy = abs(x1 - x0), -abs(y1 - y0)
    sx, sy = (1 if x0 < x1 else -1), (1 if y0 < y1 else -1)
    err = dx + dy
    while True:
        points.append((x0, y0))
        if x0 == x1 and y0 == y1:
            return points
        e2 = 2 * err
        if e2 >= dy:
            err += dy
            x0 += sx
        if e2 <= dx:
            err += dx
            y0 += sy


def bar(fraction: float, width: int) -> str:
    """A horizontal bar of ``width`` cells filled to ``fraction`` (eighths of a cell)."""
    fraction = min(max(fraction, 0.0), 1.0)
    eighths = round(fraction * width * 8)
    full, rest = divmod(eighths, 8)
    partial = " ▏▎▍▌▋▊▉"[rest] if rest else ""
    return ("█" * full + partial).ljust(width)
