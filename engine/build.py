"""What a run is made of, built from its config: the device, the task and the model.

Every caller that needs a run's model (the trainer, `lab eval`, `lab config show`, the benches) builds it
here, so a checkpoint always loads into the network it was trained as.
"""

from __future__ import annotations

import torch

from engine.config import ConfigError, RunConfig
from engine.model.bitlinear import convert_to_bitnet
from engine.model.trm import TinyRecursiveModel
from engine.stages import Phase, Schedule
from engine.tasks.base import Task
from engine.tasks.registry import task_from_config


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """The run's device; a rank of a distributed run on CUDA takes the card of its local rank."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name != "cuda":
        return torch.device(name)
    cards = torch.cuda.device_count()
    if local_rank >= cards:
        raise ConfigError(f"train.device = 'cuda' gives each process on a machine a card of its own, and process "
                          f"{local_rank} of this machine finds {cards}; start at most {cards} per machine "
                          "(--nproc) or set train.device = 'cpu'.")
    return torch.device("cuda", local_rank)


def make_task(cfg: RunConfig) -> Task:
    return task_from_config(cfg.task)


def build_model(cfg: RunConfig, task: Task) -> TinyRecursiveModel:
    model = TinyRecursiveModel(cfg.model, vocab_size=task.vocab_size, seq_len=task.seq_len)
    if cfg.model.bitnet:  # b1.58 STE: hidden linears ternary in the forward, latent weights full precision
        convert_to_bitnet(model)
    return model


def build_schedule(cfg: RunConfig) -> Schedule:
    """Which stage runs when: wake alone, wake and sleep alternating by step counts, or the pipeline's stages
    level by level, each until it is done."""
    if cfg.pipeline.enabled:
        levels = range(cfg.curriculum.start_level, cfg.curriculum.levels + 1)
        return Schedule([Phase(stage, 0) for _ in levels for stage in cfg.pipeline.stages], repeat=False)
    if not cfg.sleep.enabled:
        return Schedule([Phase("wake", 0)])
    s = cfg.sleep
    # the warm-up: a first wake of warmup_steps when longer, then sleeps growing from warmup_sleep_steps
    first_wake = s.warmup_steps if s.warmup_steps > s.wake_steps else 0
    return Schedule([Phase("wake", s.wake_steps, first_wake),
                     Phase("sleep", s.sleep_steps, s.warmup_sleep_steps, s.warmup_sleeps)])
