"""Shared helpers for tests that drive the real engine in subprocesses."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

TINY = """
name = "tiny"
[model]
d_model = 32
n_layers = 1
n_heads = 2
H_cycles = 2
L_cycles = 2
halt_max_steps = 4
[task]
name = "sudoku"
size = 4
[optim]
lr = 3e-3
warmup_steps = 10
[train]
batch_size = 16
max_steps = {max_steps}
threads = 1
[eval]
every = 0
n_puzzles = 32
[checkpoint]
every = {ckpt_every}
keep = 5
[log]
flush_seconds = 0.05
telemetry_seconds = 0.5
print_seconds = 0.5
"""


def tiny_config(tmp_path: Path, max_steps: int = 40, ckpt_every: int = 20, extra: str = "") -> Path:
    p = tmp_path / "tiny.toml"
    p.write_text(TINY.format(max_steps=max_steps, ckpt_every=ckpt_every) + extra)
    return p


def env() -> dict:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
    e["OMP_NUM_THREADS"] = "1"
    return e


def lab(*args: str, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lab.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env(), cwd=ROOT, **kw)


def lab_popen(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "lab.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env(), cwd=ROOT)


def only_run(runs_dir: Path) -> Path:
    runs = [d for d in runs_dir.iterdir() if d.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


def wait_for(predicate, timeout: float = 60, interval: float = 0.05):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError("condition not met in time")


def run_step(run_dir: Path) -> int:
    """The newest step the store knows, read the way a console would."""
    db = run_dir / "run.db"
    if not db.exists():
        return -1
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        row = conn.execute("SELECT max(step) FROM metrics WHERE key = 'loss'").fetchone()
        conn.close()
        return row[0] or -1
    except sqlite3.Error:
        return -1


def kill9(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
