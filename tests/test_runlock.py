"""One engine per run: a second engine on a live run is refused before it touches anything."""

import os
import subprocess
import sys

import pytest

from tests.faults.scenarios import engine_pid, live_engine
from engine import checkpoint, protocol, runlock
from tests.helpers import ROOT, env, kill9, lab

HOLDER = """
import sys, time
from engine import runlock
lock = runlock.hold_run_lock(sys.argv[1])
print("held", flush=True)
time.sleep(600)
"""


def test_the_lock_is_exclusive_until_released(tmp_path):
    first = runlock.hold_run_lock(tmp_path)
    with pytest.raises(runlock.RunLockError, match=f"process {os.getpid()}"):
        runlock.hold_run_lock(tmp_path)
    first.release()
    runlock.hold_run_lock(tmp_path).release()


def test_a_lock_held_by_another_process_is_refused_and_freed_by_kill9(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                            env=env(), cwd=ROOT)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(runlock.RunLockError) as info:
            runlock.hold_run_lock(tmp_path)
        message = str(info.value)
        assert f"process {proc.pid}" in message and "lab ctl" in message and "\n" not in message
    finally:
        kill9(proc)
    runlock.hold_run_lock(tmp_path).release()  # the kernel dropped the dead holder's lock


def test_an_unwritable_run_folder_is_one_sentence(tmp_path):
    with pytest.raises(runlock.RunLockError, match="must be writable"):
        runlock.hold_run_lock(tmp_path / "missing")


@pytest.mark.slow  # two real engines: about 15 s on two cores
def test_a_second_engine_on_a_live_run_is_refused_before_touching_it(tmp_path):
    with live_engine(tmp_path) as (proc, run):
        sock = run / protocol.SOCKET_NAME
        inode = os.stat(sock).st_ino
        ckpts = [p.name for p in checkpoint.list_checkpoints(run / "checkpoints")]
        for argv in (["-m", "lab.cli", "run", "--resume", str(run)],
                     ["-m", "engine", str(run), "--resume", "--output", "quiet"]):
            out = subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=120, env=env(),
                                 cwd=ROOT)
            assert out.returncode == 2, out.stderr
            lines = out.stderr.strip().splitlines()
            assert len(lines) == 1 and f"run {run.name} already has a live engine (process {proc.pid})" in lines[0]
        assert os.stat(sock).st_ino == inode  # the live socket was not unlinked
        assert [p.name for p in checkpoint.list_checkpoints(run / "checkpoints")] == ckpts
        assert engine_pid(run) == proc.pid
        status = lab("ctl", str(run), "status", "--json")
        assert status.returncode == 0, status.stderr  # the first engine still answers
