"""The cases that need real processes: engines killed and resumed, consoles killed, concurrent
clients, garbage on a live socket, a NaN run through the CLI, the store polled during a run. Slow."""

import pytest

from tests.faults.scenarios import (case_concurrent_commands, case_console_killed, case_hostile_client,
                                   case_kill_resume, case_nan_rollback, case_socket_garbage, case_store_polling)

pytestmark = pytest.mark.slow


def test_kill9_at_three_random_steps_then_resume_is_bit_identical(tmp_path):
    outcome = case_kill_resume(tmp_path, kills=3, seed=1)
    assert outcome.ok, outcome.happened


def test_nan_rollback_and_divergence_through_the_cli(tmp_path):
    outcome = case_nan_rollback(tmp_path)
    assert outcome.ok, outcome.happened


def test_console_killed_engine_goes_on_and_a_new_console_sees_everything(tmp_path):
    outcome = case_console_killed(tmp_path)
    assert outcome.ok, outcome.happened


def test_two_clients_and_ctl_at_once_each_command_acked_once_in_order(tmp_path):
    outcome = case_concurrent_commands(tmp_path, rounds=3)
    assert outcome.ok, outcome.happened


def test_garbage_on_a_live_engine_socket(tmp_path):
    outcome = case_socket_garbage(tmp_path, examples=25)
    assert outcome.ok, outcome.happened


def test_store_polled_every_250ms_during_a_run_is_never_locked(tmp_path):
    outcome = case_store_polling(tmp_path, seconds=4)
    assert outcome.ok, outcome.happened


def test_a_hostile_client_leaves_the_engine_serving_others(tmp_path):
    outcome = case_hostile_client(tmp_path)
    assert outcome.ok, outcome.happened
