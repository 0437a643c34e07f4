"""Every task by name: a plain dict of constructors, and what the CLI needs to list and show them."""

from __future__ import annotations

import dataclasses
import inspect
import sys
from functools import partial

from engine.config import MIXED_DIFFICULTY_TASKS, ConfigError, TaskConfig
from engine.dexter.task import DexterTask, single_turn
from engine.tasks.arith import MathTask
from engine.tasks.base import Task
from engine.tasks.levels import LevelTask
from engine.tasks.maze import MazeTask
from engine.tasks.memory import MemoryTask
from engine.tasks.modular import ModularTask
from engine.tasks.program import ProgramTask
from engine.tasks.sudoku import SudokuTask
from engine.tasks.tokenizer import check_split

TASKS = {
    "sudoku": SudokuTask,
    "modular": ModularTask,
    "math": partial(MathTask, "mixed"),
    "arithmetic": partial(MathTask, "arithmetic"),
    "algebra": partial(MathTask, "algebra"),
    "sequence": partial(MathTask, "sequence"),
    "word": partial(MathTask, "word"),
    "recall": partial(MemoryTask, "recall"),
    "gap": partial(MemoryTask, "gap"),
    "surprise": partial(MemoryTask, "surprise"),
    "maze": MazeTask,
    "program": ProgramTask,
    "dexter-memory": partial(DexterTask, "memory"),
    "dexter-tool": single_turn("tool"),
    "dexter-reasoning": single_turn("reasoning"),
    "levels": LevelTask,
}
# Tasks served from a dataset built on disk (task.path): their vocabulary and length are the dataset's.
DATASET_TASKS = ("dexter-memory", "dexter-tool", "dexter-reasoning")


class UnknownTaskError(ConfigError):
    """A task name that is not in TASKS; its message is one sentence listing the allowed names."""


def list_tasks() -> list[str]:
    return list(TASKS)


def task_params(name: str) -> list[str]:
    """The keyword arguments the task `name` takes."""
    return [p for p in inspect.signature(_constructor(name)).parameters if p not in ("self",)]


def _constructor(name: str):
    if name not in TASKS:
        raise UnknownTaskError(f"unknown task {name!r}; allowed: {', '.join(TASKS)}.")
    return TASKS[name]


def get_task(name: str, **params) -> Task:
    """The task `name` built with `params`; a bad name or parameter is a one-sentence ConfigError."""
    constructor = _constructor(name)
    allowed = task_params(name)
    unknown = [k for k in params if k not in allowed]
    if unknown:
        raise ConfigError(f"task {name!r} does not take {', '.join(unknown)}; it takes: {', '.join(allowed)}.")
    difficulty = params.get("difficulty", 1)
    levels = difficulty if isinstance(difficulty, list) and name in MIXED_DIFFICULTY_TASKS else [difficulty]
    if not levels or any(isinstance(d, bool) or not isinstance(d, int) or not 1 <= d <= 3 for d in levels):
        raise ConfigError(f"difficulty {difficulty!r} is out of range for task {name!r}; allowed is 1 to 3.")
    try:
        return constructor(**params)
    except ConfigError:
        raise
    except ValueError as exc:  # a task's own check of its parameters
        raise ConfigError(f"task {name!r}: {exc}") from None


def task_from_config(cfg: TaskConfig) -> Task:
    """The configured task, given the [task] settings it takes (Sudoku's size, math's steps, ...)."""
    allowed = task_params(cfg.name)
    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "name" and k in allowed}
    return get_task(cfg.name, **settings)


def _description(task) -> str:
    """The task's own one-liner, else the first line of its module's docstring."""
    text = getattr(task, "description", "") or (sys.modules[type(task).__module__].__doc__ or "").strip()
    return text.splitlines()[0].strip() if text else ""


def describe_tasks() -> list[dict]:
    """One row per task for `lab tasks list`: name, description, vocabulary, sequence length, parameters."""
    rows = []
    for name in TASKS:
        if name in DATASET_TASKS:
            rows.append({"name": name, "description": DexterTask.description_of(name), "vocab_size": 0,
                         "seq_len": 0, "params": task_params(name)})
            continue
        task = get_task(name)
        rows.append({
            "name": name,
            "description": _description(task),
            "vocab_size": task.vocab_size,
            "seq_len": task.seq_len,
            "params": task_params(name),
        })
    return rows


def show_samples(name: str, n: int = 5, split: str = "train", difficulty: int | None = None, seed: int = 0) -> str:
    """`n` samples of task `name` as a person reads them, for `lab tasks show NAME --n 5`."""
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 1000:
        raise ConfigError(f"--n {n!r} is out of range; allowed is 1 to 1000.")
    check_split(split)
    params = {}
    if "seed" in task_params(name):
        params["seed"] = seed
    if difficulty is not None:
        if "difficulty" not in task_params(name):
            raise ConfigError(f"task {name!r} has no difficulty levels; leave out the difficulty.")
        params["difficulty"] = difficulty
    task = get_task(name, **params)
    level = f", difficulty {difficulty}" if difficulty is not None else ""
    blocks = [f"{name} ({split}{level}): {_description(task)}"]
    for i in range(n):
        blocks.append(f"--- #{i}\n{task.render(task.sample(split, i))}")
    return "\n".join(blocks)
