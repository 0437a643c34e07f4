"""Compare: two runs' curves overlaid, read from their stores (live runs keep growing)."""

from __future__ import annotations

import time
from pathlib import Path

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer, Static
from textual.worker import get_current_worker

from lab.client import RunState, StoreFollower, StoreUpdate
from widgets.curves import CurvesPane

POLL_SECONDS = 2.0


class CompareRows(Message):
    def __init__(self, index: int, update: StoreUpdate):
        super().__init__()
        self.index, self.update = index, update


class CompareScreen(Screen):
    BINDINGS = [
        Binding("escape", "back", "back"),
        Binding("e", "smoothing", "smooth"),
        Binding("k", "series_list", "series", show=False),
        Binding("q", "leave", "leave"),
    ]

    def __init__(self, run_a: str | Path, run_b: str | Path):
        super().__init__()
        self.states = [RunState(run_a), RunState(run_b)]
        self._version = -1

    def compose(self) -> ComposeResult:
        yield Static(id="compare-title")
        yield CurvesPane(id="compare-curves")
        yield Footer()

    def on_mount(self) -> None:
        a, b = self.states
        self.query_one("#compare-title", Static).update(
            f"[b]Compare[/b]  [#00d7ff]━ {a.run_id}[/]   [#ffaf00]━ {b.run_id}[/]   "
            f"[dim]series chosen on the left apply to both · escape returns[/dim]")
        self.curves = self.query_one(CurvesPane)
        self.curves.border_title = "curves"
        self.set_interval(0.5, self._tick)
        self.follow()

    @work(thread=True, exclusive=True, group="compare")
    def follow(self) -> None:
        worker = get_current_worker()
        followers = []
        for i, state in enumerate(self.states):
            try:
                followers.append(StoreFollower(state.run_dir))
            except FileNotFoundError:
                followers.append(None)
                self.app.call_from_thread(self.notify, f"{state.run_id} has no store; nothing to compare.",
                                          severity="warning")
        while not worker.is_cancelled:
            for i, f in enumerate(followers):
                if f is not None:
                    self.post_message(CompareRows(i, f.poll()))
            end = time.monotonic() + POLL_SECONDS
            while not worker.is_cancelled and time.monotonic() < end:
                time.sleep(0.05)
        for f in followers:
            if f is not None:
                f.close()

    def on_compare_rows(self, message: CompareRows) -> None:
        self.states[message.index].apply_store(message.update)

    def _tick(self) -> None:
        version = sum(s.metrics_version for s in self.states)
        if version != self._version and self.is_current:
            self._version = version
            self.curves.set_runs([(s.run_id, s.series) for s in self.states])
        if self.is_current:
            self.curves.refresh_if_dirty()

    def action_smoothing(self) -> None:
        w = self.curves.cycle_smoothing()
        self.notify(f"curve smoothing: {'off' if not w else f'EMA {w:g}'}", timeout=2)

    def action_series_list(self) -> None:
        self.curves.toggle_class("-no-list")

    def action_back(self) -> None:
        self.app.pop_screen()

    def action_leave(self) -> None:
        self.app.exit(0)
