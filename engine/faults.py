"""Fault injection for the fault suite and for users who want to rehearse a failure: the environment
variable TRM_LAB_FAULTS="oom@12,nan@30,enospc@40" makes step 12's forward raise torch.OutOfMemoryError,
step 30's loss NaN and the checkpoint at step 40 fail with ENOSPC. Each entry fires once; repeat an entry
to fire it again. Kept out of the config on purpose: a fault is a rehearsal, not a setting of the run.
(No torch here: the CLI checks the variable before it creates a run folder.)
"""

from __future__ import annotations

import os

from engine.config import ConfigError

FAULTS_ENV = "TRM_LAB_FAULTS"
FAULT_KINDS = ("oom", "nan", "enospc")


def parse_faults(text: str) -> dict[str, list[int]]:
    """`"oom@12,oom@12;nan@30"` -> {"oom": [12, 12], "nan": [30]}. A malformed entry is a ConfigError."""
    faults: dict[str, list[int]] = {}
    for entry in text.replace(";", ",").split(","):
        if not entry.strip():
            continue
        kind, at, step = (part.strip() for part in entry.partition("@"))
        if kind not in FAULT_KINDS or not at or not step.isdigit():
            raise ConfigError(f"{FAULTS_ENV}: entry {entry.strip()!r} is not KIND@STEP with KIND one of "
                              f"{', '.join(FAULT_KINDS)} and STEP a whole number, e.g. 'oom@12,nan@30'.")
        faults.setdefault(kind, []).append(int(step))
    return faults


def faults_from_env() -> dict[str, list[int]]:
    return parse_faults(os.environ.get(FAULTS_ENV, ""))


class Faults:
    """The injected faults of one run, each entry fired once (FAULTS_ENV)."""

    def __init__(self, faults: dict[str, list[int]] | None = None):
        self.pending = faults if faults is not None else faults_from_env()

    def take(self, kind: str, step: int) -> bool:
        """True once per `kind@step` entry."""
        steps = self.pending.get(kind)
        if steps and step in steps:
            steps.remove(step)
            return True
        return False

    def raise_oom(self, step: int) -> None:
        if self.take("oom", step):
            import torch  # here, not at the top: the CLI checks the variable without loading torch

            raise torch.OutOfMemoryError(f"injected out-of-memory at step {step} ({FAULTS_ENV})")

    def loss_factor(self, step: int) -> float:
        """NaN when a non-finite loss is due at `step`, else 1."""
        return float("nan") if self.take("nan", step) else 1.0
