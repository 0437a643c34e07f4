"""Faults of data-parallel runs (torchrun, 2 processes on CPU): a rank killed with kill -9 fails the run with
one sentence naming it, and `lab run --resume` continues at the same or another number of processes. Slow."""

import pytest

from tests.faults.scenarios import case_lead_killed, case_rank_killed

pytestmark = pytest.mark.slow


def test_a_killed_rank_fails_the_run_naming_it_and_resume_crosses_world_sizes(tmp_path):
    outcome = case_rank_killed(tmp_path)
    assert outcome.ok, outcome.happened


def test_a_killed_lead_fails_the_run_naming_it_and_resume_continues(tmp_path):
    outcome = case_lead_killed(tmp_path)
    assert outcome.ok, outcome.happened
