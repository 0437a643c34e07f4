"""Synthetic math: arithmetic, linear equations, next term of a sequence, templated word problems.

Difficulty 1 to 3 picks the templates (bigger numbers, more operations, more steps). Every
problem carries its worked steps; with `steps=True` they are part of the target
("30*8=240;7*8=56;240+56=296;296"), otherwise they only serve as hints.

(Named `arith` so that it never reads as the standard library's `math`.)
"""

from __future__ import annotations

import random

from engine.tasks.tokenizer import Problem, TextTask

KINDS = ("arithmetic", "algebra", "sequence", "word")
Made = tuple[str, str, tuple[str, ...]]  # what a template returns: (prompt, answer, worked steps)


def _signed(n: int) -> str:
    """`+5` / `-5`, for writing `3x+5` and `3x-5`."""
    return f"+{n}" if n >= 0 else str(n)


def _times_x(c: int) -> str:
    """`3x`, `x`, `-x`."""
    return {1: "x", -1: "-x"}.get(c, f"{c}x")


# ----------------------------------------------------------------------------- arithmetic


def add_small(rng: random.Random) -> Made:
    a, b = rng.randint(0, 9), rng.randint(0, 9)
    return (f"{a}+{b}", str(a + b), ())


def sub_small(rng: random.Random) -> Made:
    a, b = rng.randint(0, 9), rng.randint(0, 9)
    return (f"{a}-{b}", str(a - b), ())


