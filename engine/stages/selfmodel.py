"""Self-modeling: the model learns to predict its own behaviour, beside the task.

Each level has pipeline.selfmodel_ranges sampling-temperature ranges (engine/tasks/levels.py,
`temperature_ranges`: wider as the levels rise). A `selfmodel_share` of the refilled slots is a self-prediction
question: the model's own answer to a question of the level, sampled at a temperature drawn inside one range,
becomes the label of that question behind the range's tag (`self t0.10-0.42: 37+45`). The other slots are the
plain task. Both are ordinary wake training (engine/stages/wake.py); only the batch source differs.

Figures before and after, on the level's held-out questions: task exact; self-prediction exact per range (the
model, shown the tag, predicts the answer it then samples at a temperature inside the range); expected
calibration error (10 equal bins) of the halting head's confidence sigmoid(q_halt) against the answer being
right (`ece`), and of the answer's own probability, the product over its positions of the top softmax
probability (`ece_answer`).
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from engine.evaluate import score
from engine.model.trm import PAD, TinyRecursiveModel
from engine.stages import StepResult
from engine.stages.levels import LevelPlan, Timed, level_event, position_events
from engine.stages.wake import WakeStage
from engine.tasks.base import Sample
from engine.tasks.levels import self_tag, temperature_ranges
from engine.tasks.tokenizer import stable_rng

ECE_BINS = 10
CALIBRATION_EVERY = 25  # steps between the calibration curve's points (one held-out pass each)
CURVE = ("ece", "ece_answer", "task_exact")  # sent as selfmodel/<name> metrics: the console's curves


def expected_calibration_error(confidence: torch.Tensor, correct: torch.Tensor, bins: int = ECE_BINS) -> float:
    """sum over equal-width confidence bins of (share of samples) x |accuracy - mean confidence|."""
    which = (confidence.clamp(0, 1) * bins).long().clamp(max=bins - 1)
    error = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            error += float(inside.float().mean()) * abs(float(correct[inside].float().mean())
                                                        - float(confidence[inside].mean()))
    return error


@torch.no_grad()
def sample_answers(logits: torch.Tensor, temperatures: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """(B, S) ids drawn from softmax(logits / T) per position, T per sample (B,)."""
    probs = F.softmax(logits.float() / temperatures.to(logits.device)[:, None, None], -1).cpu()
    ids = torch.multinomial(probs.flatten(0, 1), 1, generator=generator).view(probs.shape[:2])
    return ids.to(logits.device)


class SelfModelFeed:
    """The self-model stage's batch source (WakeStage's feed): the level's questions, plain or self-predicted."""

    def __init__(self, plan: LevelPlan, model: TinyRecursiveModel, seed: int):
        self.plan, self.model, self.seed = plan, model, seed
        self.generator = torch.Generator().manual_seed(seed)
        self.level, self.drawn = 0, 0

    @property
    def done(self) -> bool:
        return False  # the stage counts its own steps

    def ranges(self) -> list[tuple[float, float]]:
        return temperature_ranges(self.level, self.plan.curriculum.levels, self.plan.cfg.selfmodel_ranges)

    def self_samples(self, problems, ranges: list[int], temperatures: list[float]) -> list[Sample]:
        """The questions behind their range's tag, each labelled with the model's own answer sampled at its
        temperature."""
        task = self.plan.at(self.level)
        plain_in, plain = self.plan.stack([task.encode(p) for p in problems])
        logits, _ = self.plan.logits(self.model, plain_in)
        drawn = sample_answers(logits, torch.tensor(temperatures), self.generator)
        out = []
        for b, (p, r) in enumerate(zip(problems, ranges)):
            s = task.prompted(p, self_tag(*self.ranges()[r]), "none")
            labels = list(s.labels)
            for src, dst in zip((plain[b] != PAD).nonzero()[:, 0].tolist(), [i for i, t in enumerate(labels) if t != PAD]):
                labels[dst] = int(drawn[b, src])  # a sampled pad is simply not scored
            out.append(Sample(inputs=s.inputs, labels=labels))
        return out

    def fill(self, need: list[bool]) -> dict[int, Sample]:
        task, questions = self.plan.at(self.level), self.plan.curriculum.questions
        plain, own = {}, {}
        for slot, needed in enumerate(need):
            if not needed:
                continue
            rng = stable_rng(self.seed, "selfmodel", self.level, self.drawn)
            self.drawn += 1
            problem = task.problem("train", (self.level - 1) * questions + rng.randrange(questions))
            if rng.random() < self.plan.cfg.selfmodel_share:
                r = rng.randrange(self.plan.cfg.selfmodel_ranges)
                own[slot] = (problem, r, rng.uniform(*self.ranges()[r]))
            else:
                plain[slot] = task.encode(problem)
        if own:
            problems, ranges, temperatures = zip(*own.values())
            plain.update(zip(own, self.self_samples(problems, list(ranges), list(temperatures))))
        return plain

    def grade(self, halted: list[bool], predicted: list[list[int]]) -> None:
        return None

    def metrics(self) -> dict[str, float]:
        return {"pipeline/level": float(self.level)}

    def state_dict(self) -> dict:
        return {"level": self.level, "drawn": self.drawn, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.level, self.drawn = int(state["level"]), int(state["drawn"])
        self.generator.set_state(state["generator"].cpu())


class SelfModelStage(WakeStage):
    name = "selfmodel"

    def __init__(self, plan: LevelPlan, model: TinyRecursiveModel, optimizer, batch_size: int,
                 device: torch.device, generator: torch.Generator, seed: int, *parts):
        super().__init__(model, optimizer, plan.task, batch_size, device, generator, *parts,
                         feed=SelfModelFeed(plan, model, seed))
        self.plan, self.batch_size, self.seed = plan, batch_size, seed
        self.steps_done = 0
        self.before: dict[str, float] = {}
        self.reports: dict[str, dict] = {}
        self.timed = Timed()

    def begin(self, step: int) -> None:
        t0 = time.perf_counter()
        self.timed = Timed()
        self.feed.level, self.feed.drawn, self.steps_done = self.plan.level, 0, 0
        self.carry = self.model.initial_carry(self.batch_size, self.device)
        self.before = self.measure()
        self.timed.add(t0)

    def done(self) -> bool:
        return self.feed.level == self.plan.level and self.steps_done >= self.plan.cfg.selfmodel_steps

    def step(self, step: int) -> StepResult:
        t0 = time.perf_counter()
        result = super().step(step)
        self.steps_done += 1
        self.timed.add(t0, step=True)
        if self.done():
            result.events.append(level_event(self.report()))
            curve = {k: self.reports[str(self.feed.level)][f"{k}_after"] for k in CURVE}
        elif self.steps_done == 1:
            curve = {k: self.before[k] for k in CURVE}
        elif self.steps_done % CALIBRATION_EVERY == 0:
            curve = self.calibration()
        else:
            curve = {}
        result.metrics.update({f"selfmodel/{k}": curve[k] for k in CURVE if k in curve})
        result.events.extend(position_events(self, self.steps_done))
        return result

    def position(self) -> dict:
        return self.plan.position(self.name, self.steps_done / max(1, self.plan.cfg.selfmodel_steps), self.steps_done)

    def end(self, step: int) -> list[tuple[str, dict]]:
        return []

    def report(self) -> dict[str, float]:
        after = self.measure()
        level = self.feed.level
        figures = {"level": level, "eval_exact": after["task_exact"], "eval_cell": after["task_cell"],
                   **self.timed.figures(), **{f"{k}_before": v for k, v in self.before.items()},
                   **{f"{k}_after": v for k, v in after.items()}}
        self.reports[str(level)] = figures
        return figures

    @torch.no_grad()
    def calibration(self, logits: torch.Tensor | None = None, q_halt: torch.Tensor | None = None
                    ) -> dict[str, float]:
        """Task exact and the two calibration errors on the level's held-out questions."""
        inputs, labels = self.plan.probe(self.feed.level)
        if logits is None:
            logits, q_halt = self.plan.logits(self.model, inputs)
        right, cells = score(logits.argmax(-1), labels)
        answer = labels != PAD
        top = F.softmax(logits.float(), -1).amax(-1).masked_fill(~answer, 1.0).prod(-1)
        return {"task_exact": float(right.float().mean()),
                "task_cell": float(cells.sum()) / max(1, int(answer.sum())),
                "ece": expected_calibration_error(torch.sigmoid(q_halt), right),
                "ece_answer": expected_calibration_error(top, right)}

    @torch.no_grad()
    def measure(self) -> dict[str, float]:
        """Task exact, calibration and self-prediction per range on the level's held-out questions."""
        plan, level = self.plan, self.feed.level
        inputs, labels = plan.probe(level)
        logits, q_halt = plan.logits(self.model, inputs)
        answer = labels != PAD
        figures = self.calibration(logits, q_halt)
        # the same draws before and after: a generator of its own, seeded by the level
        generator = torch.Generator().manual_seed(self.seed * 1000 + level)
        problems = plan.held_out(level)
        for r, (low, high) in enumerate(self.feed.ranges()):
            temperatures = low + (high - low) * torch.rand(len(problems), generator=generator)
            drawn = sample_answers(logits, temperatures, generator)
            tagged_in, tagged = plan.probe(level, self_tag(low, high))
            guess = plan.logits(self.model, tagged_in)[0].argmax(-1)
            hits = [guess[b][tagged[b] != PAD].tolist() == drawn[b][answer[b]].tolist() for b in range(len(problems))]
            figures[f"self_exact_r{r}"] = sum(hits) / len(hits)
        return figures

    def state_dict(self) -> dict:
        return {**super().state_dict(), "steps_done": self.steps_done, "before": dict(self.before),
                "timed": self.timed.state_dict(), "reports": {k: dict(v) for k, v in self.reports.items()}}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.steps_done, self.before = int(state["steps_done"]), dict(state["before"])
        self.timed.load_state_dict(state["timed"])
        self.reports = {k: dict(v) for k, v in state["reports"].items()}
