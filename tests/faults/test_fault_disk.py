"""Case 6: the disk fills up while a checkpoint is written. The previous checkpoint stays intact,
no temporary folder is left, an alert is raised and training goes on. Injected, and on a real
small filesystem (tmpfs, mounted as root); and a save killed half-way."""

import errno
import os
import signal
import subprocess
import sys

import pytest
import torch

from engine import checkpoint, protocol
from engine.store import RunReader, RunStore
from lab import runs
from tests.faults.scenarios import (alerts, case_disk_full, case_real_disk_full, case_store_failure,
                                   in_process_trainer, killed_save)
from tests.helpers import ROOT, env, fill_disk, kill9, small_disk, tiny_config, wait_for


def test_injected_enospc_keeps_the_previous_checkpoint_and_training_goes_on(tmp_path):
    outcome = case_disk_full(tmp_path)
    assert outcome.ok, outcome.happened


def test_enospc_on_the_second_file_of_a_save(tmp_path, monkeypatch):
    """The disk fills while state.pt is written (the weights already on disk), the way a real full disk fails."""
    tr = in_process_trainer(tmp_path, "full", max_steps=12, ckpt_every=4)
    write = checkpoint._write

    def fills_up_at_step_8(path, data):
        if tr.step == 8 and path.name == checkpoint.STATE:
            raise OSError(errno.ENOSPC, "No space left on device")
        return write(path, data)

    monkeypatch.setattr(checkpoint, "_write", fills_up_at_step_8)
    assert tr.run() == 0 and tr.step == 12 and tr.status == "finished"
    names = [p.name for p in checkpoint.list_checkpoints(tr.state.root)]
    assert names == ["step-00000000", "step-00000004", "step-00000012"]
    assert not [p for p in tr.state.root.iterdir() if p.name.startswith(".")]  # the temp folder is gone
    assert checkpoint.load(tr.state.root / "step-00000004").step == 4  # checksums verify
    assert [a["level"] for a in alerts(tr.run_dir) if "step 8 failed" in a["message"]] == ["error"]
    assert tr.last_checkpoint_step == 12


# ---- a real full disk, and a save killed half-way ----------------------------------------------


def _leftovers(root):
    return sorted(p.name for p in root.iterdir() if p.name.startswith("."))


def test_a_save_that_does_not_fit_a_real_full_disk_keeps_the_previous_checkpoint(tmp_path):
    tensors = {"w": torch.randn(128, 256)}  # 128 KB of weights, as much again of state
    state = {"step": 1, "m": torch.randn(128, 256)}
    with small_disk(tmp_path / "checkpoints", "2m") as root:
        checkpoint.save(root, 1, tensors, state)
        filler = fill_disk(root, leave=64 * 1024)  # room for part of the next checkpoint, not all of it
        with pytest.raises(OSError) as info:
            checkpoint.save(root, 2, tensors, dict(state, step=2))
        assert info.value.errno == errno.ENOSPC
        assert [p.name for p in checkpoint.list_checkpoints(root)] == ["step-00000001"]
        assert _leftovers(root) == []  # no half-written folder
        ck, warnings = checkpoint.load_latest(root)
        assert warnings == [] and ck.step == 1 and torch.equal(ck.tensors["w"], tensors["w"])
        filler.unlink()
        checkpoint.save(root, 3, tensors, dict(state, step=3))  # room again: saving works again
        assert checkpoint.load_latest(root)[0].step == 3


def test_the_run_store_on_a_real_full_disk_says_so_and_keeps_its_rows(tmp_path):
    with small_disk(tmp_path / "run", "2m") as run:
        s = RunStore(run, flush_seconds=0.05)
        s.create_run("r", "r", "")
        assert s.flush() is True
        filler = fill_disk(run)
        for i in range(1000):  # 2000 rows: a few hundred KB, room enough once the filler is gone
            s.log_metrics(i, {"loss": 1.0, "acc": 0.5})
        assert s.flush() is False
        error = s.take_error()
        assert error is not None and "full" in error, error
        filler.unlink()
        assert s.flush() is True
        r = RunReader(run)
        assert len(r.metric("loss")) == 1000
        r.close()
        s.close()


@pytest.mark.parametrize("where", ["write", "swap"])
def test_kill9_in_the_middle_of_a_save_leaves_the_previous_checkpoint_loadable(tmp_path, where):
    root = tmp_path / "checkpoints"
    left, ck, warnings, after = killed_save(root, where)
    assert left, "the killed save left nothing behind to clean"
    assert warnings == [] and ck.step == 1 and torch.equal(ck.tensors["w"], torch.full((64, 64), 1.0))
    assert after == []  # the load tidied what the killed save left
    checkpoint.save(root, 3, {"w": torch.zeros(1)}, {"step": 3})
    assert [p.name for p in checkpoint.list_checkpoints(root)] == ["step-00000001", "step-00000003"]
    assert _leftovers(root) == []


def test_a_run_whose_checkpoint_disk_is_really_full_goes_on_and_keeps_the_last_good_one(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a small filesystem needs root")
    outcome = case_real_disk_full(tmp_path)
    assert outcome.ok, outcome.happened


def test_a_run_store_that_cannot_write_is_reported_and_recovers(tmp_path):
    outcome = case_store_failure(tmp_path)
    assert outcome.ok, outcome.happened


def test_leftovers_of_a_live_saver_are_not_touched(tmp_path):
    root = tmp_path / "checkpoints"
    checkpoint.save(root, 1, {"w": torch.zeros(1)}, {"step": 1})
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        live_tmp = root / f".tmp-step-00000002-{holder.pid}"
        live_tmp.mkdir()
        assert checkpoint.load_latest(root)[0].step == 1
        assert live_tmp.is_dir()  # another process (a live engine) may be mid-save: left alone
    finally:
        kill9(holder)
    checkpoint.load_latest(root)
    assert not live_tmp.exists()


@pytest.mark.slow  # a real engine process
def test_a_live_run_whose_checkpoint_disk_fills_alerts_and_keeps_its_last_checkpoint(tmp_path):
    cfg = tiny_config(tmp_path, max_steps=10**6, ckpt_every=5)
    run = runs.create_run(cfg, [], tmp_path / "runs")
    with small_disk(run / "checkpoints", "2m") as root:
        proc = subprocess.Popen([sys.executable, "-m", "engine", str(run), "--output", "quiet"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env(), cwd=ROOT)
        try:
            wait_for(lambda: len(checkpoint.list_checkpoints(root)) >= 2 and (run / protocol.SOCKET_NAME).exists(),
                     timeout=120)
            fill_disk(root)
            failed = wait_for(lambda: [a["message"] for a in alerts(run) if "No space left" in a["message"]],
                              timeout=60)
            assert failed[0].startswith("checkpoint at step ") and "training goes on" in failed[0]
            proc.send_signal(signal.SIGTERM)  # its stop checkpoint cannot be written either
            assert proc.wait(timeout=60) == 0
        finally:
            if proc.poll() is None:
                kill9(proc)
        status = RunReader(run).run()["status"]
        assert status == "stopped"
        assert _leftovers(root) == []
        ck, warnings = checkpoint.load_latest(root)
        assert warnings == [] and ck.step >= 5
        assert checkpoint.list_checkpoints(root)[-1].name == checkpoint.step_dir_name(ck.step)
