"""The shared character vocabulary and the text layout every generated text task uses.

A text task makes a `Problem` (prompt, answer, worked steps) and lays it out as a fixed-length
seq2seq `Sample`: the model reads the input and predicts the label at every position; pad (0)
labels carry no loss.

    inputs:  p r o m p t [HINT h i n t] SEP BLANK BLANK BLANK BLANK PAD ...
    labels:  PAD ...                    PAD  a     n     s    EOS   PAD ...

A hint is given as part of the input: worked steps after HINT, and/or a revealed prefix of the
answer written into the BLANK positions (the labels stay the full answer).

Also here: the stable hashes every task draws from. Every sample is a pure function of
(seed, split, index) through `stable_rng`, and an item's split is `split_of(prompt)`, a stable
hash of the exact question, the same for every seed, so train and test never share an item.
"""

from __future__ import annotations

import hashlib
import math
import random
import string
from dataclasses import dataclass

from engine.config import ConfigError
from engine.tasks.base import Sample

# ----------------------------------------------------------------------------- the vocabulary

PAD, BLANK, SEP, EOS, HINT = 0, 1, 2, 3, 4
SPECIALS = {PAD: "", BLANK: "_", SEP: " => ", EOS: "", HINT: " | hint: "}
CHARS = string.digits + string.ascii_lowercase + string.ascii_uppercase + " +-*/%=<>()[]?.,:;#|!'^_"
FIRST_CHAR = len(SPECIALS)


class CharTokenizer:
    """Characters to ids and back; ids below FIRST_CHAR are the special tokens."""

    def __init__(self, chars: str = CHARS):
        assert len(set(chars)) == len(chars), "duplicate characters in the alphabet"
        self.chars = chars
        self.ids = {c: FIRST_CHAR + i for i, c in enumerate(chars)}
        self.vocab_size = FIRST_CHAR + len(chars)

    def encode(self, text: str) -> list[int]:
        return [self.ids[c] for c in text]

    def decode(self, ids: list[int], specials: bool = False) -> str:
        """Ids back to text; special tokens are dropped, or shown (`specials=True`) as markers."""
        out = []
        for i in ids:
            if i >= FIRST_CHAR:
                out.append(self.chars[i - FIRST_CHAR] if i - FIRST_CHAR < len(self.chars) else "?")
            elif specials:
                out.append(SPECIALS[i])
        return "".join(out)


TOKENIZER = CharTokenizer()

# ----------------------------------------------------------------------------- stable randomness

TEST_PER_MILLE = 100  # share of items (by hash of the exact question) held out for the test split
MAX_DRAWS = 10_000  # a draw that keeps landing in the other split is a bug in the template


def stable_int(*parts: object) -> int:
    """A 64-bit integer from a stable hash of `parts` (Python's hash() changes between processes)."""
    text = repr(parts).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little")


def stable_rng(*parts: object) -> random.Random:
    return random.Random(stable_int(*parts))


def split_of(question: str) -> str:
    """The split an item belongs to, from its exact question text; the same for every seed and task."""
    return "test" if stable_int("split", question) % 1000 < TEST_PER_MILLE else "train"


def check_split(split: str) -> None:
    if split not in ("train", "test"):
        raise ConfigError(f"split {split!r} is not allowed; allowed is 'train' or 'test'.")


def check_difficulty(task: str, difficulty: int) -> None:
    if isinstance(difficulty, bool) or not isinstance(difficulty, int) or not 1 <= difficulty <= 3:
        raise ConfigError(f"difficulty {difficulty!r} is out of range for task {task!r}; allowed is 1 to 3.")


# ----------------------------------------------------------------------------- problems


@dataclass(frozen=True)
class Problem:
    template: str  # which generator made it; a variant keeps the template and draws new values
    prompt: str  # the question, as text; its hash decides the split
    answer: str  # the final answer, as text
    steps: tuple[str, ...] = ()  # worked steps, in order
    cases: tuple[tuple[tuple[int, ...], tuple[int, ...]], ...] = ()  # (inputs, output) for program answers


def reveal_counts(n: int) -> list[int]:
    """How many answer characters each partial-answer hint reveals: a quarter, a half, three quarters."""
    return sorted({min(n - 1, math.ceil(n * j / 4)) for j in (1, 2, 3)} - {0})


def layout(prompt: str, target: str, seq_len: int, hint_text: str = "", reveal: int = 0) -> Sample:
    """Prompt (+ hint) and target as one fixed-length (inputs, labels) pair."""
    head = TOKENIZER.encode(prompt)
    if hint_text:
        head += [HINT] + TOKENIZER.encode(hint_text)
    head.append(SEP)
    answer = TOKENIZER.encode(target) + [EOS]
    assert len(head) + len(answer) <= seq_len, f"{prompt!r} + {target!r} does not fit in {seq_len} positions"
    shown = answer[:reveal] + [BLANK] * (len(answer) - reveal)
    pad = [PAD] * (seq_len - len(head) - len(answer))
    inputs = head + shown + pad
    labels = [PAD] * len(head) + answer + pad
    return Sample(inputs=inputs, labels=labels)


def answer_region(sample: Sample) -> tuple[int, int]:
    """[start, end) of the label positions that hold the target and its EOS."""
    idx = [i for i, t in enumerate(sample.labels) if t != PAD]
    return (idx[0], idx[-1] + 1) if idx else (0, 0)


