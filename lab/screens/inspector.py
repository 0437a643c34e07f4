"""Carry inspector: one slot's recursive state on demand, and a probe box.

The probe runs the model statefully: the carry it leaves is kept for the next probe until
the user ticks "reset carry" (the engine's `probe` command with `reset`).
"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.screen import Screen
from textual.widgets import Button, Checkbox, Footer, Input, Label, Static

from lab.client import PendingCommand
from widgets.carry import CarryView


class CarryInspectorScreen(Screen):
    BINDINGS = [
        Binding("escape,i", "back", "back"),
        Binding("f5,ctrl+r", "refresh", "refresh"),
        Binding("r", "refresh", "refresh", show=False),
    ]

    def __init__(self, dashboard):
        super().__init__()
        self.dashboard = dashboard  # sends the commands and holds the run's state
        self.shown: dict | None = None
        self._seen_state_carry: dict | None = None
        self.probes_since_reset = 0

    def compose(self) -> ComposeResult:
        yield Static(id="inspector-title")
        with Horizontal(id="inspector-controls"):
            yield Label("slot")
            yield Input("0", type="integer", id="slot")
            yield Button("Refresh (F5)", id="refresh", variant="primary")
            yield Static(id="inspect-status")
        with VerticalScroll(id="carry-scroll"):
            yield CarryView(id="carry")
        with Horizontal(id="probe-controls"):
            yield Input(placeholder="probe: a puzzle line 1.3..2.4... or, for a text model, a question", id="probe-input")
            yield Checkbox("reset carry first", id="probe-reset")
            yield Button("Probe", id="probe")
        yield Static(id="probe-answer")
        yield Footer()

    def on_mount(self) -> None:
        run = self.dashboard.state
        self.query_one("#inspector-title", Static).update(
            f"[b]Carry inspector[/b]  run {run.run_id}  ·  escape returns to the dashboard")
        self.query_one("#probe-answer", Static).update("[dim]answers appear here; the carry is kept across probes "
                                                       "until you reset it[/dim]")
        self.query_one("#carry", CarryView).show(run.carry)
        self.shown = self._seen_state_carry = run.carry
        self.set_interval(0.5, self._follow)
        self.query_one("#probe-input", Input).focus()
        self.action_refresh()

    def _follow(self) -> None:
        """Snapshots from other consoles' inspects arrive as carry events."""
        carry = self.dashboard.state.carry
        if carry is not self._seen_state_carry:
            self._seen_state_carry = self.shown = carry
            self.query_one("#carry", CarryView).show(carry)

    def _slot(self) -> int | None:
        text = self.query_one("#slot", Input).value.strip() or "0"
        try:
            return int(text)
        except ValueError:
            return None

    def action_refresh(self) -> None:
        slot = self._slot()
        status = self.query_one("#inspect-status", Static)
        if slot is None or slot < 0:
            status.update("[red]the slot is a whole number from 0 to the batch size - 1[/red]")
            return
        pending = self.dashboard.send_command("inspect", on_ack=self._inspected, slot=slot)
        status.update("[yellow]inspect … pending[/yellow]" if pending else f"[yellow]{self.dashboard.mode}: "
                      f"showing the last snapshot[/yellow]")

    def _inspected(self, pending: PendingCommand) -> None:
        status = self.query_one("#inspect-status", Static)
        if pending.ok and isinstance(pending.result, dict):
            self.shown = pending.result
            self.query_one("#carry", CarryView).show(pending.result)
            status.update(f"[green]snapshot at step {pending.step:,}[/green]")
        elif pending.lost:
            status.update("[red]no answer: the connection to the engine was lost[/red]")
        else:
            status.update(f"[red]{pending.error}[/red]")

    def action_probe(self) -> None:
        text = self.query_one("#probe-input", Input).value.strip()
        reset = self.query_one("#probe-reset", Checkbox).value
        if not text and not reset:
            self.query_one("#probe-answer", Static).update("[yellow]type a task input first[/yellow]")
            return
        pending = self.dashboard.send_command("probe", on_ack=self._probed, input=text or None, reset=reset)
        if pending is not None:
            self.query_one("#probe-answer", Static).update("[yellow]probe … pending[/yellow]")

    def _probed(self, pending: PendingCommand) -> None:
        out = self.query_one("#probe-answer", Static)
        if pending.lost:
            out.update("[red]no answer: the connection to the engine was lost[/red]")
            return
        if not pending.ok:
            out.update(f"[red]probe refused: {pending.error}[/red]")
            return
        result = pending.result if isinstance(pending.result, dict) else {}
        if pending.args.get("reset"):
            self.probes_since_reset = 0
            self.query_one("#probe-reset", Checkbox).value = False
        if "answer" not in result:
            out.update("[green]carry reset[/green]")
            return
        self.probes_since_reset += 1
        out.update(probe_line(result, pending.step, self.probes_since_reset))

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "refresh":
            self.action_refresh()
        elif event.button.id == "probe":
            self.action_probe()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id == "probe-input":
            self.action_probe()
        elif event.input.id == "slot":
            self.action_refresh()

    def action_back(self) -> None:
        self.app.pop_screen()


def probe_line(result: dict, step: int, probes: int) -> str:
    """A probe's answer; for a text model also how far the carry moved (z_H, z_L) and whether it went on from
    the probe before."""
    escaped = str(result.get("answer", "")).replace("[", "\\[")
    line = f"[b]answer[/b] {escaped}   [dim]steps {result.get('steps')} · step {step:,} · probe {probes} on this carry"
    if "z_H_change" in result:
        line += (f" · carry moved z_H {result['z_H_change']:.3f}, z_L {result['z_L_change']:.3f} from "
                 + ("the last probe's" if result.get("carried") else "the initial latents"))
    return line + "[/dim]"
