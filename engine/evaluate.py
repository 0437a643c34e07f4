"""Evaluate a run's newest good checkpoint (EMA weights) on a puzzle file."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from engine import checkpoint, config


class EvalError(ValueError):
    """Bad evaluation input; the message is one sentence."""


def load_run_model(run_dir: Path, use_ema: bool = True):
    """(cfg, task, model, step) from the run's config and newest checkpoint that verifies."""
    from engine.trainer import build_model, make_task

    try:
        cfg = config.load(run_dir / "config.toml")
    except config.ConfigError as exc:
        raise EvalError(str(exc)) from None
    ckpt, warnings = checkpoint.load_latest(run_dir / "checkpoints")
    if ckpt is None:
        why = f" ({warnings[0]})" if warnings else ""
        raise EvalError(f"run {run_dir.name} has no usable checkpoint yet{why}; train it first or wait for one.")
    task = make_task(cfg)
    model = build_model(cfg, task)
    prefix = "ema." if use_ema else "model."
    model.load_state_dict({k[len(prefix):]: v for k, v in ckpt.tensors.items() if k.startswith(prefix)})
    model.eval()
    return cfg, task, model, ckpt.step


@torch.no_grad()
def evaluate_run(run_dir: Path, puzzles: str | Path, limit: int | None = None, batch_size: int = 256) -> dict:
    from engine.tasks.puzzles import PuzzleFileError, read_puzzle_file

    try:
        items = read_puzzle_file(puzzles)
    except PuzzleFileError as exc:
        raise EvalError(str(exc)) from None
    if limit:
        items = items[:limit]
    cfg, task, model, step = load_run_model(run_dir)
    if cfg.task.name != "sudoku":
        raise EvalError(f"run {run_dir.name} trains task {cfg.task.name!r}; --puzzles takes Sudoku runs only.")
    if items[0].size * items[0].size != task.seq_len:
        raise EvalError(
            f"{puzzles}: the puzzles are {items[0].size}x{items[0].size} but run {run_dir.name} was trained on "
            f"{cfg.task.size}x{cfg.task.size}."
        )
    exact = cells = total = 0
    for start in range(0, len(items), batch_size):
        chunk = items[start:start + batch_size]
        inputs = torch.tensor([p.inputs for p in chunk], dtype=torch.long)
        labels = torch.tensor([p.solution for p in chunk], dtype=torch.long)
        preds, _ = model.predict(inputs)
        exact += int((preds == labels).all(dim=1).sum())
        cells += int((preds == labels).sum())
        total += labels.numel()
    n = len(items)
    return {"exact": exact / n, "n": n, "n_exact": exact, "cell": cells / total, "step": step}


def _exact(task, split: str, index: int, sample, predicted: list[int]) -> bool:
    """A generated task grades its own answers (a program is run on its test cases); others match labels."""
    if hasattr(task, "problem") and hasattr(task, "grade"):
        return bool(task.grade(task.problem(split, index), predicted, sample))
    return all(p == t for t, p in zip(sample.labels, predicted) if t != 0)


@torch.no_grad()
def evaluate_task(run_dir: Path, task_name: str, n: int = 1000, difficulty: int | None = None,
                  batch_size: int = 256, store: bool = True) -> dict:
    """Exact accuracy of the run's newest checkpoint (EMA) on `n` held-out samples of `task_name`
    at each difficulty (or only `difficulty`), and per curriculum level (the level's mix of
    difficulties) when the run trained that task with the curriculum. Stored with the run as an
    "eval" event and `eval/<task>/...` metrics."""
    from engine.curriculum import ProgrammaticProvider
    from engine.store import RunStore
    from engine.tasks.registry import get_task, list_tasks, task_params

    if task_name not in list_tasks():
        raise EvalError(f"there is no task {task_name!r}; allowed: {', '.join(list_tasks())}.")
    if difficulty is not None and (isinstance(difficulty, bool) or difficulty not in (1, 2, 3)):
        raise EvalError(f"--difficulty {difficulty} is out of range; allowed is 1 to 3.")
    if n < 1:
        raise EvalError(f"--n must be a positive number of samples, not {n}.")
    cfg, run_task, model, step = load_run_model(run_dir)
    # the run's own [task] settings where the evaluated task takes them (Sudoku's size, math's steps...)
    taken = set(task_params(task_name)) - {"difficulty", "seed"}
    params = {k: v for k, v in dataclasses.asdict(cfg.task).items() if k in taken}

    correct: dict[int, list[bool]] = {}
    for d in [difficulty] if difficulty else [1, 2, 3]:
        try:
            task = get_task(task_name, difficulty=d, seed=cfg.task.seed, **params)
        except config.ConfigError as exc:
            raise EvalError(str(exc)) from None
        if (task.seq_len, task.vocab_size) != (run_task.seq_len, run_task.vocab_size):
            raise EvalError(f"run {run_dir.name} was trained on {cfg.task.name!r} ({run_task.seq_len} positions, "
                            f"{run_task.vocab_size} tokens); task {task_name!r} lays out {task.seq_len} positions "
                            f"and {task.vocab_size} tokens, so the model cannot read it.")
        marks: list[bool] = []
        for start in range(0, n, batch_size):
            samples = [task.sample("test", i) for i in range(start, min(n, start + batch_size))]
            preds, _ = model.predict(torch.tensor([s.inputs for s in samples], dtype=torch.long))  # (b, S)
            marks += [_exact(task, "test", start + j, s, p) for j, (s, p) in enumerate(zip(samples, preds.tolist()))]
        correct[d] = marks

    total = [m for marks in correct.values() for m in marks]
    result = {"task": task_name, "n": n, "step": step, "exact": sum(total) / len(total),
              "by_difficulty": {str(d): sum(m) / n for d, m in correct.items()}}
    if difficulty is None and cfg.curriculum.enabled and task_name == cfg.task.name:
        # held-out question i at level L has the difficulty the curriculum would give question i there
        provider = ProgrammaticProvider.from_config(cfg.task, cfg.curriculum)
        result["by_level"] = {str(level): sum(correct[provider.difficulty(level, i)][i] for i in range(n)) / n
                              for level in range(1, cfg.curriculum.levels + 1)}
    if store:
        writer = RunStore(run_dir)
        metrics = {f"eval/{task_name}/exact": result["exact"]}
        metrics.update({f"eval/{task_name}/d{d}": v for d, v in result["by_difficulty"].items()})
        metrics.update({f"eval/{task_name}/L{lvl}": v for lvl, v in result.get("by_level", {}).items()})
        writer.log_metrics(step, metrics)
        writer.log_event(step, "eval", result)
        writer.close()
    return result
