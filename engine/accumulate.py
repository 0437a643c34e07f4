"""Micro-batches: a step's batch run as slot chunks whose gradients add up to the whole batch's, and the one
out-of-memory back-off that wake and sleep share.

A chunk is a contiguous range of carry slots. Each slot keeps its own carry, so chunks are independent; the
model scores each chunk against the whole batch's normalisers, so the chunks' losses sum to the batch's.
An out-of-memory error (or the card fuller than `train.vram_limit`, or the machine's RAM fuller than
`train.ram_limit`) halves the chunk size; after a quiet spell the chunks grow back, one doubling at a time, never
to fewer chunks than `train.accumulation` asks for.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, TypeVar

import torch

T = TypeVar("T")

RATIOS = ("halted_exact_acc", "halted_steps")  # figures over the halted slots, not shares of the batch
PRESSURE_QUIET_STEPS = 10  # after a back-off on VRAM pressure, let the allocator settle before judging again
GROW_AFTER_STEPS = 200  # quiet steps before the chunks try twice their size again


class OutOfMemoryAtOneSlot(RuntimeError):
    """Out of memory with chunks of one slot (or one sample): nothing left to split."""


def slot_chunks(batch_size: int, micro_batches: int) -> list[slice]:
    """`micro_batches` contiguous slot ranges covering the batch, as even as possible."""
    bounds = [i * batch_size // micro_batches for i in range(micro_batches + 1)]
    return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def merge_chunk_metrics(parts: list[dict[str, float]]) -> dict[str, float]:
    """One step's figures from its chunks' figures: every share and count adds up; the ratios over halted
    slots are rebuilt from the counts."""
    merged = {key: sum(p[key] for p in parts) for key in parts[0] if key not in RATIOS}
    n_halted = merged.get("n_halted", 0.0)
    if "halted_exact_acc" in parts[0]:
        merged["halted_exact_acc"] = merged["n_halted_exact"] / n_halted if n_halted else float("nan")
    if "halted_steps" in parts[0]:
        weighted = sum(p["halted_steps"] * p["n_halted"] for p in parts if p["n_halted"])
        merged["halted_steps"] = weighted / n_halted if n_halted else float("nan")
    return merged


@dataclass
class BackOff:
    """What changed: the chunk size before and after, and why."""

    reason: str
    old_size: int
    new_size: int
    chunks: int


class MicroBatches:
    """How many chunks a batch of `batch_size` runs as. Saved with the run, so a resumed run splits alike."""

    def __init__(self, batch_size: int, least: int = 1):
        self.batch_size = batch_size
        self.least = min(least, batch_size)  # the user's gradient accumulation: chunks never go below it
        self.chunks = self.least
        self.quiet_until = 0  # no pressure back-off before this step
        self.last_change = 0  # step of the last back-off or growth

    def size(self, chunks: int | None = None) -> int:
        return math.ceil(self.batch_size / (chunks or self.chunks))

    def split(self, n: int | None = None) -> list[slice]:
        """The chunks of a batch of n (default batch_size)."""
        return slot_chunks(n or self.batch_size, self.chunks)

    def back_off(self, step: int, reason: str) -> BackOff | None:
        """Twice the chunks (the effective batch is unchanged); None when chunks are one slot each."""
        if self.chunks >= self.batch_size:
            return None
        old = self.size()
        self.chunks = min(self.batch_size, 2 * self.chunks)
        self.last_change = step
        return BackOff(reason, old, self.size(), self.chunks)

    def under_pressure(self, step: int, used: float | None, limit: float, what: str = "VRAM") -> BackOff | None:
        """Back off before an out-of-memory error when the card (or the machine's RAM) is fuller than `limit`."""
        if limit >= 1.0 or step < self.quiet_until or used is None or used <= limit:
            return None
        whose = "the card" if what == "VRAM" else "the machine"
        change = self.back_off(step, f"{what} at {used:.0%} of {whose} (limit {limit:.0%})")
        if change is not None:
            self.quiet_until = step + PRESSURE_QUIET_STEPS
        return change

    def grow_due(self, step: int) -> bool:
        return self.chunks > self.least and step - self.last_change >= GROW_AFTER_STEPS

    def grow(self, step: int, used: float | None, limit: float, ram: float | None = None,
             ram_limit: float = 1.0) -> BackOff | None:
        """Half the chunks after GROW_AFTER_STEPS quiet steps, if the card (or there is no card) and the RAM have
        room."""
        if not self.grow_due(step):
            return None
        if (used is not None and used > 0.8 * limit) or (ram is not None and ram_limit < 1.0 and ram > 0.8 * ram_limit):
            return None
        old = self.size()
        self.chunks = max(self.least, self.chunks // 2)
        self.last_change = step
        return BackOff(f"{GROW_AFTER_STEPS} steps without memory trouble", old, self.size(), self.chunks)

    def attempt(self, step: int, run: Callable[[], T], generators: list[torch.Generator],
                on_back_off: Callable[[BackOff], None], inject: Callable[[], None] = lambda: None) -> T:
        """`run()` until it fits: after an out-of-memory error the random states are put back, the chunks
        halve and it runs again. Raises OutOfMemoryAtOneSlot when there is nothing left to split."""
        states = [g.get_state() for g in generators]
        cpu_rng = torch.get_rng_state()
        while True:
            try:
                inject()
                return run()
            except torch.OutOfMemoryError:
                pass  # handled outside the except block, so the failed attempt's tensors can be freed
            for g, s in zip(generators, states):
                g.set_state(s)  # the retry draws the same randomness as the failed attempt
            torch.set_rng_state(cpu_rng)
            change = self.back_off(step, "out of memory")
            if change is None:
                raise OutOfMemoryAtOneSlot(f"out of memory at step {step} with chunks of one slot; "
                                           "lower model.d_model or train.batch_size")
            on_back_off(change)

    def state_dict(self) -> dict:
        return {"chunks": self.chunks, "quiet_until": self.quiet_until, "last_change": self.last_change}

    def load_state_dict(self, state: dict) -> None:
        self.chunks = int(state["chunks"])
        self.quiet_until = int(state.get("quiet_until", 0))
        self.last_change = int(state.get("last_change", 0))
