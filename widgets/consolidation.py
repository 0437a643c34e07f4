"""Consolidation pane: per sleep, how the neural memory's parameter norm changed and how far the
slow weights moved, the importance change, the consolidation loss and the retention probe
before and after."""

from __future__ import annotations

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual.widget import Widget

from widgets import plot

COLUMNS = (  # (event field, header); the last two go first on a narrow pane
    ("memory_change", "Δ‖mem‖"),
    ("weights_change", "‖Δslow‖"),
    ("importance_change", "imp Δ"),
    ("consolidation_loss", "loss"),
)
KEY = ("Δ‖mem‖  ‖memory params‖ after−before", "‖Δslow‖ ‖change of the slow weights‖")
NARROW = 52  # below this width the table keeps the two weight columns and retention


def _memory_change(s: dict):
    # an engine before weights_change sent the wake's fast-weight norm as memory_change: no change, not shown
    return s.get("memory_change") if "weights_change" in s else None


def _short(v) -> str:
    return f"{v:.3g}" if isinstance(v, (int, float)) and not isinstance(v, bool) else plot.fmt(v)


def sleeps_table(sleeps: list[dict], rows: int, width: int = 80) -> Table:
    columns = COLUMNS if width >= NARROW else COLUMNS[:2]
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


def render_consolidation(sleeps: list[dict], width: int, height: int):
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
        self._drawn: tuple | None = None

    def show(self, sleeps: list[dict]) -> None:
        self.sleeps = sleeps

    def refresh_if_dirty(self) -> bool:
        if self._drawn != (len(self.sleeps), self.size):
            self.refresh()
            return True
        return False

    def render(self):
        self._drawn = (len(self.sleeps), self.size)
        return render_consolidation(self.sleeps, self.size.width, self.size.height)
