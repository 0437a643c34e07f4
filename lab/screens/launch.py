"""Launch: pick a preset from configs/, edit overrides, see the resolved settings and the
parameter count, start the run. A config that fails validation shows its error and starts nothing."""

from __future__ import annotations

import shlex
from pathlib import Path

from rich.syntax import Syntax
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Button, Footer, Input, OptionList, Static
from textual.widgets.option_list import Option
from textual.worker import get_current_worker

from engine import config
from lab import runs
from lab.screens.watch import FolderWatch


class Described(Message):
    def __init__(self, key: tuple, info: dict | None, error: str | None):
        super().__init__()
        self.key, self.info, self.error = key, info, error


class Launched(Message):
    def __init__(self, run_dir: Path | None, error: str | None):
        super().__init__()
        self.run_dir, self.error = run_dir, error


def parse_overrides(text: str) -> list[str]:
    """`model.d_model=256 train.max_steps=500` -> ["model.d_model=256", "train.max_steps=500"]."""
    try:
        parts = shlex.split(text)
    except ValueError:
        raise config.ConfigError("the overrides have an unclosed quote; write key.sub=value pairs separated by spaces.") from None
    for p in parts:
        if "=" not in p:
            raise config.ConfigError(f"override {p!r} is not of the form key.sub=value.")
    return parts


