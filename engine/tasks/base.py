"""The interface every task generator implements."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch


@dataclass(frozen=True)
class Sample:
    inputs: list[int]  # token ids, length = task.seq_len
    labels: list[int]  # token ids to predict at every position, length = task.seq_len


class Task(Protocol):
    name: str
    vocab_size: int
    seq_len: int

    def sample(self, split: str, index: int) -> Sample:
        """Deterministic: the same (task config, split, index) always gives the same sample.
        `split` is "train" or "test"; the two never share an item."""
        ...

    def render(self, sample: Sample) -> str:
        """How a person reads the sample."""
        ...


def batch(task: Task, split: str, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack samples into (inputs, labels), each (B, seq_len) int64."""
    samples = [task.sample(split, i) for i in indices]
    inputs = torch.tensor([s.inputs for s in samples], dtype=torch.long)
    labels = torch.tensor([s.labels for s in samples], dtype=torch.long)
    return inputs, labels
