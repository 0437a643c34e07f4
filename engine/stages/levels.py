"""The Phase-5 level pipeline: every level runs the stages of `pipeline.stages` in order (curriculum -> bake ->
self-model -> dream), each one a stage of the run's schedule (engine/stages/__init__.py), built by
engine/build.py.

    curriculum  the level's question queue (engine/curriculum.py over the levels task) until fewer than
                curriculum.threshold of its questions remain or curriculum.max_epochs passes; a share of the
                slots practises the prompts, so the model can follow each prompt before it is baked
    bake        engine/stages/bake.py: each prompt of pipeline.bake distilled into the weights
    selfmodel   engine/stages/selfmodel.py: the model learns to predict its own sampled answers
    dream       engine/stages/dream.py: high-temperature replay of the level's questions

`LevelPlan` is what the stages share: the task, the level being worked on (the curriculum's), the held-out
questions of every level, the prompts. Each stage keeps its figures per level in `reports` (saved with it)
and sends them as an "eval" event with its last step of the level (not at its end: the last stage of the
run is never ended): `eval_exact` is the level's held-out exact after the stage, `minutes` its wall time.
"""

from __future__ import annotations

import time

import torch

from engine.config import CurriculumConfig, PipelineConfig
from engine.curriculum import CurriculumFeed, CurriculumQueue
from engine.evaluate import score
from engine.model.trm import PAD, TinyRecursiveModel
from engine.stages import StepResult
from engine.stages.wake import WakeStage
from engine.tasks.base import Sample
from engine.tasks.levels import EFFECTS, LevelTask
from engine.tasks.tokenizer import Problem, stable_rng