def exact_match(labels: list[int], predicted: list[int]) -> bool:
    """Every non-pad label position predicted exactly."""
    return all(p == t for t, p in zip(labels, predicted) if t != PAD)


def render_text(sample: Sample) -> str:
    """A text sample as a person reads it: the question, any hint, and the expected answer."""
    sep = sample.inputs.index(SEP) if SEP in sample.inputs else len(sample.inputs)
    head = sample.inputs[:sep]
    hint = ""
    if HINT in head:
        cut = head.index(HINT)
        head, hint = head[:cut], TOKENIZER.decode(head[cut + 1 :])
    start, end = answer_region(sample)
    target = TOKENIZER.decode(sample.labels[start:end])
    shown = sample.inputs[start:end]
    lines = [f"question: {TOKENIZER.decode(head)}"]
    if hint:
        lines.append(f"hint:     {hint}")
    revealed = [t for t in shown if t >= FIRST_CHAR]
    if revealed:
        lines.append(f"given:    {TOKENIZER.decode(revealed)}...")
    lines.append(f"answer:   {target}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the shared task shape


class TextTask:
    """A task of templated problems. Subclasses give `templates()` and `make(template, rng)`.

    `problem(split, index)` draws a template and values from a stable hash of
    (task, seed, difficulty, split, index, attempt) and redraws while the question's hash
    puts it in the other split. `variant(problem, n)` keeps the template and draws new values.
    `encode(problem, hint)` lays it out; hints 1..len(steps) show that many worked steps
    (or, with `steps` in the target, reveal the target up to that step), higher hints reveal
    part of the answer.
    """

    name = "text"
    description = ""
    vocab_size = TOKENIZER.vocab_size
    seq_len = 64

    def __init__(self, difficulty: int = 1, seed: int = 0, steps: bool = False):
        check_difficulty(self.name, difficulty)
        self.difficulty = difficulty
        self.seed = seed
        self.steps = steps

    # -- to be given by each task

    def templates(self) -> list[str]:
        raise NotImplementedError

    def make(self, template: str, rng: random.Random) -> Problem | None:
        """One problem from `template` with values from `rng`; None asks for a redraw."""
        raise NotImplementedError

    # -- drawing

    def problem(self, split: str, index: int) -> Problem:
        check_split(split)
        templates = self.templates()
        for attempt in range(MAX_DRAWS):
            rng = stable_rng(self.name, self.seed, self.difficulty, split, index, attempt)
            p = self.make(rng.choice(templates), rng)
            if p is not None and split_of(p.prompt) == split:
                return p
        raise AssertionError(f"{self.name}: no {split} item after {MAX_DRAWS} draws")

    def distinct_problems(self, split: str, n: int, start: int = 0) -> list[Problem]:
        """The first `n` distinct questions of `split` from index `start` on (held-out sets of distinct items);
        fewer when the split holds fewer."""
        seen, problems = set(), []
        for index in range(start, start + 20 * n + 1000):
            p = self.problem(split, index)
            if p.prompt not in seen:
                seen.add(p.prompt)
                problems.append(p)
                if len(problems) == n:
                    break
        return problems

    def variant(self, problem: Problem, n: int) -> Problem:
        """The n-th variant (n >= 1) of `problem`: same template, new values, same split."""
        if n == 0:
            return problem
        split = split_of(problem.prompt)
        for attempt in range(MAX_DRAWS):
            rng = stable_rng(self.name, self.seed, "variant", problem.prompt, n, attempt)
            p = self.make(problem.template, rng)
            if p is not None and split_of(p.prompt) == split:
                return p
        raise AssertionError(f"{self.name}: no {split} variant of {problem.template} after {MAX_DRAWS} draws")

    # -- layout

    def target(self, problem: Problem) -> str:
        return ";".join(problem.steps + (problem.answer,)) if self.steps else problem.answer

    def max_hint(self, problem: Problem) -> int:
        return len(problem.steps) + len(reveal_counts(len(problem.answer)))

    def encode(self, problem: Problem, hint: int = 0) -> Sample:
        hint = max(0, min(hint, self.max_hint(problem)))
        n_steps = min(hint, len(problem.steps))
        partial = hint - n_steps
        answer_reveal = reveal_counts(len(problem.answer))[partial - 1] if partial else 0
        if self.steps:  # the steps are part of the target: a hint writes them in
            done = ";".join(problem.steps[:n_steps])
            reveal = (len(done) + 1 if n_steps else 0) + answer_reveal
            return layout(problem.prompt, self.target(problem), self.seq_len, reveal=reveal)
        hint_text = ";".join(problem.steps[:n_steps])
        return layout(problem.prompt, problem.answer, self.seq_len, hint_text=hint_text, reveal=answer_reveal)

    def sample(self, split: str, index: int) -> Sample:
        return self.encode(self.problem(split, index))

    def render(self, sample: Sample) -> str:
        return render_text(sample)

    def grade(self, problem: Problem, predicted: list[int], sample: Sample | None = None) -> bool:
        """Whether predicted ids (one per position of `sample`, by default the unhinted layout;
        a hint in the prompt shifts the answer) answer `problem` exactly."""
        return exact_match((sample or self.encode(problem)).labels, predicted)
