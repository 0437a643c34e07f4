"""The dashboard: one run, live from its engine or read-only from its store.

A worker thread owns the I/O (socket, store) and posts what it read; the screen applies it to
its `RunState` on the UI thread; a 2 Hz timer hands the state to the panes, which redraw only
when their data changed and only while visible.
"""

from __future__ import annotations

import time
from pathlib import Path

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer, Static
from textual.worker import get_current_worker

from engine.protocol import LIVE_STATUSES
from lab import runs
from lab.client import (AlertRules, ConnectionLost, EngineClient, EngineUnreachable, PendingCommand, RunState,
                        StoreFollower, StoreUpdate, has_store)
from lab.screens.dialogs import ConfirmScreen, HelpScreen
from lab.screens.runs import STATUS_STYLES, RunsBrowserScreen
from widgets.consolidation import MEMORY, ConsolidationPlot
from widgets.curriculum import CurriculumQueue
from widgets.curves import CurvesPane
from widgets.eventlog import EventLog
from widgets.pipeline import PipelineStrip
from widgets.plot import fmt
from widgets.resources import ResourcesPane
from widgets.timeline import PhaseTimeline

REDRAW_SECONDS = 0.5  # panes redraw at most twice a second
BATCH_SECONDS = 0.1  # the reader hands messages to the UI at most ten times a second (acks at once)
STORE_POLL_SECONDS = 1.0  # read-only: how often the store is read again
BACKFILL_LOG_EVENTS = 200
STORE_CATCH_UP_SECONDS = 0.6  # a little over the engine's default store flush period (0.5 s)  # history lines shown in the event log on open


# ---- what the worker tells the screen ---------------------------------------------------------


class StoreRows(Message):
    def __init__(self, update: StoreUpdate, history: bool):
        super().__init__()
        self.update, self.history = update, history


class FeedBatch(Message):
    def __init__(self, messages: list[dict]):
        super().__init__()
        self.messages = messages


class LinkChanged(Message):
    """mode: "live", "connecting" or "read-only" (reason says why)."""

    def __init__(self, mode: str, reason: str = "", client: EngineClient | None = None):
        super().__init__()
        self.mode, self.reason, self.client = mode, reason, client


# ---- the header lines ---------------------------------------------------------------------------

MODE_STYLES = {"live": "bold green", "connecting": "bold cyan", "read-only": "bold yellow"}


def shown_status(state: RunState, mode: str) -> str:
    """A run the store calls running whose engine process is gone is stale."""
    if mode != "live" and state.status in LIVE_STATUSES and state.pid and not runs.pid_alive(state.pid):
        return "stale"
    return state.status


def engine_starting(run: dict) -> bool:
    """A run created moments ago whose engine has not opened its socket yet."""
    return run.get("status") == "starting" and (
        runs.pid_alive(run.get("pid")) or time.time() - (run.get("created") or 0) < 60)


def header_text(state: RunState, mode: str, reason: str, smoothing: float) -> Text:
    status = shown_status(state, mode)
    t = Text(no_wrap=True, overflow="ellipsis")
    t.append(" trm-lab ", style="bold reverse")
    t.append(f" {state.name or ''} ", style="bold")
    t.append(f"{state.run_id}  ", style="grey62")
    t.append(f"● {status}", style=STATUS_STYLES.get(status, "bold"))
    t.append(f"   step {state.step:,}", style="bold")
    if state.max_steps:
        t.append(f" / {state.max_steps:,}", style="grey62")
    sps = state.steps_per_second
    if sps is not None and mode == "live" and state.status == "running":
        t.append(f"   {sps:.1f} steps/s", style="cyan")
    if state.world_size > 1:  # data-parallel: each rank's latest step time, slowest decides the pace
        times = " · ".join("-" if v is None else f"{v * 1000:.0f}" for v in state.rank_step_times())
        t.append(f"   {state.world_size} ranks: {times} ms/step", style="grey62")
    t.append("   ")
    t.append(f"{'⚡ ' if mode == 'live' else ''}{mode}", style=MODE_STYLES.get(mode, "bold"))
    if reason and mode != "live":
        t.append(f": {reason}", style="yellow")
    if smoothing:
        t.append(f"   ema {smoothing:g}", style="grey62")
    return t