class LevelPlan:
    """The pipeline's shared facts: the task at every level, the current level, held-out questions, prompts."""

    def __init__(self, pipeline: PipelineConfig, curriculum: CurriculumConfig, task: LevelTask,
                 device: torch.device, eval_batch: int = 256):
        self.cfg, self.curriculum, self.task, self.device = pipeline, curriculum, task, device
        self.eval_batch = eval_batch
        self.prompts = {name: getattr(pipeline, name) for name in pipeline.bake}  # name -> text, in bake order
        self.feed: LevelFeed | None = None  # the curriculum's; it says which level is being worked on
        self._tasks: dict[int, LevelTask] = {}
        self._held_out: dict[int, list[Problem]] = {}

    @property
    def level(self) -> int:
        return self.feed.level

    def position(self, stage: str, progress: float, steps: int) -> dict:
        """Where the pipeline stands (engine/protocol.py's PIPELINE_POSITION), `stage` running."""
        queue = self.feed.queue
        ended = queue.ended.get(str(self.level), {})
        return {"level": self.level, "levels": self.curriculum.levels, "stage": stage,
                "stages": list(self.cfg.stages), "progress": round(min(1.0, max(0.0, progress)), 4),
                "steps": int(steps), "questions": int(ended.get("size", queue.size)),
                "questions_left": int(ended.get("left", queue.remaining))}

    def at(self, level: int) -> LevelTask:
        if level not in self._tasks:
            self._tasks[level] = self.task.at_level(level)
        return self._tasks[level]

    @staticmethod
    def effect(prompt: str) -> str:
        return prompt if prompt in EFFECTS else "none"  # a checkable prompt is named after its effect

    def held_out(self, level: int) -> list[Problem]:
        """The level's first `probe_size` distinct held-out questions."""
        if level not in self._held_out:
            self._held_out[level] = self.at(level).distinct_problems("test", self.cfg.probe_size)
        return self._held_out[level]

    def checks(self, level: int) -> list[Problem]:
        """The held-out questions a level's advancement is judged on: the `curriculum.check_size` distinct ones
        after the probe's, so the figures reported after a level were not what ended it (fewer where the
        level's test split holds fewer)."""
        key = -level  # beside the probes, in the same cache
        if key not in self._held_out:
            n = self.cfg.probe_size + self.curriculum.check_size
            self._held_out[key] = self.at(level).distinct_problems("test", n)[self.cfg.probe_size:]
        return self._held_out[key]

    def stack(self, samples: list[Sample]) -> tuple[torch.Tensor, torch.Tensor]:
        inputs = torch.tensor([s.inputs for s in samples], dtype=torch.long, device=self.device)
        labels = torch.tensor([s.labels for s in samples], dtype=torch.long, device=self.device)
        return inputs, labels

    def probe(self, level: int, prompt: str | None = None, effect: str = "none") -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, labels) of the level's held-out questions, behind `prompt` when given."""
        task = self.at(level)
        samples = [task.encode(p) if prompt is None else task.prompted(p, prompt, effect)
                   for p in self.held_out(level)]
        return self.stack(samples)

    def check_exact(self, model: TinyRecursiveModel, level: int) -> float:
        """Exact on the level's advancement questions (`checks`); 0 when the level holds none beyond the probe."""
        problems = self.checks(level)
        if not problems:
            return 0.0
        inputs, labels = self.stack([self.at(level).encode(p) for p in problems])
        logits, _ = self.logits(model, inputs)
        return float(score(logits.argmax(-1), labels)[0].float().mean())

    @torch.no_grad()
    def logits(self, model: TinyRecursiveModel, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The model's final answer (eval semantics: every supervision step) in batches: (logits, q_halt)."""
        was_training = model.training
        model.eval()
        parts = [model.predict_logits(inputs[i:i + self.eval_batch]) for i in range(0, len(inputs), self.eval_batch)]
        model.train(was_training)
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    def exact(self, model: TinyRecursiveModel, level: int, prompt: str | None = None,
              effect: str = "none") -> tuple[float, float]:
        """(exact, cell accuracy) on the level's held-out questions, behind `prompt` when given."""
        inputs, labels = self.probe(level, prompt, effect)
        logits, _ = self.logits(model, inputs)
        right, cells = score(logits.argmax(-1), labels)
        return float(right.float().mean()), float(cells.sum()) / max(1, int((labels != PAD).sum()))


class LevelProvider:
    """The curriculum queue's questions (engine/curriculum.py's QuestionProvider) from the levels task."""

    def __init__(self, plan: LevelPlan):
        self.plan = plan
        self.seq_len, self.vocab_size = plan.task.seq_len, plan.task.vocab_size

    def question(self, level: int, index: int, variant: int) -> Problem:
        task = self.plan.at(level)
        return task.variant(task.problem("train", index), variant)

    def encode(self, problem: Problem, hint: int) -> Sample:
        return self.plan.task.encode(problem, hint)

    def max_hint(self, problem: Problem) -> int:
        return self.plan.task.max_hint(problem)

    def grade(self, problem: Problem, predicted: list[int], sample: Sample | None = None) -> bool:
        return self.plan.task.grade(problem, predicted, sample)


class LevelQueue(CurriculumQueue):
    """The question queue, remembering how each level ended (questions left, passes, why)."""

    def __init__(self, *args, **kwargs):
        self.ended: dict[str, dict] = {}  # str(level) -> {"left", "size", "epochs", "reason"}; JSON-able keys
        super().__init__(*args, **kwargs)

    def _end_level(self, reason: str) -> None:
        self.ended[str(self.level)] = {"left": self.remaining, "size": self.size, "epochs": self.epoch,
                                       "reason": reason}
        super()._end_level(reason)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "ended": {k: dict(v) for k, v in self.ended.items()}}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.ended = {k: dict(v) for k, v in state["ended"].items()}


