"""Training curves: metric series, min/max downsampling to the pane's width, EMA smoothing,
and the pane that draws the series chosen from a list.

A run of a million steps is drawn from a few hundred points: each character column keeps the
smallest and the largest value of the steps it covers (so spikes survive), and the first and
last points are always kept. Per-block extremes are kept as points arrive, so a redraw reads
about n / BLOCK summaries instead of every point.
"""

from __future__ import annotations

import numpy as np
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widget import Widget
from textual.widgets import SelectionList
from textual.widgets.selection_list import Selection

from widgets import plot

BLOCK = 64  # points per precomputed min/max summary
SMOOTHING_STEPS = (0.0, 0.6, 0.9, 0.99)  # EMA weights the smoothing key cycles through
PIPELINE_CURVES = ("bake_kl", "selfmodel/ece")  # a level pipeline's baking KL and self-model calibration


class Series:
    """One metric's history: steps and finite values, in arrival order."""

    __slots__ = ("steps", "values", "_min_at", "_min_of", "_max_at", "_max_of", "_ema_weight", "_ema")

    def __init__(self, steps=(), values=()):
        self.steps: list[int] = []
        self.values: list[float] = []
        # per full block: where its smallest / largest value is, and that value (kept apart so
        # min() over a run of blocks runs in C)
        self._min_at: list[int] = []
        self._min_of: list[float] = []
        self._max_at: list[int] = []
        self._max_of: list[float] = []
        self._ema_weight: float | None = None
        self._ema: Series | None = None  # kept in step with appends so a redraw never re-smooths
        self.extend(steps, values)

    def __len__(self) -> int:
        return len(self.values)

    @property
    def last_step(self) -> int | None:
        return self.steps[-1] if self.steps else None

    @property
    def last(self) -> float | None:
        return self.values[-1] if self.values else None

    def append(self, step: int, value: float) -> None:
        self.steps.append(step)
        self.values.append(value)
        if len(self.values) % BLOCK == 0:
            self._close_blocks()
        if self._ema is not None:
            prev = self._ema.values[-1] if self._ema.values else value
            self._ema.append(step, prev + (1.0 - self._ema_weight) * (value - prev))

    def set_last(self, value: float) -> None:
        """Replace the last value (a later report of the same step wins), keeping summaries true."""
        step = self._drop_last()
        self.append(step, value)

    def _drop_last(self) -> int:
        step = self.steps.pop()
        self.values.pop()
        if len(self._min_at) * BLOCK > len(self.values):  # the last block lost its end
            for summary in (self._min_at, self._min_of, self._max_at, self._max_of):
                summary.pop()
        if self._ema is not None:
            self._ema._drop_last()
        return step

    def extend(self, steps, values) -> None:
        steps, values = list(steps), list(values)
        assert len(steps) == len(values)
        if not steps:
            return
        self.steps.extend(steps)
        self.values.extend(values)
        self._close_blocks()
        if self._ema is not None:
            self._ema.extend(steps, _ema(values, self._ema_weight, self._ema.last))

    def _close_blocks(self) -> None:
        v = self.values
        for b in range(len(self._min_at), len(v) // BLOCK):
            lo = b * BLOCK
            chunk = v[lo : lo + BLOCK]
            small, large = min(chunk), max(chunk)
            self._min_at.append(lo + chunk.index(small))
            self._min_of.append(small)
            self._max_at.append(lo + chunk.index(large))
            self._max_of.append(large)

    def smoothed(self, weight: float) -> "Series":
        """The EMA of this series (weight 0.9: each point keeps 90% of the previous average)."""
        if weight <= 0:
            return self
        if self._ema is None or self._ema_weight != weight:
            self._ema_weight = weight
            self._ema = Series(self.steps, _ema(self.values, weight, None))
        return self._ema

    def extremes(self, lo: int, hi: int) -> tuple[int, int]:
        """Indices of the smallest and largest value in [lo, hi), reading block summaries where whole blocks fit."""
        v = self.values
        b_lo, b_hi = -(-lo // BLOCK), hi // BLOCK
        if b_lo >= b_hi:
            chunk = v[lo:hi]
            return lo + chunk.index(min(chunk)), lo + chunk.index(max(chunk))
        mins, maxs = self._min_of[b_lo:b_hi], self._max_of[b_lo:b_hi]
        small, large = min(mins), max(maxs)
        i_min = self._min_at[b_lo + mins.index(small)]
        i_max = self._max_at[b_lo + maxs.index(large)]
        for a, b in ((lo, b_lo * BLOCK), (b_hi * BLOCK, hi)):  # the partial blocks at the edges
            if a < b:
                chunk = v[a:b]
                c_small, c_large = min(chunk), max(chunk)
                if c_small < small or (c_small == small and a + chunk.index(c_small) < i_min):
                    small, i_min = c_small, a + chunk.index(c_small)
                if c_large > large or (c_large == large and a + chunk.index(c_large) < i_max):
                    large, i_max = c_large, a + chunk.index(c_large)
        return i_min, i_max


def _ema(values: list[float], weight: float, start: float | None) -> list[float]:
    """m[k] = weight * m[k-1] + (1 - weight) * values[k], from m[-1] = start (or the first value).

    Vectorised as a prefix scan by doubling: after the pass with stride d, every point holds the
    sum of its last 2d weighted inputs; strides stop once weight**d is below a float's resolution.
    Every factor is <= 1, so nothing overflows (a closed form with weight**-k would).
    """
    if not values:
        return []
    alpha = 1.0 - weight
    x = np.fromiter(values, np.float64, len(values))
    m = alpha * x  # (n,)
    if start is None:
        m[0] = x[0]
    else:
        m[0] += weight * start
    decay, d = weight, 1
    while d < len(m) and decay > 1e-18:
        m[d:] = m[d:] + decay * m[:-d]  # the right side is read before it is written
        decay, d = decay * decay, d * 2
    return m.tolist()


def bucket_bounds(n: int, buckets: int) -> list[tuple[int, int]]:
    """The [lo, hi) index ranges that split points 1 .. n-2 into at most `buckets` buckets.

    Over long series a bucket is a whole run of blocks (the last one also takes the unfinished
    tail), so its extremes come from block summaries alone and stay put as points arrive.
    """
    blocks = n // BLOCK
    if blocks >= 2 * buckets:
        step = -(-blocks // buckets) * BLOCK  # points per bucket, whole blocks
        edges = list(range(0, blocks * BLOCK, step))[1:]
        return list(zip([1] + edges, edges + [n - 1]))
    width = (n - 2) / buckets
    bounds = ((1 + int(b * width), 1 + int((b + 1) * width)) for b in range(buckets))
    return [(lo, hi) for lo, hi in bounds if hi > lo]


def downsample_minmax(series: Series, buckets: int) -> tuple[list[int], list[float]]:
    """At most 2 * buckets + 2 points: the first, per bucket its min and max in step order, the last."""
    n = len(series)
    if n <= 2 * buckets + 2:
        return list(series.steps), list(series.values)
    xs, ys = series.steps, series.values
    keep = [0]
    for lo, hi in bucket_bounds(n, buckets):
        i_min, i_max = series.extremes(lo, hi)
        keep.extend(sorted({i_min, i_max}))  # step order; one point when both are the same
    keep.append(n - 1)
    return [xs[i] for i in keep], [ys[i] for i in keep]


def default_keys(keys: list[str], limit: int = 3) -> list[str]:
    """The series a new pane shows first: the loss, an exact accuracy, the learning rate (a level pipeline: the
    baking KL and the self-model's calibration error instead)."""
    picked: list[str] = []
    names = {k: k.lower().rsplit("/", 1)[-1] for k in keys if not k.startswith("sys/")}
    for want in ("loss", "exact", "lr", "acc"):
        exact = [k for k, n in names.items() if n == want]
        near = sorted((k for k, n in names.items() if want in n), key=lambda k: (len(names[k]), k))
        for k in exact + near:  # `loss` before `halt_loss`, `exact_acc` before `eval_exact_acc`
            if k not in picked:
                picked.append(k)
                break
    if len(picked) < limit:
        picked += [k for k in names if k not in picked][: limit - len(picked)]
    staged = [k for k in PIPELINE_CURVES if k in keys]
    if staged:  # a level pipeline, once its stages have sent them: in place of the learning rate, one more plot
        return picked[:2] + staged
    return picked[:limit]


RunSeries = tuple[str, dict[str, Series]]  # (label, {key: series}) for one run


def drop_flat_runs(xs: list, ys: list, lo: float, hi: float, levels: int) -> tuple[list, list]:
    """Drop points that fall on the same dot row as both neighbours: the line through their
    neighbours draws the same dots, and plotext's cost grows with every point it is given."""
    if hi <= lo or len(ys) < 3:
        return xs, ys
    scale = (levels - 1) / (hi - lo)
    q = [round((y - lo) * scale) for y in ys]
    keep = [0] + [i for i in range(1, len(q) - 1) if not (q[i - 1] == q[i] == q[i + 1])] + [len(q) - 1]
    return [xs[i] for i in keep], [ys[i] for i in keep]


def render_curves(runs: list[RunSeries], keys: list[str], width: int, height: int,
                  smoothing: float = 0.0) -> Text:
    """One stacked plot per key (as many as fit at 7 rows each), every run overlaid."""
    if width < 20 or height < 5:
        return Text("(too small to plot)", style="dim")
    present = [k for k in keys if any(len(s.get(k, ())) for _, s in runs)]
    if not present:
        return Text("waiting for metrics…" if keys else "no series selected", style="dim")
    compare = len(runs) > 1
    legend = None
    if compare:  # a legend line of our own: plotext's legend box would sit on top of the curves' start
        legend = Text("runs ", style="bold", no_wrap=True, overflow="ellipsis")
        for i, (label, _) in enumerate(runs):
            legend.append(f" ━ {label}", style=f"color({plot.RUN_COLORS[i % len(plot.RUN_COLORS)][0]})")
        height -= 1
    rows = max(1, min(len(present), height // 7))
    shown = present[:rows]
    fig = plot.figure(width, height, rows)
    buckets = max(8, width - 12)  # ~ one per canvas column; braille draws two dots per column
    levels = 4 * (height // rows)  # braille dot rows, a little generous
    for r, key in enumerate(shown):
        sub = fig.subplot(r + 1, 1) if rows > 1 else fig
        title = key
        lines = []  # (xs, ys, color, label, connected)
        for i, (label, series) in enumerate(runs):
            s = series.get(key)
            if not s:
                continue
            bright, dim = plot.RUN_COLORS[i % len(plot.RUN_COLORS)]
            smooth = s.smoothed(smoothing)
            if smoothing > 0:
                # the raw series as a dim cloud of its extremes under the smooth line; dots, not
                # strokes, so the spikes stay visible and the plot costs half as much
                lines.append((*downsample_minmax(s, buckets), dim, None, False))
            lines.append((*downsample_minmax(smooth, buckets), bright, None, True))
            if not compare:
                title = f"{key}  {plot.fmt(s.last)}" + (f"  (ema {plot.fmt(smooth.last)})" if smoothing > 0 else "")
        lo = min(min(ys) for _, ys, *_ in lines)
        hi = max(max(ys) for _, ys, *_ in lines)
        for xs, ys, color, label, connected in lines:
            if connected:
                xs, ys = drop_flat_runs(xs, ys, lo, hi, levels)
            plot.line(sub, xs, ys, color, label, lines=connected)
        if hi == lo:  # a flat series: plotext would centre it on a made-up range, below 0 for a zero accuracy
            pad = abs(lo) / 2 or 1.0
            lo, hi = (max(0.0, lo - pad) if lo >= 0 else lo - pad), hi + pad
        sub.ruler("y").lim(lo, hi)
        sub.title(title)
        plot.step_ticks(sub, min(xs[0] for xs, *_ in lines), max(xs[-1] for xs, *_ in lines), max(2, width // 14))
    text = plot.to_text(fig)
    if legend is not None:
        text = Text("\n").join([legend, text])
    if len(present) > rows:
        text.append(f"\n+{len(present) - rows} more selected; enlarge the pane to see them", style="dim")
    return text


class CurvesPlot(Widget):
    """The plot area. Redraws only when `mark_dirty` was called and the screen asks (at most 2 Hz)."""

    DEFAULT_CSS = "CurvesPlot { width: 1fr; height: 1fr; }"

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.runs: list[RunSeries] = []
        self.keys: list[str] = []
        self.smoothing = 0.0
        self.version = 0  # bumped by mark_dirty; the cached text knows the version it drew
        self._drawn_version = -1
        self._cache: tuple[tuple, Text] | None = None

    def mark_dirty(self) -> None:
        self.version += 1

    def refresh_if_dirty(self) -> bool:
        if self.version != self._drawn_version:
            self.refresh()
            return True
        return False

    def render(self) -> Text:
        w, h = self.size
        sig = (self.version, w, h, tuple(self.keys), self.smoothing)
        if self._cache is None or self._cache[0] != sig:
            self._cache = (sig, render_curves(self.runs, self.keys, w, h, self.smoothing))
            self._drawn_version = self.version
        return self._cache[1]


class CurvesPane(Horizontal):
    """Series list on the left (space toggles a series), plot on the right."""

    DEFAULT_CSS = """
    CurvesPane SelectionList { width: 24; height: 1fr; border: none; padding: 0; }
    CurvesPane.-no-list SelectionList { display: none; }
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.plot = CurvesPlot()
        self._known: set[str] = set()
        self._user_picked = False

    def compose(self) -> ComposeResult:
        yield SelectionList[str](id="series-list")
        yield self.plot

    @property
    def smoothing(self) -> float:
        return self.plot.smoothing

    def set_runs(self, runs: list[RunSeries]) -> None:
        """Show these runs' series; new keys join the list (and the default picks, until the user picks)."""
        self.plot.runs = runs
        keys = sorted({k for _, series in runs for k in series})
        new = [k for k in keys if k not in self._known]
        if new:
            self._known.update(new)
            if not self._user_picked:
                self.plot.keys = default_keys(keys)
            picker = self.query_one(SelectionList)
            picker.clear_options()
            picker.add_options([Selection(k, k, k in self.plot.keys) for k in keys])
        self.plot.mark_dirty()

    def select(self, keys: list[str]) -> None:
        self._user_picked = True
        self.plot.keys = list(keys)
        picker = self.query_one(SelectionList)
        picker.deselect_all()
        for k in keys:
            if k in self._known:
                picker.select(k)
        self.plot.mark_dirty()

    def cycle_smoothing(self) -> float:
        i = SMOOTHING_STEPS.index(self.plot.smoothing) if self.plot.smoothing in SMOOTHING_STEPS else 0
        self.plot.smoothing = SMOOTHING_STEPS[(i + 1) % len(SMOOTHING_STEPS)]
        self.plot.mark_dirty()
        self.plot.refresh()
        return self.plot.smoothing

    def data_changed(self) -> None:
        self.plot.mark_dirty()

    def refresh_if_dirty(self) -> bool:
        return self.plot.refresh_if_dirty()

    def on_selection_list_selected_changed(self, event: SelectionList.SelectedChanged) -> None:
        event.stop()
        chosen = list(event.selection_list.selected)
        if set(chosen) == set(self.plot.keys):
            return
        self._user_picked = True
        # keep the order of the list, so the stacked plots do not jump around
        self.plot.keys = [k for k in sorted(self._known) if k in chosen]
        self.plot.mark_dirty()
        self.plot.refresh()
