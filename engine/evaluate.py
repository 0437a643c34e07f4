"""Evaluate a run's newest good checkpoint (EMA weights) on a puzzle file."""

from __future__ import annotations

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
