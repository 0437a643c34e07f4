"""The Phase-5 pipeline's stages, built from the config (engine/build.py's build_schedule orders them)."""

from __future__ import annotations

import torch

from engine.config import RunConfig
from engine.model.trm import TinyRecursiveModel
from engine.stages import Stage
from engine.stages.bake import BakeStage
from engine.stages.dream import DreamStage
from engine.stages.levels import CurriculumStage, LevelPlan
from engine.stages.selfmodel import SelfModelStage
from engine.tasks.base import Task


def pipeline_stages(cfg: RunConfig, model: TinyRecursiveModel, optimizer, task: Task, device: torch.device,
                    generator: torch.Generator, *parts) -> dict[str, Stage]:
    """The stages of pipeline.stages by name, in order; none without a pipeline. `parts` = (micro-batches,
    precision, faults, back-off callback), shared with wake and sleep."""
    if not cfg.pipeline.enabled:
        return {}
    plan = LevelPlan(cfg.pipeline, cfg.curriculum, task, device, cfg.eval.batch_size)
    B, seed = cfg.train.batch_size, cfg.train.seed
    build = {
        "curriculum": lambda: CurriculumStage(plan, model, optimizer, B, device, generator, *parts),
        "bake": lambda: BakeStage(plan, model, cfg.optim, B, device, seed + 3, *parts),
        "selfmodel": lambda: SelfModelStage(plan, model, optimizer, B, device, generator, seed + 4, *parts),
        "dream": lambda: DreamStage(plan, cfg.sleep, model, optimizer, B, seed + 5, cfg.model.memory != "none",
                                    *parts),
    }
    return {name: build[name]() for name in cfg.pipeline.stages}
