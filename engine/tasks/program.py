"""Tool use: the answer is a short program in the sandbox's stack language (see engine/sandbox.py).

The question states a function ("f(x)=x*3-5", "f(n)=4*(1+..+n)"); the target is a reference
program that computes it, and the item carries test cases (inputs -> printed output) computed
by plain Python, independently of the interpreter. A predicted program is graded by running it
in the sandbox on those cases: any program that passes them all is right, not only the reference.

Difficulty 1: straight-line arithmetic on one input. 2: two inputs or a branch. 3: loops and
defined words.
"""

from __future__ import annotations

import random

from engine.sandbox import CheckResult, Limits, check
from engine.tasks.base import Sample
from engine.tasks.tokenizer import EOS, PAD, SEP, TOKENIZER, Problem, TextTask

N_CASES = 5

# Each template: (values) -> (question, reference program, python function, input ranges).
# The python function gives the expected output list for one input tuple.


def affine(rng: random.Random):
    a, b = rng.randint(2, 9), rng.choice([n for n in range(-20, 21) if n])
    op = "+" if b > 0 else "-"
    return f"f(x)=x*{a}{op}{abs(b)}", f"{a} * {abs(b)} {op} .", lambda x: [x * a + b], [(-20, 20)]


def square_plus(rng: random.Random):
    b = rng.randint(1, 30)
    return f"f(x)=x*x+{b}", f"dup * {b} + .", lambda x: [x * x + b], [(-20, 20)]


def shifted_mod(rng: random.Random):
    k, m = rng.randint(1, 9), rng.randint(2, 9)
    return f"f(x)=(x+{k})%{m}", f"{k} + {m} % .", lambda x: [(x + k) % m], [(-30, 30)]


def clamp_below(rng: random.Random):
    t, c = rng.randint(-5, 10), rng.randint(-9, 9)
    return (f"f(x)=x if x>{t} else {c}", f"dup {t} > not if drop {c} end .",
            lambda x: [x if x > t else c], [(-20, 20)])


def weighted_sum(rng: random.Random):
    k, m = rng.randint(2, 9), rng.randint(2, 9)
    return f"f(a,b)={k}a+{m}b", f"{m} * swap {k} * + .", lambda a, b: [k * a + m * b], [(-20, 20), (-20, 20)]


def distance_plus(rng: random.Random):
    c = rng.randint(1, 40)
    return (f"f(a,b)=|a-b|+{c}", f"- dup 0 < if neg end {c} + .",
            lambda a, b: [abs(a - b) + c], [(-20, 20), (-20, 20)])


def max_plus(rng: random.Random):
    c = rng.randint(1, 40)
    return (f"f(a,b)=max(a,b)+{c}", f"over over < if swap end drop {c} + .",
            lambda a, b: [max(a, b) + c], [(-20, 20), (-20, 20)])


def scaled_triangle(rng: random.Random):
    k = rng.randint(1, 20)
    return (f"f(n)={k}*(1+..+n)", f"0 swap dup while dup {k} * rot + swap 1 - dup end drop .",
            lambda n: [k * n * (n + 1) // 2], [(0, 15)])


def countdown(rng: random.Random):
    s = rng.randint(1, 9)
    return (f"print x,x-{s},.. while >0", f"dup 0 > while dup . {s} - dup 0 > end drop",
            lambda x: list(range(x, 0, -s)), [(-3, 15)])


def power_of(rng: random.Random):
    b = rng.randint(2, 9)
    return (f"f(n)={b}^n", f"1 swap dup while swap {b} * swap 1 - dup end drop .",
            lambda n: [b**n], [(0, 12)])


def sum_of_squares(rng: random.Random):
    a = rng.randint(1, 20)
    return (f"f(x)=sq(x)+sq(x+{a})", f": sq dup * ; dup sq swap {a} + sq + .",
            lambda x: [x * x + (x + a) ** 2], [(-20, 20)])


TEMPLATES = {
    1: (affine, square_plus, shifted_mod),
    2: (clamp_below, weighted_sum, distance_plus, max_plus),
    3: (scaled_triangle, countdown, power_of, sum_of_squares),
}
MAKERS = {f"program/{maker.__name__}": maker for makers in TEMPLATES.values() for maker in makers}


class ProgramTask(TextTask):
    """Write a stack-language program for a stated function; graded by running it on test cases."""

    name = "program"
    description = "tool use: write a stack-language program for f; it is run in the sandbox on test cases"
    seq_len = 96

    def __init__(self, difficulty: int = 1, seed: int = 0, limits: Limits = Limits()):
        super().__init__(difficulty, seed)
        self.limits = limits

    def templates(self) -> list[str]:
        return [f"program/{maker.__name__}" for maker in TEMPLATES[self.difficulty]]

    def make(self, template: str, rng: random.Random) -> Problem | None:
        question, program, function, ranges = MAKERS[template](rng)
        cases = []
        for _ in range(N_CASES):
            inputs = tuple(rng.randint(lo, hi) for lo, hi in ranges)
            cases.append((inputs, tuple(function(*inputs))))
        return Problem(template, question, program, cases=tuple(cases))

    # -- grading: run the predicted program, do not compare text

    def predicted_program(self, predicted: list[int], sample: Sample) -> str:
        """The program text the model wrote: its predictions from the answer start up to EOS or PAD."""
        start = sample.inputs.index(SEP) + 1
        tokens = []
        for t in predicted[start:]:
            if t in (EOS, PAD):
                break
            tokens.append(t)
        return TOKENIZER.decode(tokens)

    def check(self, problem: Problem, program: str) -> CheckResult:
        return check(program, problem.cases, self.limits)

    def grade(self, problem: Problem, predicted: list[int], sample: Sample | None = None) -> bool:
        return self.check(problem, self.predicted_program(predicted, sample or self.encode(problem))).ok

