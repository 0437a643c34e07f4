"""Small modal screens: the key help and the stop confirmation."""

from __future__ import annotations

from rich.table import Table
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Static

KEYS = [
    ("space", "pause / resume the run"),
    ("s", "sleep now (a consolidation phase)"),
    ("c", "save a checkpoint"),
    ("i", "carry inspector (and probes)"),
    ("x", "stop the run (asks first)"),
    ("q", "leave the console; the run goes on"),
    ("r", "runs browser: open, attach, compare"),
    ("e", "cycle curve smoothing (EMA off, 0.6, 0.9, 0.99)"),
    ("k", "show / hide the series list"),
    ("?", "this help"),
    ("ctrl+p", "command palette: every action above by name"),
]


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,question_mark,q", "dismiss", "close")]

    def compose(self) -> ComposeResult:
        table = Table(box=None, show_header=False, padding=(0, 2))
        table.add_column(style="bold cyan", no_wrap=True)
        table.add_column()
        for key, what in KEYS:
            table.add_row(key, what)
        with Vertical(id="dialog"):
            yield Static("[b]Keys[/b]  (every command shows as pending until the engine names the step it was applied at)",
                         classes="dialog-title")
            yield Static(table)
            yield Static("[dim]escape closes[/dim]")

    def action_dismiss(self) -> None:
        self.dismiss(None)


class ConfirmScreen(ModalScreen[bool]):
    """Yes / no; y or enter confirms, n or escape cancels."""

    BINDINGS = [Binding("y", "answer(True)", "yes"), Binding("n,escape", "answer(False)", "no")]

    def __init__(self, question: str, yes: str = "Yes", no: str = "Cancel"):
        super().__init__()
        self.question, self.yes, self.no = question, yes, no

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Static(self.question, classes="dialog-title")
            with Horizontal(classes="buttons"):
                yield Button(f"{self.yes} [y]", variant="error", id="yes")
                yield Button(f"{self.no} [n]", id="no")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, answer: bool) -> None:
        self.dismiss(answer)