class LevelFeed:
    """The curriculum stage's batch source (it speaks CurriculumFeed's part for WakeStage): the level's queue,
    and, in a `prompt_share` of the refilled slots, a question of the level behind one of the prompts, its label
    the answer the prompt asks for. Those practice slots are not graded and never touch the queue."""

    def __init__(self, plan: LevelPlan, batch_size: int):
        self.plan = plan
        provider = LevelProvider(plan)
        queue = LevelQueue.from_config(plan.curriculum, provider, seed=plan.task.seed)
        self.inner = CurriculumFeed(queue, provider, batch_size, review_share=plan.curriculum.review_share)
        self.level = queue.level  # the level this stage trains; the queue moves on as soon as it ends
        self.drawn = 0  # refills decided so far: refill n draws from stable_rng(seed, "practice", n)
        plan.feed = self

    @property
    def queue(self) -> LevelQueue:
        return self.inner.queue

    @property
    def done(self) -> bool:
        return self.queue.done or self.queue.level != self.level

    def next_level(self) -> None:
        self.level = self.queue.level

    def _practice(self, rng) -> Sample:
        names = list(self.plan.prompts)
        name = names[rng.randrange(len(names))]
        index = (self.level - 1) * self.plan.curriculum.questions + rng.randrange(self.plan.curriculum.questions)
        task = self.plan.at(self.level)
        return task.prompted(task.problem("train", index), self.plan.prompts[name], self.plan.effect(name))

    def fill(self, need: list[bool]) -> dict[int, Sample]:
        practice = {}
        for slot, needed in enumerate(need):
            if not needed or not self.plan.prompts or not self.plan.cfg.prompt_share:
                continue
            rng = stable_rng(self.plan.task.seed, "practice", self.drawn)
            self.drawn += 1
            if rng.random() < self.plan.cfg.prompt_share:
                practice[slot] = self._practice(rng)
        samples = self.inner.fill([n and slot not in practice for slot, n in enumerate(need)])
        for slot in practice:
            self.inner.slots[slot] = None  # a practice slot has no queue question to grade
        return {**samples, **practice}

    def grade(self, halted: list[bool], predicted: list[list[int]]) -> dict | None:
        return self.inner.grade(halted, predicted)

    def metrics(self) -> dict[str, float]:
        return {**self.inner.metrics(), "pipeline/level": float(self.level)}

    def state_dict(self) -> dict:
        return {"inner": self.inner.state_dict(), "level": self.level, "drawn": self.drawn}

    def load_state_dict(self, state: dict) -> None:
        self.inner.load_state_dict(state["inner"])
        self.level, self.drawn = int(state["level"]), int(state["drawn"])


