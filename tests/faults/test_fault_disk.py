"""Case 6: the disk fills up while a checkpoint is written. The previous checkpoint stays intact,
no temporary folder is left, an alert is raised and training goes on."""

import errno

from tests.faults.scenarios import alerts, case_disk_full, in_process_trainer
from engine import checkpoint


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
