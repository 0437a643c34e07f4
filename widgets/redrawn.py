"""A pane that redraws only when what it shows has changed (the console polls every pane several times a second)."""

from __future__ import annotations

from rich.text import Text
from textual.widget import Widget


class Redrawn(Widget):
    """Subclasses call `changed()` when their data moves and write `draw()`; `refresh_if_dirty()` refreshes once per
    change."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.version = 0
        self._drawn = -1

    def changed(self) -> None:
        self.version += 1

    def refresh_if_dirty(self) -> bool:
        if self.version != self._drawn:
            self.refresh()
            return True
        return False

    def render(self) -> Text:
        self._drawn = self.version
        return self.draw()

    def draw(self) -> Text:
        raise NotImplementedError
