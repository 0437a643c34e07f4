"""Carry view: what the recursive state of one slot looks like right now.

Per-cycle norms of z_H and z_L by position as heatmaps (rows: cycles, columns: positions),
the change between cycles, q_halt per supervision step, steps used, and, when the model has a
neural memory, how far each block's fast weights moved in each cycle and the surprise
(momentum) they carry after it. Input: the engine's carry snapshot (engine.protocol's
EVENT_DATA["carry"] names its keys).
"""

from __future__ import annotations

from rich.console import Group
from rich.style import Style
from rich.table import Table
from rich.text import Text
from textual.widgets import Static

from widgets.plot import fmt

# viridis, sampled: dark blue (low) to yellow (high)
_STOPS = [(68, 1, 84), (72, 40, 120), (62, 74, 137), (49, 104, 142), (38, 130, 142),
          (31, 158, 137), (53, 183, 121), (109, 205, 89), (180, 222, 44), (253, 231, 37)]
_RAMP = [Style(color=f"rgb({r},{g},{b})") for r, g, b in _STOPS]
SPARK = "▁▂▃▄▅▆▇█"


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v


def _matrix(v) -> list[list[float]] | None:
    if isinstance(v, list) and v and all(isinstance(r, list) for r in v):
        return [[float(x) if _is_num(x) else 0.0 for x in r] for r in v]
    return None


def _numbers(v) -> list[float] | None:
    if isinstance(v, list) and v and all(_is_num(x) for x in v):
        return [float(x) for x in v]
    return None


def _squeeze(row: list[float], width: int) -> list[float]:
    """At most `width` cells; each keeps the largest value it covers so a hot position survives."""
    if len(row) <= width:
        return row
    per = len(row) / width
    return [max(row[int(i * per) : max(int(i * per) + 1, int((i + 1) * per))]) for i in range(width)]


