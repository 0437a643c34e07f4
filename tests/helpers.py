"""Shared helpers for tests that drive the real engine in subprocesses."""

from __future__ import annotations

import contextlib
import errno
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


@contextlib.contextmanager
def small_disk(path: Path, size: str = "2m"):
    """A real filesystem of `size` (tmpfs) mounted at `path` for the test; skips where mounting is not allowed."""
    import pytest  # here, not at the top: tests/faults/scenarios.py imports these helpers without pytest

    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a small filesystem needs root")
    out = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
                         capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip(f"mount -t tmpfs is not permitted here ({out.stderr.strip() or out.returncode})")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill_disk(folder: Path, leave: int = 0) -> Path:
    """Fill the filesystem under `folder` with one file, then free about `leave` bytes of it."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 65536)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC, exc
    finally:
        os.close(fd)
    os.truncate(filler, max(0, filler.stat().st_size - leave))
    return filler
