"""The stack-language sandbox: semantics, limits, and that no input makes it hang or raise."""

import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.sandbox import BUILTINS, CheckResult, Limits, RunResult, check, run

# ----------------------------------------------------------------------------- semantics


@pytest.mark.parametrize("program, inputs, output", [
    ("1 2 + .", [], [3]),
    ("7 3 - . 7 3 * . 7 2 / . 7 2 % .", [], [4, 21, 3, 1]),
    ("-7 2 / . -7 2 % . 7 -2 / .", [], [-4, 1, -4]),  # floor division, like Python
    ("3 neg . 0 not . 5 not .", [], [-3, 1, 0]),
    ("2 2 = . 1 2 < . 1 2 > .", [], [1, 1, 0]),
    ("1 2 swap . .", [], [1, 2]),
    ("1 2 over . . .", [], [1, 2, 1]),
    ("1 2 3 rot . . .", [], [1, 3, 2]),
    ("5 dup drop .", [], [5]),
    (". .", [4, 9], [9, 4]),  # inputs start on the stack, the first deepest
    ("if 10 else 20 end .", [1], [10]),
    ("if 10 else 20 end .", [0], [20]),
    ("if 10 . end 30 .", [0], [30]),
    ("dup while dup . 1 - dup end drop", [3], [3, 2, 1]),
    (": sq dup * ; sq .", [9], [81]),
    (": fact dup 1 > if dup 1 - fact * end ; fact .", [6], [720]),  # recursion
    ("twice . : twice dup + ;", [21], [42]),  # words may be used before their definition
    ("1 2 +", [], []),
])
def test_semantics(program, inputs, output):
    result = run(program, inputs)
    assert result == RunResult(True, tuple(output), "", result.steps) and result.steps > 0


@pytest.mark.parametrize("program, message", [
    ("", "empty"),
    ("+", "stack underflow"),
    ("1 0 /", "division by zero"),
    ("1 0 %", "division by zero"),
    ("frobnicate", "unknown word 'frobnicate'"),
    ("if 1", "no closing 'end'"),
    ("1 end", "without an open"),
    ("else", "without an open 'if'"),
    (": f", "no closing ';'"),
    ("; 1", "without a ':'"),
    (": dup 1 ;", "needs a new name"),
    (": f 1 ; : f 2 ;", "defined twice"),
    (": f : g ; ;", "cannot nest"),
    ("12345678901234567890 .", "longer than 19 digits"),
    ("١٢ .", "unknown word"),  # non-ASCII digits are not integers here
    ("while", "no closing 'end'"),
])
def test_errors_are_clear_sentences(program, message):
    result = run(program)
    assert not result.ok and message in result.error and result.error.endswith(".")


# ----------------------------------------------------------------------------- limits
# (a pytest timeout on each: a broken limit must fail the test, not hang the suite)


def timed(program, inputs=(), limits=Limits()):
    start = time.perf_counter()
    result = run(program, inputs, limits)
    return result, time.perf_counter() - start


@pytest.mark.timeout(10)
def test_endless_loop_stops_at_the_step_limit():
    result, seconds = timed("1 while 1 end", limits=Limits(max_steps=5000))
    assert not result.ok and "step limit" in result.error and result.steps == 5000
    assert seconds < 1.0


@pytest.mark.timeout(10)
def test_endless_loop_stops_at_the_time_limit():
    result, seconds = timed("1 while 1 end", limits=Limits(max_steps=10**12, max_seconds=0.05))
    assert not result.ok and "time limit" in result.error
    assert 0.05 <= seconds < 0.5


@pytest.mark.timeout(10)
def test_unbounded_allocation_stops_at_the_stack_limit():
    result, _ = timed("1 while 1 1 end", limits=Limits(max_stack=100))
    assert not result.ok and "stack limit" in result.error and result.steps < 1000


@pytest.mark.timeout(10)
def test_output_flood_stops_at_the_output_limit():
    result, _ = timed("1 while 7 . 1 end", limits=Limits(max_output=50))
    assert not result.ok and "output limit" in result.error and result.output == (7,) * 50