def commands_text(commands: list[PendingCommand], now: float) -> Text:
    t = Text(no_wrap=True, overflow="ellipsis")
    t.append(" commands ", style="grey50")
    if not commands:
        t.append("none yet · space pause/resume · s sleep · c checkpoint · x stop · ? help", style="grey42")
        return t
    for i, p in enumerate(commands[-5:]):
        if i:
            t.append(" · ", style="grey42")
        state = p.state
        if state == "pending":
            t.append(f"{p.cmd} … pending {now - p.sent_at:.1f}s", style="bold yellow")
        elif state == "ok":
            t.append(f"{p.cmd} ✓ step {p.step:,}", style="green")
        elif state == "failed":
            t.append(f"{p.cmd} ✗ refused (why: in events)", style="red")  # the reason is a sentence: too long here
        else:
            t.append(f"{p.cmd} ? no ack (connection lost)", style="red")
    return t


def event_line(msg: dict, own_ids: set[str]) -> tuple[str, str] | None:
    """(log kind, text) for an event worth a line in the log, else None."""
    kind, data = msg.get("event"), msg.get("data") or {}
    if not isinstance(data, dict):
        return None
    if kind == "status":
        return "status", f"status → {data.get('status')}"
    if kind == "phase":
        return "phase", f"phase → {data.get('phase')}" + (" (manual)" if data.get("manual") else "")
    if kind == "checkpoint":
        what = "loaded" if data.get("loaded") else f"saved ({data.get('reason', 'scheduled')})"
        return "checkpoint", f"checkpoint {what}: {Path(str(data.get('path', ''))).name}"
    if kind == "alert":
        return ("alert" if data.get("level") == "error" else "warning"), f"⚠ {data.get('message')}"
    if kind == "eval":
        figures = ", ".join(f"{k} {fmt(v)}" for k, v in data.items() if isinstance(v, (int, float)))
        return "info", f"eval: {figures}"
    if kind == "consolidation":
        text = f"sleep consolidated: retention {fmt(data.get('retention_before'))} → {fmt(data.get('retention_after'))}"
        if "weights_change" in data:  # older engines sent a fast-weight norm as memory_change: not a change
            text += f", Δ‖mem‖ {fmt(data.get('memory_change'))}, ‖Δslow‖ {fmt(data.get('weights_change'))}"
        return "phase", text
    if kind == "command" and data.get("id") not in own_ids:
        ok = "applied" if data.get("ok") else f"refused ({data.get('error')})"
        return "command", f"{data.get('cmd')} from {data.get('client', 'another client')}: {ok}"
    return None


# ---- the screen ---------------------------------------------------------------------------------


