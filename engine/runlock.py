"""One engine per run: an exclusive lock on `engine.lock` in the run folder.

The engine process takes the lock before it opens the store or binds the socket and holds it
for its whole life; the kernel releases it when the process ends, however it ends (kill -9
included), so a stale lock file never blocks a resume. A second engine on the same run is
refused with one sentence before it touches anything.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

LOCK_NAME = "engine.lock"
# set by the launcher of a distributed run (engine/launch.py), which holds the lock for all its ranks
LAUNCHER_HOLDS_LOCK = "TRM_LAB_LAUNCHER_HOLDS_LOCK"


class RunLockError(RuntimeError):
    """The run's lock cannot be taken; the message says why and what to do, in one sentence."""


class RunLock:
    """A held lock; released by `release()` or by the process ending."""

    def __init__(self, path: Path, fd: int):
        self.path = path
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the only descriptor drops the flock
            self._fd = None


def hold_run_lock(run_dir: str | Path) -> RunLock:
    """Take the run's exclusive lock or raise RunLockError naming the engine that holds it."""
    run_dir = Path(run_dir)
    path = run_dir / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise RunLockError(f"cannot create {path} to claim run {run_dir.name} ({exc.strerror}); "
                           "the run folder must be writable.") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        os.close(fd)
        who = f"process {holder}" if holder.isdigit() else "another process"
        raise RunLockError(f"run {run_dir.name} already has a live engine ({who}); attach to it with "
                           f"`lab launch {run_dir.name}` or stop it with `lab ctl {run_dir.name} stop` first.") from None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)  # only for the refusal message of a second engine
    return RunLock(path, fd)
