"""Cases 2, 3 and 11 at the trainer level (the checkpoint-level checks live in tests/test_checkpoint.py,
the process-level SIGTERM and kill -9 checks in tests/test_engine.py):
a signal in the middle of a step, a damaged newest checkpoint, a checkpoint carrying a code-running pickle."""

from tests.faults.scenarios import case_damaged_checkpoint, case_pickle_checkpoint, case_sigterm_mid_step


def test_sigterm_in_the_middle_of_a_step_checkpoints_that_step_and_stops(tmp_path):
    outcome = case_sigterm_mid_step(tmp_path, at_step=7)
    assert outcome.ok, outcome.happened


def test_resume_falls_back_from_a_truncated_or_flipped_newest_checkpoint(tmp_path):
    outcome = case_damaged_checkpoint(tmp_path)
    assert outcome.ok, outcome.happened


def test_resume_refuses_a_pickle_payload_and_nothing_runs(tmp_path):
    outcome = case_pickle_checkpoint(tmp_path)
    assert outcome.ok, outcome.happened
