"""Runs browser: every run under the runs folder with its status; open, compare.

watchdog flags changes below the folder (a new run from another shell, a status change); the
screen rescans in a worker on its next tick, and every few seconds anyway.
"""

from __future__ import annotations

import time
from pathlib import Path

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.message import Message
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

from lab import runs
from lab.screens.watch import FolderWatch

RESCAN_SECONDS = 5.0
# the dashboard's header colours a run's status the same way
STATUS_STYLES = {"running": "bold green", "paused": "bold yellow", "starting": "bold cyan", "compiling": "bold cyan",
                 "finished": "bold blue", "stopped": "bold blue", "failed": "bold red", "diverged": "bold red",
                 "stale": "bold red"}


class RunsScanned(Message):
    def __init__(self, rows: list[dict]):
        super().__init__()
        self.rows = rows


def age(t: float | None) -> str:
    if not t:
        return "—"
    s = max(0, time.time() - t)
    for size, unit in ((86400, "d"), (3600, "h"), (60, "min")):
        if s >= size:
            return f"{s / size:.0f} {unit} ago"
    return f"{s:.0f} s ago"


class RunsBrowserScreen(Screen):
    BINDINGS = [
        Binding("enter", "open", "open / attach"),
        Binding("c", "compare", "compare"),
        Binding("m", "mark", "mark"),
        Binding("escape,r", "back", "back"),
        Binding("q", "leave", "leave"),
    ]

    def __init__(self, runs_dir: str | Path, current: Path | None = None):
        super().__init__()
        self.runs_dir = Path(runs_dir)
        self.current = Path(current) if current else None
        self.marked: Path | None = None
        self.rows: list[dict] = []
        self.watch = FolderWatch(self.runs_dir)
        self._last_scan = 0.0

    def compose(self) -> ComposeResult:
        yield Static(id="runs-title")
        yield DataTable(id="runs-table", cursor_type="row", zebra_stripes=True)
        yield Static(id="runs-hint")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        for key, label in (("mark", " "), ("run", "run"), ("status", "status"), ("step", "step"),
                           ("updated", "updated"), ("created", "created")):
            table.add_column(label, key=key)
        self.query_one("#runs-title", Static).update(f"[b]Runs[/b] in {self.runs_dir}  ·  new runs appear by themselves")
        self.query_one("#runs-hint", Static).update(
            "[dim]enter opens (live runs attach, others open read-only) · m marks a run · c compares the highlighted "
            "run with the marked one (or the open one) · escape returns[/dim]")
        self.watch.start()
        self.scan()
        self.set_interval(1.0, self._tick)

    def on_unmount(self) -> None:
        self.watch.stop()

    def _tick(self) -> None:
        if self.watch.take() or time.monotonic() - self._last_scan > RESCAN_SECONDS:
            self.scan()

    @work(thread=True, exclusive=True, group="scan")
    def scan(self) -> None:
        self._last_scan = time.monotonic()
        rows = [runs.run_summary(d) for d in runs.list_run_dirs(self.runs_dir)]
        rows.sort(key=lambda r: r.get("created") or 0, reverse=True)
        self.post_message(RunsScanned(rows))

    def on_runs_scanned(self, message: RunsScanned) -> None:
        self.rows = message.rows
        table = self.query_one(DataTable)
        keep = table.cursor_row
        selected = self._selected()
        table.clear()
        for r in self.rows:
            path = Path(r["path"])
            mark = "★" if path == self.marked else ("▶" if self.current and path.resolve() == self.current.resolve() else "")
            status = Text(r.get("status") or "?", style=STATUS_STYLES.get(r.get("status"), ""))
            created = time.strftime("%Y-%m-%d %H:%M", time.localtime(r["created"])) if r.get("created") else "—"
            table.add_row(mark, r.get("id") or path.name, status, f"{r['step']:,}" if r.get("step") is not None else "—",
                          age(r.get("updated")), created, key=str(path))
        if selected is not None and str(selected) in [r["path"] for r in self.rows]:
            table.move_cursor(row=[r["path"] for r in self.rows].index(str(selected)))
        elif self.rows:
            table.move_cursor(row=min(keep, len(self.rows) - 1))
        if not self.rows:
            self.query_one("#runs-hint", Static).update(
                f"[yellow]no runs in {self.runs_dir} yet[/yellow] [dim]· start one from the launch screen or with "
                f"`lab run CONFIG --headless`; it appears here by itself[/dim]")

    def _selected(self) -> Path | None:
        table = self.query_one(DataTable)
        if not self.rows or table.row_count == 0:
            return None
        row = min(table.cursor_row, len(self.rows) - 1)
        return Path(self.rows[row]["path"])

    def action_open(self) -> None:
        run = self._selected()
        if run is not None:
            self.app.open_run(run)

    def action_mark(self) -> None:
        run = self._selected()
        self.marked = None if run == self.marked else run
        self.on_runs_scanned(RunsScanned(self.rows))

    def action_compare(self) -> None:
        run = self._selected()
        other = self.marked if self.marked and self.marked != run else self.current
        if run is None or other is None or other == run:
            self.notify("mark a run with m first, then highlight another and press c.", timeout=4)
            return
        from lab.screens.compare import CompareScreen

        self.app.push_screen(CompareScreen(other, run))

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        self.action_open()

    def action_back(self) -> None:
        if len(self.app.screen_stack) > 2:
            self.app.pop_screen()
        else:
            self.notify("this is the first screen; q leaves the console.", timeout=3)

    def action_leave(self) -> None:
        self.app.exit(0)
