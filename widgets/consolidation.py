"""Consolidation pane: the neural memory's figures over the wake steps (surprise frequency, update rate,
utilisation), and per sleep how far the memory's parameters and the slow weights moved, the consolidation
efficiency (retention gained per consolidation step), the importance change, the consolidation loss and the
retention probe before and after."""

from __future__ import annotations

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual.widget import Widget

from widgets import plot
from widgets.curves import Series, downsample_minmax

COLUMNS = (  # (event field, header); the last two are left out on a narrow pane
    ("memory_change", "Δ‖mem‖"),
    ("weights_change", "‖Δslow‖"),
    ("efficiency", "ret/step"),
    ("importance_change", "imp Δ"),
    ("consolidation_loss", "loss"),
)
KEY = ("Δ‖mem‖  ‖memory params‖ after−before", "‖Δslow‖ ‖change of the slow weights‖",
       "ret/step retention gained per consolidation step")
# the wake steps' memory figures (engine/model/titans.py), with their colors and short names
MEMORY = (("memory_surprise_rate", 203, "surprise"), ("memory_update_rate", 45, "updates"),
          ("memory_utilisation", 120, "used"))
MEMORY_PLOT_ROWS = 7
NARROW = 52  # below this width the table keeps the two weight columns, the efficiency and retention,
NARROWER = 46  # ... and below this one only the two weight columns and retention


def _memory_change(s: dict):
    # an engine before weights_change sent the wake's fast-weight norm as memory_change: no change, not shown
    return s.get("memory_change") if "weights_change" in s else None


def _short(v) -> str:
    return f"{v:.3g}" if isinstance(v, (int, float)) and not isinstance(v, bool) else plot.fmt(v)


def sleeps_table(sleeps: list[dict], rows: int, width: int = 80) -> Table:
    columns = COLUMNS if width >= NARROW else COLUMNS[:3] if width >= NARROWER else COLUMNS[:2]
    table = Table(box=None, padding=(0, 1), show_edge=False, header_style="bold grey70", expand=True)
    table.add_column("sleep at", justify="right", no_wrap=True)
    for _, header in columns:
        table.add_column(header, justify="right", no_wrap=True)
    table.add_column("retention", justify="right", no_wrap=True)
    first = max(0, len(sleeps) - rows)
    for s in sleeps[first:]:
        before, after = s.get("retention_before"), s.get("retention_after")
        ret = Text(f"{_short(before)} → ")
        if isinstance(before, (int, float)) and isinstance(after, (int, float)):
            ret.append(_short(after), style="green" if after >= before else "red")
        else:
            ret.append(_short(after))
        figures = [_short(_memory_change(s) if k == "memory_change" else s.get(k)) for k, _ in columns]
        table.add_row(f"{s.get('step', 0):,}", *figures, ret)
    return table


def memory_line(memory: dict[str, Series]) -> Text | None:
    """The memory's latest figures in one line, each in its curve's color; None before the first."""
    shown = [(name, color, memory[key].values[-1]) for key, color, name in MEMORY if key in memory and len(memory[key])]
    if not shown:
        return None
    line = Text("mem", style="bold", no_wrap=True, overflow="ellipsis")  # short: the pane is often 50 wide
    for name, color, value in shown:
        line.append(f" ━ {name} {value:.2g}", style=f"color({color})")
    return line


def memory_plot(memory: dict[str, Series], width: int, height: int) -> Text:
    """The memory's figures over the wake steps, all three on one plot (each is a share, 0 to about 1)."""
    fig = plot.figure(width, height)
    drawn = [memory[key] for key, _, _ in MEMORY if len(memory.get(key, ())) >= 2]
    for key, color, _ in MEMORY:
        series = memory.get(key)
        if series is not None and len(series) >= 2:
            xs, ys = downsample_minmax(series, max(4, width))
            plot.line(fig, xs, ys, color)
    plot.step_ticks(fig, min(s.steps[0] for s in drawn), max(s.steps[-1] for s in drawn), max(2, width // 12))
    return plot.to_text(fig)


def render_consolidation(sleeps: list[dict], width: int, height: int, memory: dict[str, Series] | None = None):
    memory = memory or {}
    line = memory_line(memory)
    if line is None:
        return render_sleeps(sleeps, width, height)
    drawn = [line]
    curves = sum(len(memory.get(key, ())) >= 2 for key, _, _ in MEMORY)
    # the memory's curves take room only where the sleeps' table (and retention plot, once there is one) keep theirs
    if curves and width >= 30 and height - 1 - MEMORY_PLOT_ROWS >= sleeps_height(sleeps):
        drawn.append(memory_plot(memory, width, MEMORY_PLOT_ROWS))
    used = 1 + (MEMORY_PLOT_ROWS if len(drawn) > 1 else 0)
    return Group(*drawn, render_sleeps(sleeps, width, max(1, height - used)))


def sleeps_height(sleeps: list[dict]) -> int:
    """Rows the sleeps' part wants: a line before the first sleep; then the table (up to 4 rows) and its key, and
    the retention plot from the second sleep on."""
    if not sleeps:
        return 2
    plotted = sum(isinstance(s.get("retention_after"), (int, float)) for s in sleeps) >= 2
    return 1 + min(len(sleeps), 4) + len(KEY) + (10 if plotted else 0)


def render_sleeps(sleeps: list[dict], width: int, height: int):
    if not sleeps:
        return Text("no sleep yet: consolidation figures appear after the first sleep", style="dim")
    key = Text("\n".join(KEY), style="grey50", no_wrap=True, overflow="ellipsis")
    table_rows = min(len(sleeps), max(1, height // 3))
    plot_h = height - table_rows - 1 - len(KEY)
    retained = [s for s in sleeps if isinstance(s.get("retention_after"), (int, float))]
    if plot_h < 8 or len(retained) < 2 or width < 30:
        return Group(sleeps_table(sleeps, max(1, height - 1 - len(KEY)), width), key)
    fig = plot.figure(width, plot_h - 1)
    xs = [i + 1 for i, s in enumerate(sleeps) if s in retained]
    before = [(x, s.get("retention_before")) for x, s in zip(xs, retained) if isinstance(s.get("retention_before"), (int, float))]
    if before:
        plot.line(fig, [x for x, _ in before], [y for _, y in before], 130)
    plot.line(fig, xs, [s["retention_after"] for s in retained], 45)
    if len(xs) <= 12:
        fig.ruler("x").ticks(xs, [str(x) for x in xs])
    legend = Text("retention per sleep ", style="bold", no_wrap=True)
    legend.append(" ━ before", style="color(130)")
    legend.append(" ━ after", style="color(45)")
    return Group(legend, plot.to_text(fig), sleeps_table(sleeps, table_rows, width), key)


class ConsolidationPlot(Widget):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.sleeps: list[dict] = []
        self.memory: dict[str, Series] = {}  # the memory's figures by metric key
        self._drawn: tuple | None = None

    def show(self, sleeps: list[dict], memory: dict[str, Series] | None = None) -> None:
        self.sleeps, self.memory = sleeps, memory or {}

    def _state(self) -> tuple:
        return len(self.sleeps), tuple(len(self.memory.get(key, ())) for key, _, _ in MEMORY), self.size

    def refresh_if_dirty(self) -> bool:
        if self._drawn != self._state():
            self.refresh()
            return True
        return False

    def render(self):
        self._drawn = self._state()
        return render_consolidation(self.sleeps, self.size.width, self.size.height, self.memory)
