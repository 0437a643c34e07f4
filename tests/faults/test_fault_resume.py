"""Cases 2, 3, 11 and 16 at the trainer level (the checkpoint-level checks live in tests/test_checkpoint.py,
the process-level SIGTERM and kill -9 checks in tests/test_engine.py):
a signal in the middle of a step, a damaged newest checkpoint, a checkpoint carrying a code-running pickle,
a checkpoint that verifies but does not fit the model."""

from tests.faults.scenarios import (case_damaged_checkpoint, case_misfit_checkpoint, case_pickle_checkpoint,
                                   case_sigterm_mid_step)


def test_sigterm_in_the_middle_of_a_step_checkpoints_that_step_and_stops(tmp_path):
    outcome = case_sigterm_mid_step(tmp_path, at_step=7)
    assert outcome.ok, outcome.happened


def test_resume_falls_back_from_a_truncated_or_flipped_newest_checkpoint(tmp_path):
    outcome = case_damaged_checkpoint(tmp_path)
    assert outcome.ok, outcome.happened


def test_resume_refuses_a_pickle_payload_and_nothing_runs(tmp_path):
    outcome = case_pickle_checkpoint(tmp_path)
    assert outcome.ok, outcome.happened


def test_a_checkpoint_that_verifies_but_does_not_fit_is_skipped(tmp_path):
    outcome = case_misfit_checkpoint(tmp_path)
    assert outcome.ok, outcome.happened
