"""Memory tasks: facts stated in the input, one of them asked for at the end.

- recall: a list of key=value facts, then `?key`; difficulty = how many facts (4, 8, 16).
- gap: one fact, then a long stretch of filler (and, from difficulty 2, distractor facts),
  then the query; difficulty = the gap (16, 40, 80 filler characters).
- surprise: a stream of routine facts drawn from a fixed table (the same for every sample of a
  seed, so a model can learn them into its weights) with one rare, high-entropy fact (an
  upper-case key and a long random value) inside; the query asks for the rare one.
  Difficulty = stream length and value length.

The worked step is the fact itself ("k3=72"), so a hint quotes it next to the question.
"""

from __future__ import annotations

import random
import string

from engine.tasks.tokenizer import Problem, TextTask, stable_rng

KINDS = ("recall", "gap", "surprise")
DESCRIPTIONS = {
    "recall": "memory/recall: key=value facts, then the value of one key",
    "gap": "memory/temporal gap: one fact, a long filler, then the question",
    "surprise": "memory/surprise: routine facts with one rare high-entropy fact to recall",
}
N_FACTS = {1: 4, 2: 8, 3: 16}
GAP_CHARS = {1: 16, 2: 40, 3: 80}  # filler characters between the fact and the question
N_ROUTINE = {1: 6, 2: 10, 3: 14}
RARE_DIGITS = {1: 2, 2: 3, 3: 4}


def _key(rng: random.Random) -> str:
    return rng.choice(string.ascii_lowercase) + rng.choice(string.digits)


def _value(rng: random.Random, digits: int) -> str:
    return "".join(rng.choice(string.digits) for _ in range(digits))


def _filler(rng: random.Random, n_chars: int) -> str:
    """Lower-case noise words: no digits, no '=', so nothing in it looks like a fact."""
    words, length = [], 0
    while length < n_chars:
        word = "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(2, 6)))
        words.append(word)
        length += len(word) + 1
    return " ".join(words)[:n_chars].rstrip()


class MemoryTask(TextTask):
    """Recall, temporal-gap and surprise memory problems, difficulty 1 to 3."""

    seq_len = 128

    def __init__(self, kind: str = "recall", difficulty: int = 1, seed: int = 0):
        assert kind in KINDS, kind
        self.kind = kind
        self.name = kind
        self.description = DESCRIPTIONS[kind]
        super().__init__(difficulty, seed)
        # the routine table of the surprise task: fixed per seed so it is learnable, not memorable
        table_rng = stable_rng("surprise-routine", seed)
        self.routine = {k: str(table_rng.randint(0, 9)) for k in string.ascii_lowercase[:16]}

    def templates(self) -> list[str]:
        return [self.kind]

    def make(self, template: str, rng: random.Random) -> Problem | None:
        d = self.difficulty
        if template == "recall":
            keys = []
            while len(keys) < N_FACTS[d]:
                k = _key(rng)
                if k not in keys:
                    keys.append(k)
            facts = [f"{k}={_value(rng, 1 if d == 1 else 2)}" for k in keys]
            asked = rng.randrange(len(facts))
            return Problem("recall", " ".join(facts) + f" ?{keys[asked]}", facts[asked].split("=")[1], (facts[asked],))

        if template == "gap":
            key = _key(rng)
            fact = f"{key}={_value(rng, 1 if d == 1 else 2)}"
            parts = [_filler(rng, GAP_CHARS[d] // d)]
            for _ in range(d - 1):  # distractor facts between filler stretches
                other = _key(rng)
                if other == key:
                    return None
                parts += [f"{other}={_value(rng, 2)}", _filler(rng, GAP_CHARS[d] // d)]
            return Problem("gap", f"{fact} {' '.join(parts)} ?{key}", fact.split("=")[1], (fact,))

        if template == "surprise":
            stream = [f"{k}={self.routine[k]}" for k in (rng.choice(list(self.routine)) for _ in range(N_ROUTINE[d]))]
            key = rng.choice(string.ascii_uppercase) + rng.choice(string.ascii_uppercase)
            fact = f"{key}={_value(rng, RARE_DIGITS[d])}"
            stream.insert(rng.randrange(len(stream) + 1), fact)
            return Problem("surprise", " ".join(stream) + f" ?{key}", fact.split("=")[1], (fact,))

        raise AssertionError(template)
