"""The train state: every component of a run saved and restored together, so a resumed run (or a rollback
after a non-finite loss) continues exactly where the checkpoint was taken.

Weights (the model and its EMA copy) go to safetensors; everything else (optimizer, random states, the
schedule, each stage, the micro-batch split) is a component with state_dict/load_state_dict.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn as nn

from engine import checkpoint


class Component(Protocol):
    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


class RandomState:
    """A torch.Generator (or, with None, torch's global CPU generator) as a component."""

    def __init__(self, generator: torch.Generator | None = None):
        self.generator = generator

    def state_dict(self) -> dict:
        return {"state": self.generator.get_state() if self.generator is not None else torch.get_rng_state()}

    def load_state_dict(self, state: dict) -> None:
        s = state["state"].cpu()
        self.generator.set_state(s) if self.generator is not None else torch.set_rng_state(s)


class TrainState:
    def __init__(self, root: Path, weights: dict[str, nn.Module], components: dict[str, Component]):
        self.root, self.weights, self.components = root, weights, components

    def capture(self, step: int) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors = {f"{name}.{k}": v for name, module in self.weights.items() for k, v in module.state_dict().items()}
        state = {"step": step, **{name: c.state_dict() for name, c in self.components.items()}}
        return tensors, state

    def check(self, ckpt: checkpoint.Checkpoint) -> None:
        """Raise CheckpointError with one sentence when a checkpoint that verified does not fit this run."""
        for name, module in self.weights.items():
            want = {f"{name}.{k}": tuple(v.shape) for k, v in module.state_dict().items()}
            have = {k: tuple(v.shape) for k, v in ckpt.tensors.items() if k.startswith(name + ".")}
            if want != have:
                missing = sorted(set(want) - set(have))
                wrong = sorted(k for k in set(want) & set(have) if want[k] != have[k])
                what = f"missing {missing[0]}" if missing else f"{wrong[0]} has shape {have[wrong[0]]}, not {want[wrong[0]]}" \
                    if wrong else f"unexpected {sorted(set(have) - set(want))[0]}"
                raise checkpoint.CheckpointError(f"checkpoint {ckpt.path.name}: its weights do not fit this model "
                                                 f"({what}).")
        absent = [name for name in ["step", *self.components] if name not in ckpt.state]
        if absent:
            raise checkpoint.CheckpointError(f"checkpoint {ckpt.path.name}: its state has no {absent[0]!r} entry "
                                             "(saved by another version of the lab?).")

    def restore(self, ckpt: checkpoint.Checkpoint) -> int:
        """Load every component; returns the checkpoint's step."""
        for name, module in self.weights.items():
            prefix = name + "."
            module.load_state_dict({k[len(prefix):]: v for k, v in ckpt.tensors.items() if k.startswith(prefix)})
        for name, component in self.components.items():
            component.load_state_dict(ckpt.state[name])
        return int(ckpt.state["step"])

    def save(self, step: int, meta: dict, keep: int, inject_errno: int | None = None,
             captured: tuple[dict[str, torch.Tensor], dict[str, Any]] | None = None) -> Path:
        """Write the state (`captured`: taken already by capture(), as every rank of a distributed run must)."""
        tensors, state = captured if captured is not None else self.capture(step)
        return checkpoint.save(self.root, step, tensors, state, meta=meta, keep=keep, inject_errno=inject_errno)

    def load_latest(self, map_location) -> tuple[checkpoint.Checkpoint | None, list[str]]:
        """The newest checkpoint that verifies and fits this run, and why newer ones were skipped."""
        return checkpoint.load_latest(self.root, map_location=map_location, check=self.check)
