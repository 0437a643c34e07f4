"""Curriculum pane: remaining questions per level over the steps, and the latest items with
their pass, fail and hint counts."""

from __future__ import annotations

from collections import deque

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual.widget import Widget

from widgets import plot
from widgets.curves import Series, downsample_minmax


def _count(item: dict, *names: str) -> int | None:
    for n in names:
        v = item.get(n)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return int(v)
    return None


class CurriculumHistory:
    """What the curriculum events said so far: remaining per level as series, the latest items."""

    def __init__(self, keep_items: int = 64):
        self.remaining: dict[int, Series] = {}
        self.level: int | None = None
        self.items: deque[dict] = deque(maxlen=keep_items)
        self.version = 0

    def add(self, step: int, data: dict) -> None:
        level = data.get("level")
        if isinstance(level, int):
            self.level = level
        remaining = data.get("remaining")
        if isinstance(remaining, dict):  # {level: remaining} for every level
            pairs = [(int(k), v) for k, v in remaining.items() if str(k).lstrip("-").isdigit()]
        else:
            pairs = [(self.level if self.level is not None else 0, remaining)]
        for lvl, v in pairs:
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                s = self.remaining.setdefault(lvl, Series())
                if s.last_step is None or step > s.last_step:
                    s.append(step, float(v))
                elif step == s.last_step:
                    s.set_last(float(v))  # the last change in a step wins
        item = data.get("item")
        if isinstance(item, dict):
            self.items.append({"step": step, "level": self.level, **item})
        self.version += 1


def items_table(items: list[dict], rows: int) -> Table:
    table = Table(box=None, padding=(0, 1), show_edge=False, header_style="bold grey70", expand=True)
    table.add_column("item", no_wrap=True, overflow="ellipsis", ratio=1)
    table.add_column("lvl", justify="right", no_wrap=True)
    table.add_column("pass", justify="right", style="green", no_wrap=True)
    table.add_column("fail", justify="right", style="red", no_wrap=True)
    table.add_column("hint", justify="right", style="yellow", no_wrap=True)
    for it in list(items)[-rows:][::-1]:  # newest first
        name = it.get("id", it.get("name", it.get("text", "?")))
        table.add_row(
            str(name), "" if it.get("level") is None else str(it["level"]),
            *[str(c) if c is not None else "—" for c in (
                _count(it, "pass", "passes", "passed"), _count(it, "fail", "fails", "failed"),
                _count(it, "hint", "hints"))],
        )
    return table


def render_curriculum(history: CurriculumHistory, width: int, height: int):
    if not history.remaining and not history.items:
        return Text("no curriculum events: this run samples its task uniformly", style="dim")
    item_rows = min(len(history.items), max(2, height // 4)) if history.items else 0
    plot_h = height - item_rows - (1 if item_rows else 0)
    parts = []
    if history.remaining and plot_h >= 7 and width >= 30:
        # a legend line of our own: plotext's legend box sits on top of the curves
        legend = Text("remaining per level ", style="bold", no_wrap=True, overflow="ellipsis")
        fig = plot.figure(width, plot_h - 1)
        lo, hi = min(s.steps[0] for s in history.remaining.values() if s), max(s.steps[-1] for s in history.remaining.values() if s)
        for lvl, s in sorted(history.remaining.items()):
            color = plot.LEVEL_COLORS[lvl % len(plot.LEVEL_COLORS)]
            plot.line(fig, *downsample_minmax(s, max(8, width - 12)), color)
            legend.append(f" ━ L{lvl}", style=f"color({color})")
        plot.step_ticks(fig, lo, hi, max(2, width // 12))
        cur = history.remaining.get(history.level)
        if cur is not None and cur.last is not None:
            legend.append(f"   level {history.level}: {cur.last:,.0f} left", style="bold")
        parts += [legend, plot.to_text(fig)]
    elif history.remaining:
        cur = history.remaining.get(history.level)
        parts.append(Text(f"level {history.level}: {cur.last:,.0f} remaining" if cur and cur.last is not None else "", style="bold"))
    if item_rows:
        parts.append(items_table(list(history.items), item_rows))
    return Group(*parts)


class CurriculumQueue(Widget):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.history = CurriculumHistory()
        self._drawn: tuple | None = None

    def show(self, history: CurriculumHistory) -> None:
        self.history = history

    def refresh_if_dirty(self) -> bool:
        if self._drawn != (self.history.version, self.size):
            self.refresh()
            return True
        return False

    def render(self):
        self._drawn = (self.history.version, self.size)
        return render_curriculum(self.history, self.size.width, self.size.height)
