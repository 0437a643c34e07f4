"""Run folders: create one from a config, find one by name, start its engine.

Torch-free: the console imports this. Anything that needs the model (parameter counts)
runs in a subprocess.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from engine import config, protocol
from engine.store import DB_NAME, RunReader, RunStore

DEFAULT_RUNS_DIR = Path("runs")


class RunNotFound(LookupError):
    """The named run does not exist; the message says where we looked."""


def new_run_id(name: str) -> str:
    return f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def create_run(config_path: str | Path, overrides: list[str] | None, runs_dir: str | Path) -> Path:
    """Validate the config, then create `runs_dir/<run_id>/` with config.toml and run.db.

    Raises config.ConfigError before anything is written; the folder appears whole or not
    at all (built under a temporary name, then renamed)."""
    cfg = config.load(config_path, overrides)
    runs_dir = Path(runs_dir)
    runs_dir.mkdir(parents=True, exist_ok=True)
    run_id = new_run_id(cfg.name)
    tmp = runs_dir / f".tmp-{run_id}"
    final = runs_dir / run_id
    try:
        tmp.mkdir()
        text = config.to_toml(cfg)
        (tmp / "config.toml").write_text(text)
        store = RunStore(tmp)
        store.create_run(run_id, cfg.name, text, info={"source": str(config_path), "overrides": overrides or []})
        store.close()
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def resolve_run(ref: str | Path, runs_dir: str | Path) -> Path:
    """A run given as a folder path or as a run id (or unique prefix) under runs_dir."""
    p = Path(ref)
    if (p / "config.toml").is_file():
        return p
    runs_dir = Path(runs_dir)
    direct = runs_dir / str(ref)
    if (direct / "config.toml").is_file():
        return direct
    matches = [d for d in list_run_dirs(runs_dir) if d.name.startswith(str(ref))]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise RunNotFound(f"run {str(ref)!r} is ambiguous in {runs_dir}: it matches {len(matches)} runs; give more of its id.")
    raise RunNotFound(f"no run {str(ref)!r} in {runs_dir}; `lab runs` lists the runs there.")


def list_run_dirs(runs_dir: str | Path) -> list[Path]:
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        return []
    return sorted(d for d in runs_dir.iterdir() if d.is_dir() and not d.name.startswith(".") and (d / DB_NAME).is_file())


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def run_summary(run_dir: Path) -> dict:
    """Status as a person means it: a run marked running whose engine is gone is 'stale'."""
    try:
        reader = RunReader(run_dir)
        row = reader.run() or {}
        reader.close()
    except Exception as exc:  # unreadable store: still listed, with the reason
        return {"id": run_dir.name, "status": "unreadable", "step": None, "error": str(exc), "path": str(run_dir)}
    status = row.get("status", "unknown")
    if status in protocol.LIVE_STATUSES and not pid_alive(row.get("pid")):
        status = "stale"
    return {"id": row.get("id", run_dir.name), "name": row.get("name"), "status": status, "step": row.get("step"),
            "created": row.get("created"), "updated": row.get("updated"), "pid": row.get("pid"), "path": str(run_dir)}


@dataclass(frozen=True)
class Processes:
    """How many processes train a run: `nproc` on this machine, on `nnodes` machines that meet at
    `rdzv_endpoint` (HOST:PORT). One process is the plain engine; more go through torchrun."""

    nproc: int = 1
    nnodes: int = 1
    rdzv_endpoint: str | None = None
    rdzv_backend: str = "c10d"
    rdzv_id: str | None = None

    @property
    def total(self) -> int:
        return self.nproc * self.nnodes

    @property
    def distributed(self) -> bool:
        return self.total > 1

    def launcher_args(self) -> list[str]:
        args = ["--nproc", str(self.nproc), "--nnodes", str(self.nnodes), "--rdzv-backend", self.rdzv_backend]
        if self.rdzv_endpoint:
            args += ["--rdzv-endpoint", self.rdzv_endpoint]
        if self.rdzv_id:
            args += ["--rdzv-id", self.rdzv_id]
        return args


ONE_PROCESS = Processes()


def engine_command(run_dir: Path | None, resume: bool = False, output: str = "quiet",
                   processes: Processes = ONE_PROCESS) -> list[str]:
    """The engine's command line; several processes go through the launcher (engine/launch.py: torchrun), and
    run_dir None joins a run started on another machine."""
    if not processes.distributed:
        cmd = [sys.executable, "-m", "engine", str(run_dir), "--output", output]
    else:
        where = [str(run_dir)] if run_dir is not None else ["--join"]
        cmd = [sys.executable, "-m", "engine.launch", *where, *processes.launcher_args(), "--output", output]
    if resume:
        cmd.append("--resume")
    return cmd


def spawn_engine(run_dir: str | Path, resume: bool = False, processes: Processes = ONE_PROCESS) -> subprocess.Popen:
    """Start the engine detached in its own session; its output goes to engine.log."""
    run_dir = Path(run_dir)
    log = open(run_dir / "engine.log", "ab")
    try:
        return subprocess.Popen(engine_command(run_dir, resume, processes=processes), stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                                cwd=os.getcwd())
    finally:
        log.close()


def describe_config(config_path: str | Path, overrides: list[str] | None = None, timeout: float = 120) -> dict:
    """The resolved config and the model's parameter count, computed in a subprocess so the
    console never imports torch. Raises config.ConfigError for a bad config."""
    config.load(config_path, overrides)  # validate here first: the error reaches the user as is
    cmd = [sys.executable, "-m", "engine.describe", str(config_path)]
    for o in overrides or []:
        cmd += ["--set", o]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise config.ConfigError(out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "describe failed")
    return json.loads(out.stdout)
