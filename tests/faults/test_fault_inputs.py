"""Cases 10 and 12: bad configs through `lab run`, hostile programs in the sandbox.
(tests/test_config.py checks the schema with hypothesis; here the whole CLI path is driven.)"""

import functools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.faults.scenarios import _leaves, bad_values, case_bad_configs, case_sandbox, config_refusal

LEAVES = list(_leaves())
KINDS = ["wrong type", "negative", "NaN", "empty string", "huge"]


@settings(max_examples=60, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(leaf=st.sampled_from(LEAVES), kind=st.sampled_from(KINDS))
def test_a_bad_value_anywhere_exits_2_naming_the_key(tmp_path_factory, leaf, kind):
    key, tp = leaf
    assert config_refusal(tmp_path_factory.mktemp("cfg"), key, bad_values(tp)[kind]) is None


@pytest.mark.slow
def test_every_field_with_every_kind_of_bad_value(tmp_path):
    outcome = case_bad_configs(tmp_path, examples=200)
    assert outcome.ok, outcome.happened


def test_hostile_programs_stop_within_their_limits(tmp_path):
    outcome = case_sandbox(tmp_path, slack=30.0)  # the bench holds it to 3x; a test must not time a busy machine
    assert outcome.ok, outcome.happened


@pytest.mark.parametrize("case, limit_off", [("calls Python", {"max_calls": 10**9}),
                                             ("runs a shell", {"max_stack": 10**9})])
def test_a_hostile_program_fails_its_case_when_its_limit_is_off(tmp_path, monkeypatch, case, limit_off):
    from engine import sandbox

    monkeypatch.setattr(sandbox, "Limits", functools.partial(sandbox.Limits, **limit_off))  # a broken build
    outcome = case_sandbox(tmp_path, slack=30.0)
    assert not outcome.ok and f"{case}: ok=False 'step limit" in outcome.happened, outcome.happened
