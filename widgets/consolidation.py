"""Consolidation pane: per sleep, the memory change, the importance change, the consolidation
loss and the retention probe before and after."""

from __future__ import annotations

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual.widget import Widget

from widgets import plot

COLUMNS = (  # (event field, header)
    ("memory_change", "mem Δ"),
    ("importance_change", "imp Δ"),
    ("consolidation_loss", "loss"),
)


def _short(v) -> str:
    return f"{v:.3g}" if isinstance(v, (int, float)) and not isinstance(v, bool) else plot.fmt(v)


def sleeps_table(sleeps: list[dict], rows: int) -> Table:
    table = Table(box=None, padding=(0, 1), show_edge=False, header_style="bold grey70", expand=True)
    table.add_column("sleep at", justify="right", no_wrap=True)
    for _, header in COLUMNS:
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
        table.add_row(f"{s.get('step', 0):,}", *[_short(s.get(k)) for k, _ in COLUMNS], ret)
    return table


def render_consolidation(sleeps: list[dict], width: int, height: int):
    if not sleeps:
        return Text("no sleep yet: consolidation figures appear after the first sleep", style="dim")
    table_rows = min(len(sleeps), max(1, height // 3))
    plot_h = height - table_rows - 1
    retained = [s for s in sleeps if isinstance(s.get("retention_after"), (int, float))]
    if plot_h < 8 or len(retained) < 2 or width < 30:
        return sleeps_table(sleeps, max(1, height - 1))
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
    return Group(legend, plot.to_text(fig), sleeps_table(sleeps, table_rows))


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
