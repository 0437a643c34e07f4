"""The console as a person uses it: the real quickstart in tmux, keys pressed, the screen read."""

import re
import shutil
import subprocess
import time

import pytest

from engine.store import RunReader
from tests.helpers import ROOT, run_step, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")]


def screen(session: str) -> str:
    return subprocess.run(["tmux", "capture-pane", "-p", "-t", session], capture_output=True, text=True).stdout


def keys(session: str, *k: str) -> None:
    subprocess.run(["tmux", "send-keys", "-t", session, *k], check=True)


def test_quickstart_in_tmux_pause_resume_stop(tmp_path):
    session = f"labe2e{int(time.time())}"
    runs_dir = tmp_path / "runs"
    cmd = (f"cd {ROOT} && OMP_NUM_THREADS=1 {ROOT}/.venv/bin/lab launch configs/quickstart.toml "
           f"--runs-dir {runs_dir} --set train.threads=1; sleep 30")
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "160", "-y", "48", cmd], check=True)
    try:
        run = wait_for(lambda: next((d for d in runs_dir.iterdir() if not d.name.startswith(".")), None)
                       if runs_dir.exists() else None, timeout=60)
        wait_for(lambda: run_step(run) >= 10, timeout=120)
        wait_for(lambda: "loss" in screen(session) and "live" in screen(session), timeout=60)  # metrics on screen
        time.sleep(1.0)
        keys(session, "Space")
        def acked_pause():
            text = screen(session)
            return text if re.search(r"pause (?:applied at step|✓ step) [\d,]+", text) else None

        text = wait_for(acked_pause, timeout=60)
        paused_at = int(re.search(r"pause (?:applied at step|✓ step) ([\d,]+)", text).group(1).replace(",", ""))
        time.sleep(1.0)
        assert RunReader(run).run()["status"] == "paused"
        keys(session, "Space")
        wait_for(lambda: re.search(r"resume (?:applied at step|✓ step) [\d,]+", screen(session)), timeout=60)
        wait_for(lambda: run_step(run) > paused_at + 2, timeout=60)
        keys(session, "x")
        time.sleep(1.0)
        keys(session, "y")  # confirm
        wait_for(lambda: RunReader(run).run()["status"] == "stopped", timeout=60)
        commands = [c["cmd"] for c in RunReader(run).commands()]
        assert commands[:3] == ["pause", "resume", "stop"]
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
