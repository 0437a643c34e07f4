"""Tool use: the answer is a short program in the sandbox's stack language (see engine/sandbox.py).

The question states a function ("f(x)=x*3-5", "f(n)=4*(1+..+n)"); the target is a reference
program that computes it, and the item carries test cases (inputs -> printed output) computed
by plain Python, independently of the interpreter. A predicted program is graded by running it
in the sandbox on those cases: any program that passes them all is right, not only the reference.

Difficulty 1: straight-line arithmetic on one input. 2: two inputs or a branch. 3: loops and
defined words.

Every template also knows other programs that compute the same function. With `references = "one"` the
reference is always the first (the shortest, one layout per template); with `references = "varied"` it is drawn
among them for each question (after its values and test cases, so the questions are the same), so the
cross-entropy target of one kind of question takes several layouts at random, while any of them passes: the case
where learning from the outcome (engine/outcome.py) can settle on one program of its own. The input then shows
blanks to the end of the sequence, not as many as the reference has characters: the forms differ in length, so
the count would tell the model which one was drawn, and a program of its own would sit behind the count of
another.
"""

from __future__ import annotations

import random

from engine.sandbox import CheckResult, Limits, check
from engine.tasks.base import Sample
from engine.tasks.tokenizer import BLANK, EOS, PAD, SEP, TOKENIZER, Problem, TextTask

N_CASES = 5
REFERENCES = ("one", "varied")

# Each template: (values) -> (question, programs, python function, input ranges). The programs all compute the
# function; the first is the reference of references = "one". The python function gives the expected output list
# for one input tuple.


def affine(rng: random.Random):
    a, b = rng.randint(2, 9), rng.choice([n for n in range(-20, 21) if n])
    op, undo = ("+", "-") if b > 0 else ("-", "+")
    return (f"f(x)=x*{a}{op}{abs(b)}",
            (f"{a} * {abs(b)} {op} .", f"{b} swap {a} * + .", f"{a} * {abs(b)} neg {undo} .",
             f"{b} {a} rot * + .", f"dup {a - 1} * + {b} + ."),
            lambda x: [x * a + b], [(-20, 20)])


def square_plus(rng: random.Random):
    b = rng.randint(1, 30)
    return (f"f(x)=x*x+{b}", (f"dup * {b} + .", f"{b} swap dup * + .", f"dup * {b} neg - .",
                              f"dup dup * swap drop {b} + ."),
            lambda x: [x * x + b], [(-20, 20)])


def shifted_mod(rng: random.Random):
    k, m = rng.randint(1, 9), rng.randint(2, 9)
    return (f"f(x)=(x+{k})%{m}", (f"{k} + {m} % .", f"{k} swap + {m} % .", f"{k} neg - {m} % .",
                                  f"{m} swap {k} + swap % ."),
            lambda x: [(x + k) % m], [(-30, 30)])


def clamp_below(rng: random.Random):
    t, c = rng.randint(-5, 10), rng.randint(-9, 9)
    return (f"f(x)=x if x>{t} else {c}", (f"dup {t} > not if drop {c} end .", f"dup {t} swap < not if drop {c} end .",
                                         f"dup {t} 1 + < if drop {c} end .", f"dup {t} > if else drop {c} end ."),
            lambda x: [x if x > t else c], [(-20, 20)])


def weighted_sum(rng: random.Random):
    k, m = rng.randint(2, 9), rng.randint(2, 9)
    return (f"f(a,b)={k}a+{m}b", (f"{m} * swap {k} * + .", f"swap {k} * swap {m} * + .", f"{m} * swap {k} * swap + ."),
            lambda a, b: [k * a + m * b], [(-20, 20), (-20, 20)])


def distance_plus(rng: random.Random):
    c = rng.randint(1, 40)
    return (f"f(a,b)=|a-b|+{c}", (f"- dup 0 < if neg end {c} + .", f"swap - dup 0 < if neg end {c} + .",
                                  f"- dup 0 > not if neg end {c} + .", f"- dup 0 < if 0 swap - end {c} + ."),
            lambda a, b: [abs(a - b) + c], [(-20, 20), (-20, 20)])


def max_plus(rng: random.Random):
    c = rng.randint(1, 40)
    return (f"f(a,b)=max(a,b)+{c}", (f"over over < if swap end drop {c} + .",
                                     f"over over > if swap end swap drop {c} + .",
                                     f"over over < not if swap end swap drop {c} + .",
                                     f"{c} + swap {c} + over over < if swap end drop ."),
            lambda a, b: [max(a, b) + c], [(-20, 20), (-20, 20)])


def scaled_triangle(rng: random.Random):
    k = rng.randint(1, 20)
    return (f"f(n)={k}*(1+..+n)", (f"0 swap dup while dup {k} * rot + swap 1 - dup end drop .",
                                   f"dup 1 + * 2 / {k} * .", f"dup dup * + {k} * 2 / .",
                                   f"0 swap dup while dup rot + swap 1 - dup end drop {k} * ."),
            lambda n: [k * n * (n + 1) // 2], [(0, 15)])


def countdown(rng: random.Random):
    s = rng.randint(1, 9)
    return (f"print x,x-{s},.. while >0", (f"dup 0 > while dup . {s} - dup 0 > end drop",
                                           f"dup 0 > while dup . {s} neg + dup 0 > end drop",
                                           f": step dup . {s} - ; dup 0 > while step dup 0 > end drop"),
            lambda x: list(range(x, 0, -s)), [(-3, 15)])


def power_of(rng: random.Random):
    b = rng.randint(2, 9)
    return (f"f(n)={b}^n", (f"1 swap dup while swap {b} * swap 1 - dup end drop .",
                            f"1 swap dup while 1 - swap {b} * swap dup end drop .",
                            f"1 swap dup while swap {b} * swap 1 - dup 0 > end drop ."),
            lambda n: [b**n], [(0, 12)])


def sum_of_squares(rng: random.Random):
    a = rng.randint(1, 20)
    return (f"f(x)=sq(x)+sq(x+{a})", (f": sq dup * ; dup sq swap {a} + sq + .", f"dup dup * swap {a} + dup * + .",
                                      f"dup {a} + dup * swap dup * + ."),
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

    def __init__(self, difficulty: int = 1, seed: int = 0, references: str = "one", limits: Limits = Limits()):
        if references not in REFERENCES:
            raise ValueError(f"references {references!r} is not one of {', '.join(REFERENCES)}")
        super().__init__(difficulty, seed)
        self.references, self.limits = references, limits

    def templates(self) -> list[str]:
        return [f"program/{maker.__name__}" for maker in TEMPLATES[self.difficulty]]

    def make(self, template: str, rng: random.Random) -> Problem | None:
        question, programs, function, ranges = MAKERS[template](rng)
        cases = []
        for _ in range(N_CASES):
            inputs = tuple(rng.randint(lo, hi) for lo, hi in ranges)
            cases.append((inputs, tuple(function(*inputs))))
        program = programs[0] if self.references == "one" else rng.choice(programs)  # drawn last: same question
        return Problem(template, question, program, cases=tuple(cases))

    def encode(self, problem: Problem, hint: int = 0) -> Sample:
        sample = super().encode(problem, hint)
        if self.references == "one":
            return sample
        start = sample.inputs.index(SEP) + 1  # varied: the answer's length is not shown
        return Sample(inputs=sample.inputs[:start] + [BLANK if t == PAD else t for t in sample.inputs[start:]],
                      labels=sample.labels)

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