class DashboardScreen(Screen):
    BINDINGS = [
        Binding("space", "toggle_pause", "pause/resume", priority=True),
        Binding("s", "sleep", "sleep"),
        Binding("c", "checkpoint", "checkpoint"),
        Binding("i", "inspector", "inspect"),
        Binding("x", "stop", "stop"),
        Binding("r", "runs", "runs"),
        Binding("e", "smoothing", "smooth"),
        Binding("k", "series_list", "series", show=False),
        Binding("question_mark", "help", "help"),
        Binding("q", "leave", "leave"),
    ]

    def __init__(self, run_dir: str | Path, hello_timeout: float = 3.0, silent_after: float | None = None,
                 clock=time.time):
        super().__init__()
        self.clock = clock  # wall time for log lines (fixed in screenshot tests)
        self.run_dir = Path(run_dir)
        self.state = RunState(self.run_dir)
        self.alerts = AlertRules() if silent_after is None else AlertRules(silent_after=silent_after)
        self.hello_timeout = hello_timeout
        self.client: EngineClient | None = None
        self.mode, self.reason = "connecting", "opening the run"
        self.commands: list[PendingCommand] = []
        self._on_ack: dict[str, callable] = {}
        self._drawn_metrics = -1
        self._ticks = 0
        self._last_link: tuple = ()
        self._header_drawn: tuple = ()

    # -- layout ------------------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield Static(id="run-header")
        yield Static(id="command-strip")
        with Horizontal(id="body"):
            with Vertical(id="main"):
                yield PipelineStrip(id="pipeline")
                yield CurvesPane(id="curves")
                yield PhaseTimeline(id="timeline")
                yield EventLog(id="log")
            with Vertical(id="side"):
                yield ResourcesPane(id="resources")
                yield CurriculumQueue(id="curriculum")
                yield ConsolidationPlot(id="consolidation")
        yield Footer()

    def on_mount(self) -> None:
        titles = {"pipeline": "level pipeline", "curves": "curves · k series list · e smoothing", "timeline": "phases",
                  "log": "events",
                  "resources": "resources", "curriculum": "curriculum", "consolidation": "consolidation"}
        for wid, title in titles.items():
            self.query_one(f"#{wid}").border_title = title
        self.log_pane = self.query_one(EventLog)
        self.curves = self.query_one(CurvesPane)
        self.curves.set_runs([(self.state.run_id, self.state.series)])
        self._fit(self.size.width, self.size.height)
        self._tick()
        self.set_interval(REDRAW_SECONDS, self._tick)
        self.follow_run()

    def on_resize(self, event) -> None:
        self._fit(event.size.width, event.size.height)

    def _fit(self, width: int, height: int) -> None:
        """Fewer panes on a small terminal: side column narrows and loses plots, then goes."""
        compact = width < 120 or height < 34
        if compact != self.has_class("-compact"):
            self.query_one(CurvesPane).set_class(compact, "-no-list")  # the series list comes back with k
        self.set_class(compact, "-compact")
        self.set_class(width < 80 or height < 22, "-tiny")

    # -- the worker: socket and store ---------------------------------------------------------------

    @work(thread=True, exclusive=True, group="feed")
    def follow_run(self) -> None:
        worker = get_current_worker()
        follower: StoreFollower | None = None
        first_poll = True
        while not worker.is_cancelled:
            if follower is None and has_store(self.run_dir):
                try:
                    follower = StoreFollower(self.run_dir)
                except Exception as exc:  # an unreadable store: say so, keep trying the socket
                    self.post_message(LinkChanged("read-only", f"the store cannot be read ({exc})."))
            client = EngineClient(self.run_dir, hello_timeout=self.hello_timeout)
            try:
                hello = client.connect()
            except EngineUnreachable as exc:
                client, hello, reason = None, None, str(exc).rstrip(".")
            if client is not None and follower is not None:
                # let the engine's store writer catch up with the moment we connected, so the
                # history read next and the live stream that follows leave no gap between them
                self._wait(worker, None, seconds=STORE_CATCH_UP_SECONDS)
            run_row: dict = {}
            if follower is not None:
                update = follower.poll()
                run_row = update.run or {}
                self.post_message(StoreRows(update, history=first_poll))
                first_poll = False
            elif client is None:
                reason = "no store and no engine: this folder is not a run"
            if client is None:
                if engine_starting(run_row):  # on its way: not a read-only run
                    self.post_message(LinkChanged("connecting", "waiting for the engine to start"))
                    self._wait(worker, None, seconds=0.5)
                    continue
                self.post_message(LinkChanged("read-only", reason))
                self._wait(worker, follower, seconds=5.0 if self.state.finished else 2.0)
                continue
            self.post_message(LinkChanged("live", "", client))
            self.post_message(FeedBatch([hello]))
            self._stream(worker, client)
            client.close()
            if not worker.is_cancelled:
                self.post_message(LinkChanged("connecting", "the connection closed; reconnecting"))
                self._wait(worker, None, seconds=0.5)
        if follower is not None:
            follower.close()

    def _stream(self, worker, client: EngineClient) -> None:
        batch: list[dict] = []
        last_post = time.monotonic()
        while not worker.is_cancelled:
            try:
                msgs = client.read(BATCH_SECONDS)
            except ConnectionLost:
                if batch:
                    self.post_message(FeedBatch(batch))
                return
            batch.extend(msgs)
            now = time.monotonic()
            if batch and (now - last_post >= BATCH_SECONDS or any(m.get("type") == "ack" for m in msgs)):
                self.post_message(FeedBatch(batch))
                batch, last_post = [], now

    def _wait(self, worker, follower: StoreFollower | None, seconds: float) -> None:
        """Sleep `seconds` in small slices (so leaving is prompt), reading the store meanwhile."""
        end = time.monotonic() + seconds
        next_poll = time.monotonic() + STORE_POLL_SECONDS
        while not worker.is_cancelled and time.monotonic() < end:
            time.sleep(0.05)
            if follower is not None and time.monotonic() >= next_poll:
                self.post_message(StoreRows(follower.poll(), history=False))
                next_poll = time.monotonic() + STORE_POLL_SECONDS

    # -- what the worker posted ---------------------------------------------------------------------

    def on_store_rows(self, message: StoreRows) -> None:
        new = self.state.apply_store(message.update)
        if message.history:
            new = new[-BACKFILL_LOG_EVENTS:]
        for msg in new:
            self._log_event(msg, notify=not message.history)
        if not message.history:
            for text in self.alerts.nonfinite_rows(message.update.nonfinite):
                self._alert(text, self.state.step)

    def on_feed_batch(self, message: FeedBatch) -> None:
        for msg in message.messages:
            if self.state.apply(msg) is None:
                continue
            kind = msg.get("type")
            if kind == "ack":
                self._acked(msg)
            elif kind == "event":
                event, data = msg.get("event"), msg.get("data")
                if event == "metrics" and isinstance(data, dict):
                    for text in self.alerts.metrics(msg.get("step") or 0, data):
                        self._alert(text, msg.get("step"))
                elif event == "telemetry" and isinstance(data, dict):
                    for text in self.alerts.telemetry(data, self.state.limits):
                        self._alert(text, msg.get("step"))
                else:
                    self._log_event(msg, notify=True)

    def on_link_changed(self, message: LinkChanged) -> None:
        self.mode, self.reason = message.mode, message.reason
        if message.mode == "live":
            self.client = message.client
            self.log_pane.add("info", "attached: live from the engine", self.state.step, self.clock())
        else:
            if self.client is not None:  # commands that will never be acknowledged now
                for cid, callback in list(self._on_ack.items()):
                    pending = self.client.pending.get(cid)
                    if pending is not None and pending.state == "lost":
                        del self._on_ack[cid]
                        callback(pending)
            self.client = None
            if (message.mode, message.reason) != self._last_link:  # the worker repeats itself while it retries
                self.log_pane.add("warning", f"{message.mode}: {message.reason}", self.state.step, self.clock())
        self._last_link = (message.mode, message.reason)
        self._tick()

    # -- commands -------------------------------------------------------------------------------

    def send_command(self, cmd: str, on_ack=None, **args) -> PendingCommand | None:
        """Send to the engine; the command shows as pending until its ack names the step."""
        if self.client is None or self.mode != "live":
            why = self.reason or "the engine is not connected"
            self.notify(f"{cmd} not sent: the run is {self.mode} ({why}).", severity="warning", timeout=4)
            return None
        try:
            pending = self.client.send(cmd, **args)
        except EngineUnreachable as exc:
            self.notify(f"{cmd} not sent: {exc}", severity="error")
            return None
        self.commands.append(pending)
        del self.commands[:-20]
        if on_ack is not None:
            self._on_ack[pending.id] = on_ack
        shown = f" {args}" if args and cmd != "probe" else ""
        self.log_pane.add("command", f"→ {cmd}{shown} sent", self.state.step, self.clock())
        self._draw_header()
        return pending

    def _acked(self, ack: dict) -> None:
        pending = self.client.pending.get(ack.get("ack")) if self.client else None
        if pending is None:
            return
        if pending.ok:
            self.log_pane.add("ack", f"✓ {pending.cmd} applied at step {pending.step:,}", pending.step, self.clock())
        else:
            self.log_pane.add("nack", f"✗ {pending.cmd} refused: {pending.error}", pending.step, self.clock())
            self.notify(pending.error or "no reason given", title=f"{pending.cmd} refused", severity="warning", timeout=5)
        callback = self._on_ack.pop(pending.id, None)
        if callback is not None:
            callback(pending)
        self._draw_header()

    def _pending(self, *cmds: str) -> PendingCommand | None:
        return next((p for p in reversed(self.commands) if p.cmd in cmds and p.state == "pending"), None)

    def action_toggle_pause(self) -> None:
        waiting = self._pending("pause", "resume")
        if waiting is not None:
            self.notify(f"{waiting.cmd} is still pending; wait for its acknowledgement.", timeout=3)
            return
        self.send_command("resume" if self.state.status == "paused" else "pause")

    def action_sleep(self) -> None:
        self.send_command("sleep")

    def action_checkpoint(self) -> None:
        self.send_command("checkpoint")

    def action_stop(self) -> None:
        if self.mode != "live":
            self.send_command("stop")  # explains why it cannot be sent
            return

        def answered(yes: bool | None) -> None:
            if yes:
                self.send_command("stop")

        self.app.push_screen(ConfirmScreen(
            f"Stop run [b]{self.state.run_id}[/b]?\nThe engine saves a checkpoint at the next step boundary and exits; "
            f"`lab run --resume {self.state.run_id}` continues it later.", yes="Stop the run"), answered)

    def action_inspector(self) -> None:
        from lab.screens.inspector import CarryInspectorScreen

        self.app.push_screen(CarryInspectorScreen(self))

    def action_runs(self) -> None:
        self.app.push_screen(RunsBrowserScreen(self.app.runs_dir, current=self.run_dir))

    def action_smoothing(self) -> None:
        w = self.curves.cycle_smoothing()
        self.notify(f"curve smoothing: {'off' if not w else f'EMA {w:g}'}", timeout=2)
        self._draw_header()

    def action_series_list(self) -> None:
        self.curves.toggle_class("-no-list")

    def action_help(self) -> None:
        self.app.push_screen(HelpScreen())

    def action_leave(self) -> None:
        self.app.exit(0)

    # -- alerts and the log -----------------------------------------------------------------------

    def _alert(self, text: str, step: int | None) -> None:
        self.log_pane.add("alert", f"⚠ {text}", step, self.clock())
        self.notify(text, title="alert", severity="error", timeout=8)

    def _log_event(self, msg: dict, notify: bool) -> None:
        own = set(self.client.pending) if self.client else set()
        line = event_line(msg, own)
        if line is None:
            return
        kind, text = line
        self.log_pane.add(kind, text, msg.get("step"), msg.get("time"))
        if notify and msg.get("event") == "alert":
            self.notify(text.lstrip("⚠ "), title="engine alert",
                        severity="error" if kind == "alert" else "warning", timeout=8)

    # -- the redraw tick ----------------------------------------------------------------------------

    def _tick(self) -> None:
        if self.client is not None and self.mode == "live":
            for text in self.alerts.silence(time.monotonic() - self.client.last_message_at, self.state.status):
                self._alert(text, self.state.step)
        if not self.is_current:
            return  # hidden: nothing to draw
        self._ticks += 1
        self._draw_header()
        s = self.state
        if s.metrics_version != self._drawn_metrics:
            self._drawn_metrics = s.metrics_version
            self.curves.set_runs([(s.run_id, s.series)])
        if self.curves.display:
            self.curves.refresh_if_dirty()
        strip = self.query_one(PipelineStrip)
        strip.display = s.pipeline is not None  # only a run with a level pipeline has one
        strip.show(s.pipeline)
        if strip.display:
            strip.refresh_if_dirty()
        resources = self.query_one(ResourcesPane)
        if resources.display:
            resources.show(s.telemetry, s.limits.vram, s.limits.ram)
        if self._ticks % 2:
            return  # the slower panes redraw once a second
        timeline, curriculum, consolidation = (self.query_one(PhaseTimeline), self.query_one(CurriculumQueue),
                                               self.query_one(ConsolidationPlot))
        timeline.show(s.phases, s.step, s.first_stage)
        curriculum.show(s.curriculum)
        consolidation.show(s.sleeps, {key: s.series[key] for key, _, _ in MEMORY if key in s.series})
        for pane in (timeline, curriculum, consolidation):
            if pane.display and pane.parent.display:
                pane.refresh_if_dirty()

    def _draw_header(self) -> None:
        header = header_text(self.state, self.mode, self.reason, self.curves.smoothing)
        strip = commands_text(self.commands, time.monotonic())
        if (header, strip) != self._header_drawn:  # unchanged text: no repaint
            self._header_drawn = (header, strip)
            self.query_one("#run-header", Static).update(header, layout=False)
            self.query_one("#command-strip", Static).update(strip, layout=False)