def add_two_digit(rng: random.Random) -> Made:
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    tens, ones = (a // 10 + b // 10) * 10, a % 10 + b % 10
    steps = (f"{a // 10 * 10}+{b // 10 * 10}={tens}", f"{a % 10}+{b % 10}={ones}", f"{tens}+{ones}={a + b}")
    return (f"{a}+{b}", str(a + b), steps)


def sub_two_digit(rng: random.Random) -> Made:
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    steps = (f"{a}-{b // 10 * 10}={a - b // 10 * 10}", f"{a - b // 10 * 10}-{b % 10}={a - b}")
    return (f"{a}-{b}", str(a - b), steps)


def mul_two_digit(rng: random.Random) -> Made:
    a, b = rng.randint(11, 99), rng.randint(2, 9)
    hi, lo = a // 10 * 10, a % 10
    steps = (f"{hi}*{b}={hi * b}", f"{lo}*{b}={lo * b}", f"{hi * b}+{lo * b}={a * b}")
    return (f"{a}*{b}", str(a * b), steps)


def add_then_mul(rng: random.Random) -> Made:
    a, b, c = rng.randint(2, 99), rng.randint(2, 99), rng.randint(2, 9)
    return (f"({a}+{b})*{c}", str((a + b) * c), (f"{a}+{b}={a + b}", f"{a + b}*{c}={(a + b) * c}"))


def mul_then_add(rng: random.Random) -> Made:
    a, b, c = rng.randint(2, 99), rng.randint(2, 9), rng.randint(2, 99)
    return (f"{c}+{a}*{b}", str(c + a * b), (f"{a}*{b}={a * b}", f"{c}+{a * b}={c + a * b}"))


def mul_then_sub(rng: random.Random) -> Made:
    a, b, c = rng.randint(2, 99), rng.randint(2, 9), rng.randint(2, 99)
    return (f"{a}*{b}-{c}", str(a * b - c), (f"{a}*{b}={a * b}", f"{a * b}-{c}={a * b - c}"))


# ----------------------------------------------------------------------------- algebra: solve for x


def shift_equation(rng: random.Random) -> Made:
    x, b = rng.randint(-9, 20), rng.choice([n for n in range(-20, 21) if n])
    c = x + b
    return (f"x{_signed(b)}={c}", str(x), (f"x={c}{_signed(-b)}",))


def scale_equation(rng: random.Random) -> Made:
    x, a, b = rng.randint(-9, 20), rng.randint(2, 9), rng.randint(-30, 30)
    c = a * x + b
    return (f"{a}x{_signed(b)}={c}", str(x), (f"{a}x={c - b}", f"x={c - b}/{a}"))


def both_sides_equation(rng: random.Random) -> Made:
    x, a, c = rng.randint(-12, 25), rng.randint(2, 12), rng.randint(1, 11)
    if a == c:
        return None
    b = rng.randint(-40, 40)
    d = a * x + b - c * x
    steps = (f"{_times_x(a - c)}{_signed(b)}={d}", f"{_times_x(a - c)}={d - b}", f"x={d - b}/{a - c}")
    return (f"{a}x{_signed(b)}={_times_x(c)}{_signed(d)}", str(x), steps)


# ----------------------------------------------------------------------------- sequences: next term


def _seq_prompt(terms: list[int]) -> str:
    return ",".join(str(t) for t in terms) + ",?"


def arithmetic_sequence(rng: random.Random) -> Made:
    start, step = rng.randint(0, 30), rng.randint(1, 9)
    terms = [start + step * i for i in range(5)]
    return (_seq_prompt(terms[:4]), str(terms[4]), (f"d={step}", f"{terms[3]}+{step}={terms[4]}"))


def falling_sequence(rng: random.Random) -> Made:
    start, step = rng.randint(20, 60), -rng.randint(2, 12)
    terms = [start + step * i for i in range(5)]
    return (_seq_prompt(terms[:4]), str(terms[4]), (f"d={step}", f"{terms[3]}{_signed(step)}={terms[4]}"))


def geometric_sequence(rng: random.Random) -> Made:
    start, ratio = rng.randint(1, 9), rng.randint(2, 4)
    terms = [start * ratio**i for i in range(5)]
    return (_seq_prompt(terms[:4]), str(terms[4]), (f"r={ratio}", f"{terms[3]}*{ratio}={terms[4]}"))


def fibonacci_like(rng: random.Random) -> Made:
    terms = [rng.randint(1, 9), rng.randint(1, 9)]
    while len(terms) < 6:
        terms.append(terms[-1] + terms[-2])
    return (_seq_prompt(terms[:5]), str(terms[5]), ("sum of last two", f"{terms[3]}+{terms[4]}={terms[5]}"))


def quadratic_sequence(rng: random.Random) -> Made:
    a, b, c = rng.randint(1, 3), rng.randint(-3, 5), rng.randint(0, 9)
    terms = [a * n * n + b * n + c for n in range(6)]
    diffs = [terms[i + 1] - terms[i] for i in range(4)]
    nxt = diffs[-1] + 2 * a
    steps = ("d=" + ",".join(str(d) for d in diffs), f"next d={nxt}", f"{terms[4]}{_signed(nxt)}={terms[5]}")
    return (_seq_prompt(terms[:5]), str(terms[5]), steps)


# ----------------------------------------------------------------------------- word problems

NAMES = ("ann", "bob", "eva", "tom", "max", "zoe", "ivy", "leo", "mia", "sam")
THINGS = ("pens", "eggs", "cards", "coins", "books", "apples", "shells", "stamps")


def gets_more(rng: random.Random) -> Made:
    who, what, a, b = rng.choice(NAMES), rng.choice(THINGS), rng.randint(1, 20), rng.randint(1, 20)
    return (f"{who} has {a} {what} and gets {b} more. how many {what}?", str(a + b), (f"{a}+{b}={a + b}",))


def gives_away(rng: random.Random) -> Made:
    who, what, a = rng.choice(NAMES), rng.choice(THINGS), rng.randint(2, 30)
    b = rng.randint(1, a)
    return (f"{who} has {a} {what} and gives {b} away. how many {what}?", str(a - b), (f"{a}-{b}={a - b}",))


def groups_of(rng: random.Random) -> Made:
    what, n, k = rng.choice(THINGS), rng.randint(2, 12), rng.randint(2, 12)
    return (f"{n} bags hold {k} {what} each. how many {what}?", str(n * k), (f"{n}*{k}={n * k}",))


def shared_by(rng: random.Random) -> Made:
    what, kids, each = rng.choice(THINGS), rng.randint(2, 9), rng.randint(2, 12)
    total = kids * each
    return (f"{total} {what} are shared by {kids} kids. how many each?", str(each), (f"{total}/{kids}={each}",))


def boxes_then_gives(rng: random.Random) -> Made:
    who, what, n, k = rng.choice(NAMES), rng.choice(THINGS), rng.randint(2, 9), rng.randint(2, 12)
    g = rng.randint(1, n * k)
    steps = (f"{n}*{k}={n * k}", f"{n * k}-{g}={n * k - g}")
    return (f"{who} has {n} boxes of {k} {what} and gives {g} away. {what}?", str(n * k - g), steps)


def buys_with_change(rng: random.Random) -> Made:
    who, n, price = rng.choice(NAMES), rng.randint(2, 9), rng.randint(2, 15)
    paid = (n * price // 10 + 1) * 10 + rng.choice((0, 10, 40))
    steps = (f"{n}*{price}={n * price}", f"{paid}-{n * price}={paid - n * price}")
    return (f"{who} buys {n} pens at {price} each and pays {paid}. change?", str(paid - n * price), steps)


# ----------------------------------------------------------------------------- the task

TEMPLATES = {  # kind -> difficulty -> templates; a template's name is "kind/function"
    "arithmetic": {1: (add_small, sub_small), 2: (add_two_digit, sub_two_digit, mul_two_digit),
                   3: (add_then_mul, mul_then_add, mul_then_sub)},
    "algebra": {1: (shift_equation,), 2: (scale_equation,), 3: (both_sides_equation,)},
    "sequence": {1: (arithmetic_sequence,), 2: (falling_sequence, geometric_sequence),
                 3: (fibonacci_like, quadratic_sequence)},
    "word": {1: (gets_more, gives_away), 2: (groups_of, shared_by), 3: (boxes_then_gives, buys_with_change)},
}
MAKERS = {f"{kind}/{maker.__name__}": maker
          for kind, by_level in TEMPLATES.items() for makers in by_level.values() for maker in makers}

DESCRIPTIONS = {
    "arithmetic": "arithmetic: evaluate an expression (one operation, then two with precedence)",
    "algebra": "algebra: solve a linear equation for x",
    "sequence": "sequences: the next term (arithmetic, geometric, Fibonacci-like, quadratic)",
    "word": "word problems: templated stories with one or two operations",
    "mixed": "math: arithmetic, algebra, sequences and word problems mixed",
}


class MathTask(TextTask):
    """Synthetic math problems of one kind (or all four kinds mixed), difficulty 1 to 3."""

    seq_len = 96

    def __init__(self, kind: str = "mixed", difficulty: int = 1, seed: int = 0, steps: bool = False):
        assert kind in KINDS or kind == "mixed", kind
        self.kind = kind
        self.name = "math" if kind == "mixed" else kind
        self.description = DESCRIPTIONS[kind]
        super().__init__(difficulty, seed, steps)

    def templates(self) -> list[str]:
        kinds = KINDS if self.kind == "mixed" else (self.kind,)
        return [f"{kind}/{maker.__name__}" for kind in kinds for maker in TEMPLATES[kind][self.difficulty]]

    def make(self, template: str, rng: random.Random) -> Problem | None:
        made = MAKERS[template](rng)
        return None if made is None else Problem(template, *made)