class Timed:
    """Wall-clock seconds a stage has spent on its current level: its steps, and its begin and end."""

    def __init__(self):
        self.seconds = 0.0
        self.steps = 0

    def add(self, t0: float, step: bool = False) -> None:
        self.seconds += time.perf_counter() - t0
        self.steps += step

    def figures(self) -> dict[str, float]:
        return {"minutes": self.seconds / 60, "steps": self.steps}

    def state_dict(self) -> dict:
        return {"seconds": self.seconds, "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.seconds, self.steps = float(state["seconds"]), int(state["steps"])


def level_event(figures: dict[str, float]) -> tuple[str, dict]:
    """A stage's figures for its level as the "eval" event it sends with its last step."""
    return "eval", {k: float(v) for k, v in figures.items()}


POSITION_EVERY = 20  # a stage sends where the pipeline stands with its first step, every 20th, and its last


def position_events(stage, steps: int) -> list[tuple[str, dict]]:
    """The "pipeline" event a pipeline stage sends with this step, if any (its console strip's figures)."""
    if steps == 1 or steps % POSITION_EVERY == 0 or stage.done():
        return [("pipeline", stage.position())]
    return []


class CurriculumStage(WakeStage):
    """Wake training on the level's question queue; done when the level ends."""

    name = "curriculum"

    def __init__(self, plan: LevelPlan, model: TinyRecursiveModel, optimizer, batch_size: int,
                 device: torch.device, generator: torch.Generator, *parts):
        super().__init__(model, optimizer, plan.task, batch_size, device, generator, *parts,
                         feed=LevelFeed(plan, batch_size))
        self.plan, self.batch_size = plan, batch_size
        self.timed = Timed()
        self.checked = -1.0  # the level's last advancement check (held-out exact); -1 before the first
        self.best_check, self.stale_checks = -1.0, 0  # the level's best check so far, and checks since it
        self.reports: dict[str, dict] = {}  # str(level) -> the level's figures

    def begin(self, step: int) -> None:
        t0 = time.perf_counter()
        self.feed.next_level()
        self.carry = self.model.initial_carry(self.batch_size, self.device)  # the slots held the last level
        self.timed = Timed()
        self.checked = -1.0
        self.best_check, self.stale_checks = -1.0, 0
        self.timed.add(t0)

    def step(self, step: int) -> StepResult:
        t0 = time.perf_counter()
        result = super().step(step)
        self.timed.add(t0, step=True)
        self.judge()
        if self.done():  # the level ended with this step: its figures go out now (the run may end here)
            result.events.append(level_event(self.report()))
        result.events.extend(position_events(self, self.timed.steps))
        return result

    def end(self, step: int) -> list[tuple[str, dict]]:
        return []

    def judge(self) -> None:
        """Advancement on held-out figures: every `check_every` steps of the level, end it once its check
        questions reach `advance_exact` (answers to the queue's own questions can be learned by heart), or once
        the check has not beaten its best for `advance_patience` checks in a row (a plateau; not on the last level,
        which has no next one to make room for)."""
        cfg = self.plan.curriculum
        if (cfg.advance_exact <= 0 and cfg.advance_patience <= 0) or self.done() or self.timed.steps % cfg.check_every:
            return
        exact = self.plan.check_exact(self.model, self.feed.level)
        self.checked = exact
        if exact > self.best_check:
            self.best_check, self.stale_checks = exact, 0
        else:
            self.stale_checks += 1
        if cfg.advance_exact > 0 and exact >= cfg.advance_exact:
            self.feed.queue.end_level("held-out")
        elif 0 < cfg.advance_patience <= self.stale_checks and self.feed.level < cfg.levels:
            self.feed.queue.end_level("plateau")  # the last level has no next one to make room for: it goes on

    def position(self) -> dict:
        """The level ends at max_epochs passes or when fewer than the threshold's questions are left: progress
        is the nearer of the two."""
        queue, cur = self.feed.queue, self.plan.curriculum
        if self.done():
            return self.plan.position(self.name, 1.0, self.timed.steps)
        target = queue.size * (1 - cur.threshold)
        mastered = (queue.size - queue.remaining) / target if target > 0 else 0.0
        return self.plan.position(self.name, max(queue.epoch / max(1, cur.max_epochs), mastered), self.timed.steps)

    def report(self) -> dict[str, float]:
        level = self.feed.level
        exact, cell = self.plan.exact(self.model, level)
        ended = self.feed.queue.ended.get(str(level), {})
        figures = {"level": level, "eval_exact": exact, "eval_cell": cell, **self.timed.figures(),
                   "questions": ended.get("size", self.feed.queue.size),
                   "questions_left": ended.get("left", self.feed.queue.remaining), "epochs": ended.get("epochs", 0),
                   "check_exact": self.checked, "ended_on_held_out": float(ended.get("reason") == "held-out"),
                   "ended_on_plateau": float(ended.get("reason") == "plateau")}
        self.reports[str(level)] = figures
        return figures

    def state_dict(self) -> dict:
        return {**super().state_dict(), "timed": self.timed.state_dict(), "checked": self.checked,
                "best_check": self.best_check, "stale_checks": self.stale_checks,
                "reports": {k: dict(v) for k, v in self.reports.items()}}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.timed.load_state_dict(state["timed"])
        self.checked = float(state.get("checked", -1.0))
        self.best_check, self.stale_checks = float(state.get("best_check", -1.0)), int(state.get("stale_checks", 0))
        self.reports = {k: dict(v) for k, v in state["reports"].items()}
