"""Dream consolidation at a level's end: high-temperature replay of the level's questions.

The sleep stage's dream mode (engine/sleep.py, engine/stages/sleep.py) does the work: its episodic buffer is
filled with the level's training questions (up to sleep.buffer_size), and for pipeline.dream_steps steps a frozen
copy of the model taken as the dream begins answers them hot (pipeline.dream_temperature), its answers swapped
into the inputs, and the memory-free path learns the copy's distribution.

Figures: retention, the held-out exact of this level and of every earlier one, before and after the dream
(`retention_before`, `retention_after`: their means; `L<k>_before`, `L<k>_after`: each level), beside the
sleep stage's own consolidation event.
"""

from __future__ import annotations

import dataclasses
import time

import torch

from engine.config import SleepConfig
from engine.sleep import EpisodicBuffer
from engine.stages import StepResult
from engine.stages.levels import LevelPlan, Timed, level_event, position_events
from engine.stages.sleep import SleepStage
from engine.tasks.tokenizer import stable_rng


class DreamStage:
    name = "dream"

    def __init__(self, plan: LevelPlan, sleep_cfg: SleepConfig, model, optimizer, batch_size: int, seed: int,
                 has_memory: bool, *parts):
        cfg = dataclasses.replace(sleep_cfg, mode="dream", dream_temperature=plan.cfg.dream_temperature)
        self.plan, self.model, self.seed = plan, model, seed
        self.sleep = SleepStage(cfg, model, optimizer, plan.task.seq_len, batch_size, seed, has_memory, *parts)
        self.level, self.steps_done = 0, 0
        self.before: dict[str, float] = {}
        self.reports: dict[str, dict] = {}
        self.timed = Timed()

    def retention(self) -> dict[str, float]:
        """Held-out exact of every level up to this one, and their mean."""
        figures = {f"L{k}": self.plan.exact(self.model, k)[0] for k in range(self.plan.curriculum.start_level,
                                                                            self.level + 1)}
        figures["retention"] = sum(figures.values()) / len(figures)
        return figures

    @torch.no_grad()
    def _fill_buffer(self) -> None:
        """The level's training questions, in a fresh buffer, all equally important."""
        cfg, questions = self.sleep.cfg, self.plan.curriculum.questions
        self.sleep.buffer = EpisodicBuffer(cfg.buffer_size, self.plan.task.seq_len, cfg.prune_importance,
                                           cfg.prune_usage, cfg.prune_age)
        task = self.plan.at(self.level)
        n = min(cfg.buffer_size, questions)
        rng = stable_rng(self.seed, "dream", self.level)
        indices = rng.sample(range(questions), n)
        inputs, labels = self.plan.stack([task.encode(task.problem("train", (self.level - 1) * questions + i))
                                          for i in indices])
        self.sleep.buffer.add(inputs, labels, torch.ones(n), step=0)

    def ready(self) -> bool:
        return True

    def begin(self, step: int) -> None:
        t0 = time.perf_counter()
        self.timed = Timed()
        self.level, self.steps_done = self.plan.level, 0
        self._fill_buffer()
        self.before = self.retention()
        self.sleep.begin(step)
        self.timed.add(t0)

    def done(self) -> bool:
        return self.level == self.plan.level and self.steps_done >= self.plan.cfg.dream_steps

    def step(self, step: int) -> StepResult:
        t0 = time.perf_counter()
        result = self.sleep.step(step)
        self.steps_done += 1
        result.metrics["pipeline/level"] = float(self.level)
        self.timed.add(t0, step=True)
        if self.done():  # the sleep ends with the dream's last step: the run may end here
            result.events.extend(self.sleep.end(step))
            result.events.append(level_event(self.report()))
        result.events.extend(position_events(self, self.steps_done))
        return result

    def position(self) -> dict:
        return self.plan.position(self.name, self.steps_done / max(1, self.plan.cfg.dream_steps), self.steps_done)

    def end(self, step: int) -> list[tuple[str, dict]]:
        return []

    def report(self) -> dict[str, float]:
        after = self.retention()
        exact, cell = self.plan.exact(self.model, self.level)
        figures = {"level": self.level, "eval_exact": exact, "eval_cell": cell, **self.timed.figures(),
                   **{f"{k}_before": v for k, v in self.before.items()}, **{f"{k}_after": v for k, v in after.items()}}
        self.reports[str(self.level)] = figures
        return figures

    def state_dict(self) -> dict:
        return {"sleep": self.sleep.state_dict(), "level": self.level, "steps_done": self.steps_done,
                "before": dict(self.before), "timed": self.timed.state_dict(),
                "reports": {k: dict(v) for k, v in self.reports.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.sleep.load_state_dict(state["sleep"])
        self.level, self.steps_done = int(state["level"]), int(state["steps_done"])
        self.before = dict(state["before"])
        self.timed.load_state_dict(state["timed"])
        self.reports = {k: dict(v) for k, v in state["reports"].items()}
