"""The stack-language sandbox: semantics, limits, and that no input makes it hang or raise."""

import re
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import itertools

from engine.sandbox import BINARY, BUILTINS, STACK_WORDS, UNARY, CheckResult, Limits, RunResult, check, run

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

BIG = 2**63 - 1
WORDS = sorted(BUILTINS) + ["0", "1", "2", "-1", "3", "99", "f", "g", ": f", ": g", str(BIG), str(-BIG)]
FAST = Limits(max_steps=3000, max_seconds=0.05, max_stack=64, max_calls=16, max_output=64)
SLACK = 0.5  # seconds over the time limit a shared CI machine may add
# the errors the sandbox's docstring promises; anything else ("sandbox fault: ...") is an interpreter bug
USER_ERROR = re.compile(r"(program |word \d+: |the definition of |inputs must be |input |stack underflow: |"
                        r"division by zero: |integer overflow: |step limit: |time limit: |stack limit: |"
                        r"call depth limit: |output limit: )[^\n]*\.$")


def assert_user_error(error):
    assert error == "" or USER_ERROR.fullmatch(error), f"not one of the sandbox's own errors: {error!r}"


CASE = re.compile(r"case \d+ \[[-\d, ]*\]: ")


def assert_check_error(first_error):
    """check()'s first error: a program error as is, or `case N [inputs]: ` and a run's error or a wrong answer."""
    case = CASE.match(first_error)
    rest = first_error[case.end():] if case else first_error
    if not (case and rest.startswith("expected ")):
        assert_user_error(rest)


def assert_well_behaved(result, seconds, limits=FAST):
    assert isinstance(result, RunResult)
    assert result.ok == (result.error == "")
    assert_user_error(result.error)
    assert result.steps <= limits.max_steps and len(result.output) <= limits.max_output
    assert all(isinstance(v, int) and abs(v) <= limits.max_int for v in result.output)
    assert seconds < limits.max_seconds + SLACK


def test_an_interpreter_bug_is_not_a_well_behaved_outcome(monkeypatch):
    from engine import sandbox

    def broken(program, inputs, limits):
        return [][0]  # the kind of slip the fuzz tests exist to catch

    monkeypatch.setattr(sandbox, "_execute", broken)
    result = run("1 .")
    assert result.error == "sandbox fault: IndexError."  # reported, never raised, so the engine lives ...
    with pytest.raises(AssertionError, match="not one of the sandbox's own errors"):
        assert_well_behaved(result, 0.0)  # ... but the fuzz tests fail on it
    with pytest.raises(AssertionError, match="not one of the sandbox's own errors"):
        assert_check_error(check("1 .", [((), (1,))]).first_error)


@pytest.mark.timeout(60)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(WORDS), max_size=40), st.lists(st.integers(-10, 10), max_size=4))
def test_random_word_programs_never_hang_or_raise(words, inputs):
    start = time.perf_counter()
    result = run(" ".join(words), inputs, FAST)
    assert_well_behaved(result, time.perf_counter() - start)
    assert_check_error(check(" ".join(words), [(tuple(inputs), (1,))], FAST).first_error)


# Programs of random words rarely compile (an 'if' without its 'end'), so the interpreter is also
# fuzzed with well-formed programs: blocks nested in if/else/while, two words that call each other.
PUSH = st.sampled_from(["0", "1", "2", "3", "-1", "99", str(BIG), str(-BIG)])
OPS = sorted(BINARY + UNARY + STACK_WORDS + (".",))
OP = st.sampled_from(OPS + ["f", "g"])


def _nested(inner):
    seq = st.lists(inner, max_size=6).map(" ".join)
    return st.one_of(seq, seq.map(lambda b: f"while {b} end"), seq.map(lambda b: f"if {b} end"),
                     st.tuples(seq, seq).map(lambda t: f"if {t[0]} else {t[1]} end"))


BLOCK = st.recursive(st.one_of(PUSH, OP), _nested, max_leaves=30)
WELL_FORMED = st.tuples(BLOCK, BLOCK, BLOCK).map(lambda t: f"{t[0]} : f {t[1]} ; : g {t[2]} ;")


@pytest.mark.timeout(60)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(WELL_FORMED, st.lists(st.integers(-10, 10), max_size=6))
def test_well_formed_random_programs_run_and_end_in_the_sandboxs_own_errors(program, inputs):
    start = time.perf_counter()
    result = run(program, inputs, FAST)
    assert_well_behaved(result, time.perf_counter() - start)
    assert result.steps > 0  # it compiled: the interpreter itself was exercised


@pytest.mark.timeout(60)
def test_every_pair_of_words_on_every_small_stack_ends_in_the_sandboxs_own_errors():
    """Exhaustive where fuzzing is thin: each word at exactly the depth it needs, next to the bound,
    in sequence and as the test or body of an if/else/while."""
    values = [BIG, -BIG, 0, 1, -1]
    short = Limits(max_steps=200, max_seconds=0.05, max_stack=8, max_calls=4, max_output=8)
    shapes = ("{} {}", "{} if {} end", "if {} else {} end", "{} while {} end")
    for (first, second), shape in itertools.product(itertools.product(OPS + [""], OPS), shapes):
        for depth in range(5):
            for inputs in (values[:depth], values[::-1][:depth]):
                result = run(shape.format(first, second), inputs, short)
                assert result.steps > 0 and result.ok == (result.error == ""), (shape, first, second, inputs)
                assert_user_error(result.error)


limits_near_zero = st.builds(Limits, max_steps=st.integers(0, 3000), max_seconds=st.sampled_from([0.0, 0.05]),
                             max_stack=st.integers(0, 64), max_calls=st.integers(0, 16),
                             max_output=st.integers(0, 64), max_chars=st.integers(0, 400))


@pytest.mark.timeout(60)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(WORDS), max_size=60),
       st.lists(st.one_of(st.integers(-3, 3), st.sampled_from([BIG, -BIG, BIG + 1])), max_size=5), limits_near_zero)
def test_random_programs_under_tiny_limits_end_in_the_sandboxs_own_errors(words, inputs, limits):
    start = time.perf_counter()
    result = run(" ".join(words), inputs, limits)
    assert_well_behaved(result, time.perf_counter() - start, limits)


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
    assert_check_error(checked.first_error)
