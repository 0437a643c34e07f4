"""Arithmetic in ten levels: the question space of the Phase-5 level pipeline.

Level k has its own templates, harder as k rises: bigger operands first, then multiplication, then two
operations with precedence and parentheses. Every level holds thousands of distinct questions (level 1, the
smallest, 2,000: a+b and a-b with a in 0..99 and b in 0..9; level 2 already 20,000), so a level's queue shrinking
from thousands of questions is practice on a large set, not on a few hundred questions repeated.

    level 1   a+b, a-b    a in 0..99, b in 0..9           level 6   a*b               a, b in 10..99
    level 2   a+b, a-b    a, b in 0..99                   level 7   c+a*b, a*b-c      a in 10..99, b in 2..9, c 0..99
    level 3   a+b, a-b    a in 100..999, b in 0..99       level 8   (a+b)*c, (a-b)*c  a, b in 10..99, c in 2..9
    level 4   a+b, a-b    a, b in 100..999                level 9   a*b+c*d           a, c in 10..99, b, d in 2..9
    level 5   a*b         a in 10..999, b in 2..9         level 10  a*b*c and the forms of levels 8 and 9

`difficulty` is the level (the config's task.difficulty reaches levels 1 to 3; the pipeline builds any level).
A question may carry a prompt: text before it (`prompt: question`), within `prompt_chars` characters, with an
effect on the answer: "none" (answer as usual), "reverse" (the answer written backwards) or "letters" (each digit
written as a letter, 0 as a to 9 as j; a sign stays), the last two making the prompt's effect checkable. Hints
reveal part of the answer in the input, and the revealed positions are not scored: a hint must not train copying.
"""

from __future__ import annotations

import random

from engine.config import LEVELS, ConfigError
from engine.tasks.base import Sample
from engine.tasks.tokenizer import PAD, TOKENIZER, Problem, TextTask, layout, reveal_counts

QUESTION_CHARS = 9  # "99*9+99*9", the longest question
ANSWER_CHARS = 4  # "9801", "-899"
PROMPT_JOIN = ": "  # between a prompt and its question
EFFECTS = ("none", "reverse", "letters")
LETTERS = str.maketrans("0123456789", "abcdefghij")
DIGIT_TO_LETTER = dict(zip(TOKENIZER.encode("0123456789"), TOKENIZER.encode("abcdefghij")))
LETTER_FORM, DIGIT_FORM = set(TOKENIZER.encode("abcdefghij-")), set(TOKENIZER.encode("0123456789-"))


def _binary(op: str, a_range: tuple[int, int], b_range: tuple[int, int]):
    def make(rng: random.Random) -> tuple[str, int]:
        a, b = rng.randint(*a_range), rng.randint(*b_range)
        return f"{a}{op}{b}", {"+": a + b, "-": a - b, "*": a * b}[op]

    make.__name__ = {"+": "add", "-": "sub", "*": "mul"}[op]
    return make


def add_then_mul(rng: random.Random) -> tuple[str, int]:
    a, b, c = rng.randint(10, 99), rng.randint(10, 99), rng.randint(2, 9)
    return f"({a}+{b})*{c}", (a + b) * c


def sub_then_mul(rng: random.Random) -> tuple[str, int]:
    a, b, c = rng.randint(10, 99), rng.randint(10, 99), rng.randint(2, 9)
    return f"({a}-{b})*{c}", (a - b) * c


def mul_then_add(rng: random.Random) -> tuple[str, int]:
    a, b, c = rng.randint(10, 99), rng.randint(2, 9), rng.randint(0, 99)
    return f"{c}+{a}*{b}", c + a * b


def mul_then_sub(rng: random.Random) -> tuple[str, int]:
    a, b, c = rng.randint(10, 99), rng.randint(2, 9), rng.randint(0, 99)
    return f"{a}*{b}-{c}", a * b - c


def two_products(rng: random.Random) -> tuple[str, int]:
    a, b, c, d = rng.randint(10, 99), rng.randint(2, 9), rng.randint(10, 99), rng.randint(2, 9)
    return f"{a}*{b}+{c}*{d}", a * b + c * d


def three_factors(rng: random.Random) -> tuple[str, int]:
    a, b, c = rng.randint(10, 99), rng.randint(2, 9), rng.randint(2, 9)
    return f"{a}*{b}*{c}", a * b * c


TEMPLATES = {
    1: (_binary("+", (0, 99), (0, 9)), _binary("-", (0, 99), (0, 9))),
    2: (_binary("+", (0, 99), (0, 99)), _binary("-", (0, 99), (0, 99))),
    3: (_binary("+", (100, 999), (0, 99)), _binary("-", (100, 999), (0, 99))),
    4: (_binary("+", (100, 999), (100, 999)), _binary("-", (100, 999), (100, 999))),
    5: (_binary("*", (10, 999), (2, 9)),),
    6: (_binary("*", (10, 99), (10, 99)),),
    7: (mul_then_add, mul_then_sub),
    8: (add_then_mul, sub_then_mul),
    9: (two_products,),
    10: (three_factors, two_products, add_then_mul, sub_then_mul),
}
MAKERS = {f"L{level}/{make.__name__}": make for level, makers in TEMPLATES.items() for make in makers}