@pytest.mark.timeout(10)
def test_runaway_recursion_stops_at_the_call_depth_limit():
    result, seconds = timed(": f 1 f ; f", limits=Limits(max_calls=32))
    assert not result.ok and "call depth" in result.error and seconds < 0.5
    # deep but bounded recursion is fine under a higher limit
    assert run(": down dup if 1 - down end ; down .", [30], Limits(max_calls=40)).output == (0,)


@pytest.mark.timeout(10)
def test_huge_integers_are_refused_within_a_few_steps():
    result, _ = timed("2 dup while dup * dup end")  # squares 2 until it would pass 2**63
    assert not result.ok and "integer overflow" in result.error and result.steps < 100
    assert "integer overflow" in run("9223372036854775807 1 +").error
    assert run("9223372036854775807 .").output == (2**63 - 1,)
    assert not run(".", [2**70]).ok  # inputs are held to the same bound


def test_long_programs_are_refused():
    result = run("1 " * 3000, limits=Limits(max_chars=4096))
    assert not result.ok and "characters" in result.error


def test_non_text_never_raises():
    assert "UTF-8" in run(b"\xff\xfe\x00").error
    assert run(b"1 2 + .").output == (3,)
    assert "text" in run(None).error and "text" in run(12).error
    assert not run("1 .", ["x"]).ok and not run("1 .", None).ok


# ----------------------------------------------------------------------------- check


def test_check_counts_passes_and_explains_the_first_failure():
    cases = [((1,), (3,)), ((2,), (5,)), ((0,), (1,)), ((5,), (99,))]
    assert check("2 * 1 + .", cases) == CheckResult(3, 1, "case 4 [5]: expected [99], got [11].")
    looping = check("1 while 1 end", cases[:2], Limits(max_steps=1000))
    assert looping.failed == 2 and "step limit" in looping.first_error and not looping.ok
    broken = check("2 * +", cases)
    assert broken.passed == 0 and "case 1 [1]: stack underflow" in broken.first_error
    assert check("nope", cases) == CheckResult(0, 4, "word 1: unknown word 'nope'.")
    assert check("1 + .", [((1,), (2,))]).ok


# ----------------------------------------------------------------------------- random programs

WORDS = sorted(BUILTINS) + ["0", "1", "2", "-1", "3", "99", "f", "g", ": f", ": g"]
FAST = Limits(max_steps=3000, max_seconds=0.05, max_stack=64, max_calls=16, max_output=64)
SLACK = 0.5  # seconds over the time limit a shared CI machine may add


def assert_well_behaved(result, seconds):
    assert isinstance(result, RunResult)
    assert result.ok == (result.error == "")
    assert result.steps <= FAST.max_steps and len(result.output) <= FAST.max_output
    assert all(isinstance(v, int) and abs(v) <= FAST.max_int for v in result.output)
    assert seconds < FAST.max_seconds + SLACK


@pytest.mark.timeout(60)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(WORDS), max_size=40), st.lists(st.integers(-10, 10), max_size=4))
def test_random_word_programs_never_hang_or_raise(words, inputs):
    start = time.perf_counter()
    result = run(" ".join(words), inputs, FAST)
    assert_well_behaved(result, time.perf_counter() - start)


@pytest.mark.timeout(60)
@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_never_hang_or_raise(data):
    start = time.perf_counter()
    result = run(data, [], FAST)
    assert_well_behaved(result, time.perf_counter() - start)


@pytest.mark.timeout(60)
@settings(max_examples=200, deadline=None)
@given(st.text(max_size=100), st.lists(st.integers(), max_size=3))
def test_random_text_and_inputs_never_hang_or_raise(text, inputs):
    start = time.perf_counter()
    result = run(text, inputs, FAST)
    assert_well_behaved(result, time.perf_counter() - start)
    start = time.perf_counter()
    checked = check(text, [(tuple(inputs), (1,))], FAST)
    assert checked.passed + checked.failed == 1 and time.perf_counter() - start < FAST.max_seconds + SLACK