def heatmap(matrix: list[list[float]], width: int, label: str) -> Text:
    """Rows of colored cells on one shared scale, with the scale printed under them."""
    lo = min(min(r) for r in matrix if r)
    hi = max(max(r) for r in matrix if r)
    span = (hi - lo) or 1.0
    text = Text(no_wrap=True, end="")
    cells_w = max(4, width - len(label) - 4)
    n = max(len(r) for r in matrix)
    cell = "█" * max(1, min(4, cells_w // max(1, n)))  # short rows get wider cells
    for c, row in enumerate(matrix):
        text.append(f"{label}{c + 1:<3}", style="grey70")
        for v in _squeeze(row, cells_w):
            text.append(cell, _RAMP[min(len(_RAMP) - 1, int((v - lo) / span * len(_RAMP)))])
        text.append("\n")
    text.append(" " * (len(label) + 3), style="grey50")
    if hi == lo:  # a ramp from 8 to 8 says nothing
        text.append(f"every cell {lo:.5g}", style="grey50")
    else:
        text.append(f"{lo:.5g} ", style="grey50")
        for s in _RAMP:
            text.append("█", s)
        text.append(f" {hi:.5g}", style="grey50")
    text.append(f"   positions 1–{max(len(r) for r in matrix)}", style="grey50")
    return text


def _readable(key: str) -> str:
    """z_H_position_change -> "z_H position change": the state's own name stays as the code spells it."""
    head = key[:3] if key[:3] in ("z_H", "z_L") else ""
    return head + key[len(head):].replace("_", " ")


def sparkline(values: list[float]) -> Text:
    lo, hi = min(values), max(values)
    span = (hi - lo) or 1.0
    return Text("".join(SPARK[min(7, int((v - lo) / span * 8))] for v in values), style="cyan")


def _figures(v) -> Text:
    nums = _numbers(v)
    if nums is not None:
        t = sparkline(nums) if len(nums) > 1 else Text()
        t.append("  " + " ".join(fmt(x) for x in nums[:12]) + (" …" if len(nums) > 12 else ""))
        return t
    m = _matrix(v)
    if m is not None:
        return Text(f"{len(m)}×{len(m[0])} values, mean {fmt(sum(map(sum, m)) / max(1, sum(map(len, m))))}")
    return Text(fmt(v) if _is_num(v) else str(v))


MEMORY_KEYS = {"memory_change": "‖ΔW‖ fast weights moved", "memory_surprise": "‖S‖ surprise after"}


def memory_table(snapshot: dict) -> Table | None:
    """One row per cycle: how far each block's fast weights moved in it, and its momentum (surprise) after it."""
    rows = {k: _matrix(snapshot.get(k)) for k in MEMORY_KEYS}
    n = max((len(m) for m in rows.values() if m is not None), default=0)
    if not n:
        return None
    table = Table(box=None, padding=(0, 2), pad_edge=False, show_edge=False, header_style="grey70")
    table.add_column("cycle", style="grey70", no_wrap=True)
    for key, header in MEMORY_KEYS.items():
        table.add_column(header, no_wrap=True)
    for c in range(n):
        cells = []
        for key in MEMORY_KEYS:
            m = rows[key]
            row = m[c] if m is not None and c < len(m) else []
            cells.append(" ".join(f"{fmt(v):>7}" for v in row[:8]) + (" …" if len(row) > 8 else "") if row else "—")
        table.add_row(str(c + 1), *cells)
    return table


def _grid(snapshot: dict) -> Text | None:
    """Inputs, prediction and target side by side when the task is a square grid of digit tokens
    (token 1 is a blank, token t >= 2 is the digit t - 1); wrong predicted cells in red."""
    inputs, preds, labels = (snapshot.get(k) for k in ("inputs", "preds", "labels"))
    if not all(isinstance(v, list) for v in (inputs, preds, labels)) or not len(inputs) == len(preds) == len(labels):
        return None
    side = int(round(len(labels) ** 0.5))
    if side * side != len(labels) or side < 2 or not all(isinstance(t, int) and 0 <= t <= 10 for t in inputs + preds + labels):
        return None

    def cell(t: int) -> str:
        return "." if t <= 1 else str(t - 1)

    right = sum(p == l for p, l in zip(preds, labels))
    text = Text(f"\nprediction: {right}/{len(labels)} cells right\n", style="bold")
    w = max(2 * side + 2, 12)
    text.append(f"{'input':<{w}}{'prediction':<{w}}target\n", style="grey70")
    for r in range(side):
        row = range(r * side, (r + 1) * side)
        text.append(f"{' '.join(cell(inputs[i]) for i in row):<{w}}", style="grey70")
        for i in row:
            text.append(cell(preds[i]) + " ", style="green" if preds[i] == labels[i] else "bold red")
        text.append(" " * (w - 2 * side) + " ".join(cell(labels[i]) for i in row) + "\n", style="grey70")
    return text


def render_carry(snapshot: dict | None, width: int):
    if not snapshot:
        return Text("no carry snapshot yet: press r (or F5) to ask the engine for one", style="dim")
    parts = []
    head = Text()
    for name, label in (("slot", "slot"), ("steps", "steps used"), ("max_steps", "of"), ("halted", "halted")):
        if snapshot.get(name) is not None:
            head.append(f"{label} ", style="grey70")
            head.append(f"{_figures(snapshot[name]).plain}   ", style="bold")
    shapes = snapshot.get("shapes")
    if isinstance(shapes, dict):
        head.append("shapes ", style="grey70")
        head.append("  ".join(f"{k} {tuple(v) if isinstance(v, list) else v}" for k, v in shapes.items()))
    parts.append(head)
    for key, label in (("z_H_norms", "H c"), ("z_L_norms", "L c")):
        m = _matrix(snapshot.get(key))
        if m is not None:
            parts.append(Text(f"\n‖{key[:3]}‖ per position, one row per cycle (c1: the starting state)", style="bold"))
            parts.append(heatmap(m, width, label))
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold grey70", no_wrap=True)
    table.add_column()
    for key in [k for k in snapshot if (k.endswith("_change") or k == "cycle_deltas") and k not in MEMORY_KEYS]:
        m = _matrix(snapshot[key])
        if m is not None:
            parts.append(Text(f"\n{_readable(key)}, per position", style="bold"))
            parts.append(heatmap(m, width, "Δ c"))
        else:
            table.add_row(f"{_readable(key)} between cycles", _figures(snapshot[key]))
    for key, label in (("q_halt", "q_halt (halt logit) now"), ("next_q_halt", "q_halt after the next step")):
        if snapshot.get(key) is not None:
            table.add_row(label, _figures(snapshot[key]))
    if table.row_count:
        parts.append(Text(""))
        parts.append(table)
    memory = memory_table(snapshot)
    if memory is not None:
        parts += [Text("\nmemory, per cycle of the replayed step (one figure per block)", style="bold"), memory]
    grid = _grid(snapshot)
    if grid is not None:
        parts.append(grid)
    return Group(*parts)


class CarryView(Static):
    def __init__(self, **kwargs):
        super().__init__(render_carry(None, 80), **kwargs)
        self.snapshot: dict | None = None

    def show(self, snapshot: dict | None) -> None:
        self.snapshot = snapshot
        self.update(render_carry(snapshot, self.size.width or 80))

    def on_resize(self) -> None:
        self.update(render_carry(self.snapshot, self.size.width or 80))
