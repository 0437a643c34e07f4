"""Tool use learning from the outcome: the model's own programs that pass the sandbox replace the reference."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from engine.config import ConfigError, from_dict
from engine.outcome import OutcomeTargets
from engine.tasks.base import batch
from engine.tasks.program import ProgramTask

TASK = ProgramTask(difficulty=1, seed=0)


def answered(index: int, program: str) -> list[int]:
    """Predicted ids that write `program` as the answer to training question `index`."""
    problem = TASK.problem("train", index)
    return TASK.encode(dataclasses.replace(problem, answer=program)).labels


def targets(monkeypatch, programs: list[str], index: int = 0) -> tuple[torch.Tensor, torch.Tensor, OutcomeTargets]:
    outcome = OutcomeTargets(TASK, samples=len(programs), temperature=1.0, generator=torch.Generator())
    ids = torch.tensor([[answered(index, p)] for p in programs])  # (K, 1, S)
    monkeypatch.setattr(outcome, "candidates", lambda model, inputs: ids)
    inputs, labels = batch(TASK, "train", [index])
    return labels, outcome.relabel(None, inputs, labels, [index]), outcome


def test_a_different_program_that_passes_becomes_the_target(monkeypatch):
    problem = TASK.problem("train", 0)
    other = problem.answer.replace(" .", " 0 + .")  # the same function written differently
    assert other != problem.answer and TASK.check(problem, other).ok
    reference, labels, outcome = targets(monkeypatch, ["1 0 / .", other])
    assert labels[0].tolist() == answered(0, other) and not torch.equal(labels, reference)
    assert (outcome.questions, outcome.passed, outcome.own) == (1, 1, 1)


@pytest.mark.parametrize("programs", [["1 0 / ."], ["drop 7 ."], ["dup dup dup"], ["while 1 end"]])
def test_when_no_program_passes_the_reference_stays(monkeypatch, programs):
    reference, labels, outcome = targets(monkeypatch, programs)
    assert torch.equal(labels, reference) and (outcome.passed, outcome.own) == (0, 0)


def test_the_reference_written_by_the_model_counts_as_passed_not_own(monkeypatch):
    reference, labels, outcome = targets(monkeypatch, [TASK.problem("train", 0).answer])
    assert torch.equal(labels, reference) and (outcome.passed, outcome.own) == (1, 0)


def test_outcome_training_is_only_for_the_program_task_stream():
    with pytest.raises(ConfigError, match="train.outcome = 'expert' needs task.name = 'program'"):
        from_dict({"task": {"name": "arithmetic"}, "train": {"outcome": "expert"}})
    with pytest.raises(ConfigError, match="train.outcome"):
        from_dict({"task": {"name": "program"}, "train": {"outcome": "best"}})
    with pytest.raises(ConfigError, match="train.outcome_samples"):
        from_dict({"task": {"name": "program"}, "train": {"outcome": "expert", "outcome_samples": 0}})
    assert from_dict({"task": {"name": "program"}, "train": {"outcome": "expert"}}).train.outcome == "expert"


def test_a_run_with_outcome_training_samples_runs_and_saves_its_counts(tmp_path):
    from engine.trainer import Trainer
    cfg = from_dict({"task": {"name": "program"},
                     "model": {"d_model": 32, "n_layers": 1, "n_heads": 2, "H_cycles": 1, "L_cycles": 1,
                               "halt_max_steps": 1},
                     "train": {"outcome": "expert", "outcome_samples": 3, "batch_size": 4, "max_steps": 2,
                               "threads": 1, "device": "cpu"},
                     "eval": {"every": 0}, "checkpoint": {"every": 0},
                     "log": {"telemetry_seconds": 100.0, "print_seconds": 100.0}})
    metrics = []
    trainer = Trainer(tmp_path / "run", cfg, output="quiet",
                      emit=lambda e: metrics.append(e["data"]) if e["event"] == "metrics" else None)
    assert trainer.run() == 0
    assert trainer.wake.outcome.questions == 8 and {"outcome/passed", "outcome/own"} <= set(metrics[-1])
    assert trainer.wake.state_dict()["outcome"]["questions"] == 8
