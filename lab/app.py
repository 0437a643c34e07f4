"""The lab console: a Textual app that starts, watches and steers training runs.

`launch()` is what `lab launch` calls. The app itself is thin: it opens the launch screen or a
run's dashboard and puts the dashboard's actions in the command palette; the screens live in
`lab/screens/`, the panes in `widgets/`, the styles in `app.tcss`.

Closing the console never stops a run: the engine runs in its own session.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Iterable

from textual.app import App, SystemCommand
from textual.screen import Screen

from engine import config
from lab import runs
from lab.screens.dashboard import DashboardScreen
from lab.screens.dialogs import HelpScreen
from lab.screens.launch import LaunchScreen


class LabApp(App):
    CSS_PATH = "app.tcss"
    TITLE = "trm-lab"
    ENABLE_COMMAND_PALETTE = True

    def __init__(self, runs_dir: str | Path, configs_dir: str | Path, run_dir: str | Path | None = None,
                 overrides: list[str] | None = None, hello_timeout: float = 3.0, silent_after: float | None = None,
                 clock=time.time):
        super().__init__()
        self.clock = clock
        self.runs_dir = Path(runs_dir)
        self.configs_dir = Path(configs_dir)
        self.first_run = Path(run_dir) if run_dir else None
        self.overrides = overrides or []
        self.hello_timeout = hello_timeout
        self.silent_after = silent_after

    def on_mount(self) -> None:
        if self.first_run is not None:
            self.open_run(self.first_run)
        else:
            self.push_screen(LaunchScreen(self.configs_dir, self.runs_dir, self.overrides))

    def open_run(self, run_dir: str | Path) -> None:
        """Show this run's dashboard (live if its engine answers, else read-only), replacing any other."""
        while len(self.screen_stack) > 1:
            self.pop_screen()
        self.push_screen(DashboardScreen(run_dir, hello_timeout=self.hello_timeout, silent_after=self.silent_after,
                                         clock=self.clock))

    @property
    def dashboard(self) -> DashboardScreen | None:
        return next((s for s in reversed(self.screen_stack) if isinstance(s, DashboardScreen)), None)

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        dash = self.dashboard
        if dash is not None:
            yield SystemCommand("Pause / resume the run", "space: pause or resume at the next step", dash.action_toggle_pause)
            yield SystemCommand("Sleep now", "s: start a consolidation phase", dash.action_sleep)
            yield SystemCommand("Checkpoint now", "c: save a checkpoint at the next step", dash.action_checkpoint)
            yield SystemCommand("Carry inspector", "i: look inside the recurrent state; probe the model", dash.action_inspector)
            yield SystemCommand("Stop the run", "x: checkpoint and stop (asks first)", dash.action_stop)
            yield SystemCommand("Cycle curve smoothing", "e: EMA off, 0.6, 0.9, 0.99", dash.action_smoothing)
        yield SystemCommand("Runs browser", "r: every run; open, attach, compare", self.action_runs)
        yield SystemCommand("Keys", "?: every key of the console", lambda: self.push_screen(HelpScreen()))
        yield SystemCommand("Leave the console", "q: the run goes on", self.exit)

    def action_runs(self) -> None:
        from lab.screens.runs import RunsBrowserScreen

        dash = self.dashboard
        self.push_screen(RunsBrowserScreen(self.runs_dir, current=dash.run_dir if dash else None))


def default_configs_dir() -> Path:
    """configs/ of the working directory, else the one beside the package (a source checkout)."""
    here = Path("configs")
    return here if here.is_dir() else Path(__file__).resolve().parent.parent / "configs"


def launch(target: str | None, runs_dir: Path, overrides: list[str] | None = None,
           configs_dir: Path | None = None, processes: runs.Processes = runs.ONE_PROCESS) -> int:
    """Open the console; the return value is the process exit code.

    target None: the launch screen (pick a preset from `configs_dir`, edit `overrides`, start).
    target a run (its folder, or its id under `runs_dir`): attach to it, read-only if its engine is gone.
    target a config (a TOML file, or a preset name in `configs_dir`): create the run under
    `runs_dir` with `overrides`, start its engine in its own session (`processes` of them, through torchrun,
    when more than one), attach.
    Bad input raises before the console opens, with a one-sentence message (the CLI turns it
    into exit code 2): engine.config.ConfigError for a config that fails validation (nothing is
    created), lab.runs.RunNotFound for a run that is not there.
    """
    runs_dir = Path(runs_dir)
    configs_dir = Path(configs_dir) if configs_dir else default_configs_dir()
    run_dir = None
    if target is None and processes.distributed:
        raise config.ConfigError("--nproc/--nnodes start a run from a config; name one (lab launch CONFIG --nproc N).")
    if target is not None:
        try:
            run_dir = _open_target(target, runs_dir, configs_dir, overrides or [], processes)
        except OSError as exc:
            print(f"lab launch: the engine could not be started: {exc}", file=sys.stderr)
            return 1
    app = LabApp(runs_dir, configs_dir, run_dir=run_dir, overrides=[] if run_dir else overrides)
    code = app.run()
    return code if isinstance(code, int) else 0


def _open_target(target: str, runs_dir: Path, configs_dir: Path, overrides: list[str],
                 processes: runs.Processes = runs.ONE_PROCESS) -> Path:
    path = Path(target)
    preset = configs_dir / f"{target}.toml"
    if path.is_file() or path.suffix == ".toml" or (preset.is_file() and not (runs_dir / target).is_dir()):
        cfg_path = path if path.is_file() or path.suffix == ".toml" else preset
        config.check_processes(config.load(cfg_path, overrides), processes.total)  # before anything is created
        run_dir = runs.create_run(cfg_path, overrides, runs_dir)  # ConfigError: nothing is created
        if processes.distributed:
            runs.spawn_engine(run_dir, processes=processes)
        else:
            runs.spawn_engine(run_dir)
        return run_dir
    if processes.distributed:
        raise config.ConfigError("--nproc/--nnodes start a new run from a config; a run that exists is attached "
                                 "to as it runs (resume it with `lab run --resume RUN --nproc N`).")
    if overrides:
        raise config.ConfigError("--set overrides apply to a config, not to an existing run; "
                                 "pass a TOML config to start a new run.")
    return runs.resolve_run(target, runs_dir)