def apply_effect(effect: str, answer: str) -> str:
    """The answer a prompt with this effect asks for."""
    if effect == "reverse":
        return answer[::-1]
    return answer.translate(LETTERS) if effect == "letters" else answer


def effect_ids(effect: str, ids: list[int]) -> list[int]:
    """`apply_effect` token by token on an answer's ids, its last (end-of-answer) position kept last: the model's
    own answer, whatever tokens it holds, as the prompt would have it."""
    *answer, end = ids
    if effect == "reverse":
        answer = answer[::-1]
    elif effect == "letters":
        answer = [DIGIT_TO_LETTER.get(i, i) for i in answer]
    return answer + [end]


def written_as(effect: str, ids: list[int]) -> bool:
    """The answer's characters (its last, end-of-answer position left out) are all of the form `effect` writes:
    for "letters", letters a to j and the sign, so a model can follow the format whatever its arithmetic."""
    allowed = LETTER_FORM if effect == "letters" else DIGIT_FORM
    return all(i in allowed for i in ids[:-1])


def temperature_ranges(level: int, levels: int, n: int) -> list[tuple[float, float]]:
    """The self-model's `n` sampling-temperature ranges at `level`: equal parts of [0.1, 0.5 + 1.5 level / levels],
    so the span (and every range) widens as the levels rise."""
    top = 0.5 + 1.5 * level / levels
    edges = [0.1 + (top - 0.1) * i / n for i in range(n + 1)]
    return [(round(a, 2), round(b, 2)) for a, b in zip(edges[:-1], edges[1:])]


def self_tag(low: float, high: float) -> str:
    """The prompt that asks the model for the answer it would sample at a temperature in [low, high]."""
    return f"self t{low:.2f}-{high:.2f}"


class LevelTask(TextTask):
    """Questions of one level (`difficulty` = the level, 1 to 10), optionally behind a prompt."""

    name = "levels"
    description = "levels: arithmetic in ten levels, bigger operands, then products, then two operations"

    def __init__(self, difficulty: int = 1, seed: int = 0, prompt_chars: int = 0):
        if isinstance(difficulty, bool) or not isinstance(difficulty, int) or not 1 <= difficulty <= LEVELS:
            raise ConfigError(f"level {difficulty!r} is out of range for task 'levels'; allowed is 1 to {LEVELS}.")
        if isinstance(prompt_chars, bool) or not isinstance(prompt_chars, int) or not 0 <= prompt_chars <= 200:
            raise ConfigError(f"prompt_chars {prompt_chars!r} is out of range; allowed is 0 to 200.")
        self.difficulty, self.seed, self.steps = difficulty, seed, False
        self.prompt_chars = prompt_chars
        prompt_room = prompt_chars + len(PROMPT_JOIN) if prompt_chars else 0
        self.seq_len = prompt_room + QUESTION_CHARS + 1 + ANSWER_CHARS + 1  # + SEP, + EOS

    def at_level(self, level: int) -> LevelTask:
        """The same task (seed, layout) at another level."""
        return LevelTask(level, self.seed, self.prompt_chars)

    def templates(self) -> list[str]:
        return [f"L{self.difficulty}/{make.__name__}" for make in TEMPLATES[self.difficulty]]

    def make(self, template: str, rng: random.Random) -> Problem:
        question, value = MAKERS[template](rng)
        return Problem(template, question, str(value))

    def max_hint(self, problem: Problem) -> int:
        return len(reveal_counts(len(problem.answer)))

    def encode(self, problem: Problem, hint: int = 0) -> Sample:
        """The unprompted layout; hint h reveals reveal_counts(...)[h - 1] answer characters, not scored."""
        hint = max(0, min(hint, self.max_hint(problem)))
        reveal = reveal_counts(len(problem.answer))[hint - 1] if hint else 0
        sample = layout(problem.prompt, problem.answer, self.seq_len, reveal=reveal)
        if not reveal:
            return sample
        start = len(problem.prompt) + 1
        labels = [PAD if start <= i < start + reveal else t for i, t in enumerate(sample.labels)]
        return Sample(inputs=sample.inputs, labels=labels)

    def prompted(self, problem: Problem, prompt: str, effect: str) -> Sample:
        """The question behind `prompt`, its label the answer the prompt's effect asks for."""
        assert effect in EFFECTS, effect
        assert len(prompt) <= self.prompt_chars, "prompt longer than the layout's room"
        return layout(prompt + PROMPT_JOIN + problem.prompt, apply_effect(effect, problem.answer), self.seq_len)
