"""The level pipeline's strip: level k of n, the stages of a level with the running one lit, its progress, and
the questions left in the level's queue. Fed the latest "pipeline" event's data (engine/protocol.py's
PIPELINE_POSITION); hidden while the run has no pipeline."""

from __future__ import annotations

from rich.text import Text

from widgets.redrawn import Redrawn

DONE_STYLE, NOW_STYLE, LATER_STYLE, BAR_STYLE = "green4", "bold reverse dark_orange", "grey50", "dark_orange"


def progress_bar(fraction: float, width: int) -> str:
    full = round(max(0.0, min(1.0, fraction)) * width)
    return "█" * full + "░" * (width - full)


def render_strip(position: dict | None, width: int) -> Text:
    text = Text(no_wrap=True, overflow="ellipsis", end="")
    if not position:
        text.append("no level pipeline in this run", style=LATER_STYLE)
        return text
    stages, stage = list(position.get("stages") or []), position.get("stage", "?")
    now = stages.index(stage) if stage in stages else -1
    text.append(f"level {position.get('level', '?')} of {position.get('levels', '?')}", style="bold")
    text.append(" │ ", style=LATER_STYLE)
    for i, name in enumerate(stages):
        if i:
            text.append(" ▸ ", style=LATER_STYLE)
        if i < now:
            text.append(f"✓ {name}", style=DONE_STYLE)
        else:
            text.append(f" {name} " if i == now else name, style=NOW_STYLE if i == now else LATER_STYLE)
    if now < 0:
        text.append(f"  {stage}", style=NOW_STYLE)
    fraction = float(position.get("progress") or 0.0)
    questions = f" │ {position.get('questions_left', 0):,} of {position.get('questions', 0):,} questions left"
    steps = f"  step {position.get('steps', 0):,}"
    room = width - text.cell_len - 3 - 5 - len(questions)  # 3: the separator, 5: the percentage
    if room - len(steps) < 4:
        steps = ""  # a narrow pane keeps the bar and the questions
    bar = max(4, min(30, room - len(steps)))
    text.append(" │ ", style=LATER_STYLE)
    text.append(progress_bar(fraction, bar), style=BAR_STYLE)
    text.append(f" {fraction:4.0%}{steps}{questions}")
    return text


class PipelineStrip(Redrawn):
    DEFAULT_CSS = "PipelineStrip { height: 1; }"

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.position: dict | None = None

    def show(self, position: dict | None) -> None:
        if position != self.position:
            self.position = dict(position) if position else None
            self.changed()

    def draw(self) -> Text:
        return render_strip(self.position, self.size.width)
