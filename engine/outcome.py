"""Tool use that learns from the outcome: expert iteration on the program task.

With cross-entropy alone the target is the reference program, so a different program that passes every test case
is penalised. With `train.outcome = "expert"`, every fresh training question is first answered by the model itself:
its greedy program and `train.outcome_samples - 1` programs sampled at `train.outcome_temperature` (each answer
position drawn from the model's distribution there). Each is run in the sandbox (engine/sandbox.py) on the
question's test cases; the first that passes them all becomes the question's target in place of the reference
program. When none passes, the reference stays, so the loss is cross-entropy on what the model cannot yet do and
likelihood of its own passing programs on what it can.

The programs are the model's output, untrusted: they are only ever run by the sandbox, under its limits.
"""

from __future__ import annotations

import dataclasses

import torch

from engine.model.trm import TinyRecursiveModel
from engine.tasks.base import Sample
from engine.tasks.program import ProgramTask


class OutcomeTargets:
    """Replaces reference programs by the model's own passing ones (expert iteration), counting what it did."""

    def __init__(self, task: ProgramTask, samples: int, temperature: float, generator: torch.Generator):
        assert samples >= 1 and temperature > 0
        self.task, self.samples, self.temperature, self.generator = task, samples, temperature, generator
        self.questions = self.passed = self.own = 0  # fresh questions; with a passing program; not the reference

    @torch.no_grad()
    def candidates(self, model: TinyRecursiveModel, inputs: torch.Tensor) -> torch.Tensor:
        """(K, B, S) predicted ids: the greedy answer first, then K - 1 samples at the temperature."""
        was_training = model.training
        model.eval()
        logits, _ = model.predict_logits(inputs)  # (B, S, V)
        model.train(was_training)
        B, S, V = logits.shape
        probs = torch.softmax(logits.float().reshape(B * S, V) / self.temperature, dim=-1).cpu()
        drawn = [torch.multinomial(probs, 1, generator=self.generator).reshape(B, S)
                 for _ in range(self.samples - 1)]
        return torch.stack([logits.argmax(-1).cpu(), *drawn])

    def relabel(self, model: TinyRecursiveModel, inputs: torch.Tensor, labels: torch.Tensor,
                indices: list[int]) -> torch.Tensor:
        """`labels` of training questions `indices` with each reference program replaced by the model's first
        program that passes the question's test cases in the sandbox (where one does)."""
        labels = labels.clone()
        candidates = self.candidates(model, inputs)
        for row, index in enumerate(indices):
            problem = self.task.problem("train", index)
            shown = Sample(inputs=inputs[row].tolist(), labels=labels[row].tolist())
            self.questions += 1
            for predicted in candidates[:, row]:
                program = self.task.predicted_program(predicted.tolist(), shown)
                if not self.fits(problem.prompt, program) or not self.task.check(problem, program).ok:
                    continue
                self.passed += 1
                self.own += program.split() != problem.answer.split()
                own = self.task.encode(dataclasses.replace(problem, answer=program))
                labels[row] = torch.tensor(own.labels, dtype=labels.dtype)
                break
        return labels

    def fits(self, prompt: str, program: str) -> bool:
        return bool(program.strip()) and len(prompt) + 1 + len(program) + 1 <= self.task.seq_len

    def metrics(self) -> dict[str, float]:
        n = max(1, self.questions)
        return {"outcome/passed": self.passed / n, "outcome/own": self.own / n}

    def state_dict(self) -> dict:
        return {"questions": self.questions, "passed": self.passed, "own": self.own}

    def load_state_dict(self, state: dict) -> None:
        self.questions, self.passed, self.own = int(state["questions"]), int(state["passed"]), int(state["own"])
