"""The one place that talks to plotext: a blank figure of a given size, and its text for Rich.

plotext keeps a single master figure, so every pane draws on the UI thread only (Textual
calls `render()` there); no two plots are ever built at once.
"""

from __future__ import annotations

import re
from functools import lru_cache

import plotext
from plotext._signal.signal import signal_class
from rich.style import Style
from rich.text import Span, Text

# plotext clamps plots to the real terminal's size by default; a pane sets its own size.
plotext.terminal.limit(False, False)

# No canvas background, so the pane's own background shows through; grey frame and ticks.
plotext.add_theme("lab", text=245, grid=238, sequence=[45, 214, 120, 177, 203, 228])

# Colors by role: one per run (bright for the line read, dim for the raw series under a smooth one).
RUN_COLORS = [(45, 24), (214, 130), (120, 28), (177, 90)]  # (bright, dim) xterm-256 codes
LEVEL_COLORS = [45, 214, 120, 177, 203, 228, 111, 216, 156, 219]


def figure(width: int, height: int, rows: int = 1):
    """The cleared master figure, sized and themed; with rows > 1, stacked subplots."""
    fig = plotext.figure
    fig.clear()
    fig.plot_size(max(width, 10), max(height, 4))
    if rows > 1:
        fig.subplots(rows, 1)
    fig.theme("lab")  # after subplots(): a theme reaches only the subplots that exist
    return fig


def line(plot, xs: list, ys: list, color: int, label: str | None = None, lines: bool = True) -> None:
    """A braille polyline in one color on `plot` (the figure or a subplot)."""
    marker = plotext.marker("braille", plotext.pixel(foreground=color))
    # Built by hand, every point sharing the one marker: plot.signal() would copy the marker per
    # point and plot.draw() would scan every point's colors for its default-color cycle, which we
    # never use (colors are always named); together that was three quarters of a curves redraw.
    sig = signal_class(len(xs))  # the length reserves the kernel's capacity
    sig._append_points(xs, ys, [marker] * len(xs))
    sig._set_marker(marker)._set_xside(0)._set_yside(0)  # lower x axis, left y axis
    if lines:
        sig.lines()
    if label:
        sig.label(label)
    plot._signals._add(sig)


def step_ticks(plot, lo: float, hi: float, count: int) -> None:
    """Integer step ticks with short labels (12k, 1.5M) instead of plotext's floats."""
    if hi <= lo:
        return
    span = hi - lo
    raw = span / max(2, count)
    mag = 10 ** len(str(int(raw))) // 10 or 1
    step = next((m * mag for m in (1, 2, 5, 10) if m * mag >= raw), 10 * mag)
    first = int(-(-lo // step) * step)
    positions = list(range(first, int(hi) + 1, int(step)))
    if positions:
        plot.ruler("x").ticks(positions, [short_number(p) for p in positions])


def short_number(n: float) -> str:
    n = float(n)
    for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= size:
            v = n / size
            return f"{v:.0f}{suffix}" if v == int(v) or abs(v) >= 100 else f"{v:.1f}{suffix}".replace(".0" + suffix, suffix)
    return f"{n:.0f}" if n == int(n) else f"{n:.3g}"


_SGR = re.compile(r"\x1b\[([0-9;]*)m")


def to_text(fig) -> Text:
    """The figure as a Rich Text."""
    return ansi_to_text(fig.build().string())


def ansi_to_text(ansi: str) -> Text:
    """Read plotext's ANSI output into a Rich Text.

    Our own reader because plotext only writes a handful of SGR codes (reset, 256-color fore
    and background, bold) and Rich's general decoder costs more than the plot itself.
    """
    pieces: list[str] = []
    spans: list[Span] = []
    state = (None, None, False)  # (fg, bg, bold)
    length = 0
    parts = _SGR.split(ansi)  # text, codes, text, codes, ..., text
    for i in range(0, len(parts), 2):
        if i:
            state = _apply_sgr(parts[i - 1], state)
        chunk = parts[i]
        if not chunk:
            continue
        pieces.append(chunk)
        style = _style(*state)
        if style is not None:
            if spans and spans[-1].end == length and spans[-1].style is style:
                spans[-1] = Span(spans[-1].start, length + len(chunk), style)
            else:
                spans.append(Span(length, length + len(chunk), style))
        length += len(chunk)
    return Text("".join(pieces), spans=spans, no_wrap=True, end="")


@lru_cache(maxsize=4096)
def _apply_sgr(codes: str, state: tuple) -> tuple:
    """The (fg, bg, bold) after one SGR sequence; plotext repeats a few, so each is read once."""
    fg, bg, bold = state
    parts = codes.split(";") if codes else ["0"]
    i = 0
    while i < len(parts):
        c = parts[i]
        if c in ("", "0"):
            fg = bg = None
            bold = False
        elif c == "1":
            bold = True
        elif c in ("38", "48") and i + 2 < len(parts) and parts[i + 1] == "5":
            if c == "38":
                fg = int(parts[i + 2])
            else:
                bg = int(parts[i + 2])
            i += 2
        i += 1
    return fg, bg, bold


@lru_cache(maxsize=512)
def _style(fg: int | None, bg: int | None, bold: bool) -> Style | None:
    if fg is None and bg is None and not bold:
        return None
    return Style(color=f"color({fg})" if fg is not None else None,
                 bgcolor=f"color({bg})" if bg is not None else None, bold=bold or None)


def fmt(v: float | None) -> str:
    """A figure for a pane: 4 significant digits, compact for tiny and huge values."""
    if v is None:
        return "—"
    if v != v:
        return "nan"
    a = abs(v)
    if a != 0 and (a < 1e-3 or a >= 1e5):
        return f"{v:.2e}"
    return f"{v:.4g}"
