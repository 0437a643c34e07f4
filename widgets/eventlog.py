"""Event log: commands and their acknowledgements, phases, checkpoints, alerts, status changes."""

from __future__ import annotations

import time

from rich.text import Text
from textual.widgets import RichLog

STYLES = {
    "command": "cyan",
    "ack": "green",
    "nack": "red",
    "alert": "bold red",
    "warning": "yellow",
    "checkpoint": "magenta",
    "phase": "dodger_blue1",
    "status": "bold",
    "info": "grey70",
}


def log_line(at: float | None, step: int | None, kind: str, message: str) -> Text:
    clock = time.strftime("%H:%M:%S", time.localtime(at)) if at else "--:--:--"
    text = Text(no_wrap=True, end="")
    text.append(f"{clock} ", style="grey50")
    text.append(f"{step:>9,} " if step is not None else " " * 10, style="grey50")
    text.append(message, style=STYLES.get(kind, ""))
    return text


class EventLog(RichLog):
    """Newest line last; keeps the last 2,000 lines."""

    def __init__(self, **kwargs):
        super().__init__(max_lines=2000, wrap=False, markup=False, highlight=False, auto_scroll=True, **kwargs)
        self.lines_written: list[str] = []  # plain text of what was written, newest last (for tests and copy)

    def add(self, kind: str, message: str, step: int | None = None, at: float | None = None) -> None:
        line = log_line(at, step, kind, message)
        self.lines_written.append(line.plain)
        del self.lines_written[:-2000]
        self.write(line)
