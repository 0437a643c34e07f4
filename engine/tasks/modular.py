"""Modular arithmetic, the classic grokking task: `a op b =` -> (a op b) mod p.

The full table of p x p pairs (p x (p - 1) for division, b != 0) is shuffled once by the seed and cut:
the first `train_fraction` is the training split, the rest the test split, so the two never meet.
A pair and its mirror (b, a) always share a split: otherwise a commutative op answers about half of the
test set from the mirrors of training items, and memorising alone reads as ~50% test accuracy.

Tokens: 0 pad, 1 "=", 2..5 the operators + - * /, then the numbers 0..p-1 from NUMBER_BASE on.
Labels are pad everywhere except the "=" position, which holds the answer (pad labels carry no loss).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.config import ConfigError
from engine.tasks.base import Sample
from engine.tasks.tokenizer import check_split

PAD, EQUALS = 0, 1
OPERATORS = {"add": (2, "+"), "sub": (3, "-"), "mul": (4, "*"), "div": (5, "/")}
NUMBER_BASE = 6


def _is_prime(n: int) -> bool:
    return n >= 2 and all(n % d for d in range(2, int(n**0.5) + 1))


@dataclass
class ModularTask:
    p: int = 97
    op: str = "mul"
    train_fraction: float = 0.5
    seed: int = 0

    name = "modular"
    seq_len = 4

    def __post_init__(self):
        if self.op not in OPERATORS:
            raise ConfigError(f"task.op = {self.op!r} is not allowed; allowed is one of {', '.join(OPERATORS)}.")
        if not _is_prime(self.p) or self.p > 10_007:
            raise ConfigError(f"task.p = {self.p} is not allowed; it must be a prime from 2 to 10007.")
        if not 0.0 < self.train_fraction < 1.0:
            raise ConfigError(f"task.train_fraction = {self.train_fraction} is out of range; allowed is 0 to 1, exclusive.")
        self.vocab_size = NUMBER_BASE + self.p
        first_b = 1 if self.op == "div" else 0
        pairs = torch.cartesian_prod(torch.arange(self.p), torch.arange(first_b, self.p))  # (N, 2)
        mirror_key = pairs.min(dim=1).values * self.p + pairs.max(dim=1).values  # (N,) same for (a,b), (b,a)
        keys, group = torch.unique(mirror_key, return_inverse=True)
        rank = torch.randperm(len(keys), generator=torch.Generator().manual_seed(self.seed))[group]  # (N,)
        order = torch.argsort(2 * rank + (pairs[:, 0] > pairs[:, 1]).long())  # groups shuffled, mirrors adjacent
        group_ends = torch.bincount(rank).cumsum(0)  # items up to and including each shuffled group
        target = round(self.train_fraction * len(pairs))
        n_train = int(group_ends[torch.searchsorted(group_ends, target)])  # cut at a group boundary
        self._pairs = {"train": pairs[order[:n_train]], "test": pairs[order[n_train:]]}

    def size(self, split: str) -> int:
        """How many distinct items the split holds; `sample` wraps its index around this."""
        check_split(split)
        return len(self._pairs[split])

    def answer(self, a: int, b: int) -> int:
        p = self.p
        if self.op == "add":
            return (a + b) % p
        if self.op == "sub":
            return (a - b) % p
        if self.op == "mul":
            return (a * b) % p
        return (a * pow(b, p - 2, p)) % p  # b^(p-2) is b's inverse mod a prime (Fermat)

    def sample(self, split: str, index: int) -> Sample:
        a, b = (int(v) for v in self._pairs[split][index % self.size(split)])
        token, _ = OPERATORS[self.op]
        inputs = [NUMBER_BASE + a, token, NUMBER_BASE + b, EQUALS]
        labels = [PAD, PAD, PAD, NUMBER_BASE + self.answer(a, b)]
        return Sample(inputs, labels)

    def tensors(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole split at once as (inputs, labels), each (N, 4) int64, for full-batch training."""
        check_split(split)
        pairs = self._pairs[split]
        a, b = pairs[:, 0], pairs[:, 1]
        answers = torch.tensor([self.answer(int(x), int(y)) for x, y in pairs.tolist()], dtype=torch.long)
        token, _ = OPERATORS[self.op]
        inputs = torch.stack([NUMBER_BASE + a, torch.full_like(a, token), NUMBER_BASE + b,
                              torch.full_like(a, EQUALS)], dim=1)
        labels = torch.zeros_like(inputs)
        labels[:, 3] = NUMBER_BASE + answers
        return inputs, labels

    def render(self, sample: Sample) -> str:
        a, _, b, _ = sample.inputs
        symbol = OPERATORS[self.op][1]
        shown = sample.labels[3] - NUMBER_BASE
        return f"{a - NUMBER_BASE} {symbol} {b - NUMBER_BASE} = {shown}  (mod {self.p})"