class LaunchScreen(Screen):
    BINDINGS = [
        Binding("ctrl+s", "start", "start run"),
        Binding("r", "runs", "runs browser"),
        Binding("q", "leave", "leave"),
    ]

    def __init__(self, configs_dir: str | Path, runs_dir: str | Path, overrides: list[str] | None = None):
        super().__init__()
        self.configs_dir = Path(configs_dir)
        self.runs_dir = Path(runs_dir)
        self.initial_overrides = " ".join(shlex.quote(o) for o in overrides or [])
        self.presets: list[Path] = []
        self.error: str | None = None
        self.watch = FolderWatch(self.configs_dir, recursive=False)
        self._described: dict[tuple, tuple[dict | None, str | None]] = {}
        self._starting = False

    def compose(self) -> ComposeResult:
        yield Static("[b]trm-lab[/b]  ·  pick a preset, adjust it, start a run", id="launch-title")
        with Horizontal(id="launch-body"):
            with Vertical(id="presets-pane"):
                yield OptionList(id="presets")
            with Vertical(id="details"):
                yield Static(id="preset-summary")
                yield Input(self.initial_overrides, placeholder="overrides: model.d_model=256 train.max_steps=5000",
                            id="overrides")
                yield Static(id="config-error")
                with VerticalScroll(id="resolved-scroll"):
                    yield Static(id="resolved")
                with Horizontal(id="launch-buttons"):
                    yield Button("Start run  [ctrl+s]", variant="success", id="start")
                    yield Static(f"[dim]runs go to {self.runs_dir}/ · the engine keeps running when the console "
                                 f"closes[/dim]", id="launch-note")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#presets-pane").border_title = f"presets · {self.configs_dir}"
        self.query_one("#resolved-scroll").border_title = "resolved settings"
        self.load_presets()
        self.watch.start()
        self.set_interval(1.0, self._tick)
        self.query_one(OptionList).focus()

    def on_unmount(self) -> None:
        self.watch.stop()

    def _tick(self) -> None:
        if self.watch.take():  # a preset was added, removed or edited
            self.load_presets()

    def load_presets(self) -> None:
        presets = sorted(self.configs_dir.glob("*.toml")) if self.configs_dir.is_dir() else []
        current = self.selected
        self.presets = sorted(presets, key=lambda p: (p.stem != "quickstart", p.stem))  # quickstart first
        ol = self.query_one(OptionList)
        ol.clear_options()
        ol.add_options([Option(p.stem, id=str(p)) for p in self.presets])
        if self.presets:
            index = self.presets.index(current) if current in self.presets else 0
            ol.highlighted = index
        self._described.clear()  # an edited preset may have a new parameter count
        self.resolve()

    @property
    def selected(self) -> Path | None:
        if not self.presets:
            return None
        ol = self.query_one(OptionList)
        i = ol.highlighted
        return self.presets[i] if i is not None and 0 <= i < len(self.presets) else None

    def on_option_list_option_highlighted(self, event: OptionList.OptionHighlighted) -> None:
        self.resolve()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.query_one("#overrides", Input).focus()

    def on_input_changed(self, event: Input.Changed) -> None:
        self.resolve()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.action_start()

    def resolve(self) -> None:
        """Validate the preset with the overrides; show the settings or the error."""
        path = self.selected
        summary = self.query_one("#preset-summary", Static)
        resolved = self.query_one("#resolved", Static)
        err = self.query_one("#config-error", Static)
        if path is None:
            self.error = f"no presets in {self.configs_dir}; add a TOML file there (see configs/quickstart.toml)."
            summary.update("")
            resolved.update("")
            err.update(f"[red]{self.error}[/red]")
            return
        try:
            overrides = parse_overrides(self.query_one("#overrides", Input).value)
            cfg = config.load(path, overrides)
        except config.ConfigError as exc:
            self.error = str(exc)
            err.update(f"[red]✗ {self.error}[/red]")
            self.query_one("#start", Button).disabled = True
            return
        self.error = None
        err.update("[green]✓ valid[/green]")
        self.query_one("#start", Button).disabled = False
        resolved.update(Syntax(config.to_toml(cfg), "toml", theme="ansi_dark", background_color="default"))
        key = (str(path), path.stat().st_mtime, tuple(overrides))
        self._show_summary(path, cfg, key)
        if key not in self._described:
            self._described[key] = (None, None)
            self.describe(key, path, overrides)

    def _show_summary(self, path: Path, cfg: config.RunConfig, key: tuple) -> None:
        info, error = self._described.get(key, (None, None))
        if info is not None:
            params = f"[b]{info.get('parameters', 0):,}[/b] parameters"
        elif error is not None:
            params = f"[yellow]parameter count unavailable: {error}[/yellow]"
        else:
            params = "[dim]counting parameters…[/dim]"
        m, t = cfg.model, cfg.task
        lr = f"lr {cfg.optim.lr:g}" if cfg.optim.lr is not None else "preset lr"
        self.query_one("#preset-summary", Static).update(
            f"[b]{path.name}[/b]  ·  {params}\n"
            f"[dim]{t.name} {t.size}×{t.size} · d_model {m.d_model} · {m.n_layers} layers · {m.mixer} · "
            f"memory {m.memory} · T={m.H_cycles} n={m.L_cycles} · {cfg.optim.preset} {lr} · "
            f"{cfg.train.max_steps:,} steps × batch {cfg.train.batch_size}[/dim]")

    @work(thread=True, group="describe")
    def describe(self, key: tuple, path: Path, overrides: list[str]) -> None:
        """Parameter count in a subprocess (the model needs torch; the console never imports it)."""
        try:
            info, error = runs.describe_config(path, overrides), None
        except config.ConfigError as exc:
            info, error = None, str(exc)
        except Exception as exc:  # the subprocess failed or timed out: say so, keep the screen
            info, error = None, f"{exc.__class__.__name__}: {exc}"
        if not get_current_worker().is_cancelled:
            self.post_message(Described(key, info, error))

    def on_described(self, message: Described) -> None:
        self._described[message.key] = (message.info, message.error)
        self.resolve()

    def action_start(self) -> None:
        path = self.selected
        if path is None or self.error or self._starting:
            if self.error:
                self.notify(self.error, severity="error", timeout=6)
            return
        self._starting = True
        self.query_one("#start", Button).disabled = True
        self.query_one("#config-error", Static).update("[cyan]starting the engine…[/cyan]")
        self.start_run(path, parse_overrides(self.query_one("#overrides", Input).value))

    @work(thread=True, exclusive=True, group="start")
    def start_run(self, path: Path, overrides: list[str]) -> None:
        try:
            run_dir = runs.create_run(path, overrides, self.runs_dir)
            runs.spawn_engine(run_dir)
        except config.ConfigError as exc:
            self.post_message(Launched(None, str(exc)))
            return
        except OSError as exc:
            self.post_message(Launched(None, f"the engine could not be started: {exc}"))
            return
        self.post_message(Launched(run_dir, None))

    def on_launched(self, message: Launched) -> None:
        self._starting = False
        if message.error:
            self.query_one("#config-error", Static).update(f"[red]✗ {message.error}[/red]")
            self.query_one("#start", Button).disabled = False
            return
        self.app.open_run(message.run_dir)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "start":
            self.action_start()

    def action_runs(self) -> None:
        from lab.screens.runs import RunsBrowserScreen

        self.app.push_screen(RunsBrowserScreen(self.runs_dir))

    def action_leave(self) -> None:
        self.app.exit(0)
