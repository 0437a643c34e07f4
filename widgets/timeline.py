"""Phase timeline: which stage of the run's schedule ran when (wake, sleep, or any stage a pipeline adds),
as bands along the steps, phases begun by hand marked."""

from __future__ import annotations

import math
from dataclasses import dataclass

from rich.text import Text

from widgets.plot import short_number
from widgets.redrawn import Redrawn

WAKE_STYLE, SLEEP_STYLE, MANUAL_STYLE = "green4", "bold dodger_blue1", "bold magenta"
# glyph and style per stage; a stage the console does not know gets the next free style of OTHER_STYLES
KNOWN = {"wake": ("▁", WAKE_STYLE), "sleep": ("█", SLEEP_STYLE)}
OTHER_STYLES = ("bold dark_orange", "bold medium_purple", "bold gold1", "bold turquoise2", "bold deep_pink2")


def stage_look(stages: list[str]) -> dict[str, tuple[str, str]]:
    """Glyph and style of every stage, in order of first appearance."""
    looks, spare = {}, iter(OTHER_STYLES * 4)
    for name in stages:
        if name not in looks:
            looks[name] = KNOWN.get(name) or ("▆", next(spare, "bold white"))
    return looks


@dataclass(frozen=True)
class Band:
    start: int
    end: int  # exclusive; the current step for the open band
    phase: str  # the stage's name: "wake", "sleep", or one a pipeline adds
    manual: bool


def bands(phases: list[tuple[int, str, bool]], current_step: int, first: str = "wake") -> list[Band]:
    """[(step, phase, manual), ...] in step order -> contiguous bands up to the current step; before the first
    phase change the run's `first` stage ran (wake, or a pipeline's curriculum)."""
    out: list[Band] = []
    if not phases or phases[0][0] > 0:
        until = phases[0][0] if phases else current_step
        out.append(Band(0, until, first, False))
    for i, (step, phase, manual) in enumerate(phases):
        end = phases[i + 1][0] if i + 1 < len(phases) else max(current_step, step)
        out.append(Band(step, end, phase, manual))
    return [b for b in out if b.end > b.start or b is out[-1]]


def render_timeline(phases: list[tuple[int, str, bool]], current_step: int, width: int, first: str = "wake") -> Text:
    width = max(width, 10)
    bs = bands(phases, current_step, first)
    hi = max(current_step, bs[-1].end if bs else 0, 1)
    per_col = hi / width
    marks = [" "] * width
    cells = [first] * width
    for b in bs:
        if b.phase == "wake":
            continue
        c0 = min(width - 1, int(b.start / per_col))
        c1 = min(width - 1, max(c0, math.ceil(b.end / per_col) - 1))  # up to where the next band begins
        for c in range(c0, c1 + 1):
            cells[c] = b.phase  # any other stage in a column shows, however short
        if b.manual:
            marks[c0] = "▼"
    looks = stage_look([first] + [b.phase for b in bs])
    text = Text(no_wrap=True, end="")
    text.append("".join(marks) + "\n", style=MANUAL_STYLE)
    run_start = 0
    for c in range(1, width + 1):
        if c == width or cells[c] != cells[run_start]:
            glyph, style = looks[cells[run_start]]
            text.append(glyph * (c - run_start), style=style)
            run_start = c
    left, right = "0", f"step {short_number(hi)}"
    text.append("\n" + left + " " * max(1, width - len(left) - len(right)) + right + "\n", style="grey50")
    sleeps = [b for b in bs if b.phase == "sleep"]
    manual = sum(b.manual for b in sleeps)
    now = bs[-1] if bs else None
    for name, (glyph, style) in looks.items():
        text.append(f"{glyph} {name} ", style=style)
    text.append("▼ manual", style=MANUAL_STYLE)
    if first == "wake" or sleeps:  # a pipeline's runs have no sleeps to count
        text.append(f"   {len(sleeps)} sleeps ({manual} manual)", style="grey70")
    if now is not None and phases:
        text.append(f" · now {now.phase} since step {now.start:,}", style="bold")
    return text


class PhaseTimeline(Redrawn):
    DEFAULT_CSS = "PhaseTimeline { height: 4; }"

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.phases: list[tuple[int, str, bool]] = []
        self.current_step = 0
        self.first = "wake"  # the stage that ran before the first phase change

    def show(self, phases: list[tuple[int, str, bool]], current_step: int, first: str = "wake") -> None:
        if len(phases) != len(self.phases) or current_step != self.current_step or first != self.first:
            self.phases, self.current_step, self.first = list(phases), current_step, first
            self.changed()

    def draw(self) -> Text:
        return render_timeline(self.phases, self.current_step, self.size.width, self.first)
