"""The one evaluator: every accuracy the lab reports (the training curve, `lab eval --puzzles`,
`lab eval --task`, the benches) is graded here, the same way.

A sample is exact when every scored position (label != PAD) is right, unless its task grades its own
answers (a program task runs the predicted program on its test cases): then the task decides.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from engine import checkpoint, config
from engine.build import build_model, make_task
from engine.model.trm import PAD
from engine.tasks.base import Task, batch


class EvalError(ValueError):
    """Bad evaluation input; the message is one sentence."""


def score(preds: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(exact (B,) bool, correct cells (B,) int) of predictions against labels, both (B, S); PAD is not scored."""
    scored = labels != PAD
    right = preds == labels
    return (right | ~scored).all(-1), (right & scored).sum(-1)


def grades_itself(task) -> bool:
    return hasattr(task, "problem") and hasattr(task, "grade")


def grade(task, split: str, indices: list[int], preds: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(B,) bool: each sample's answer right as a whole, graded by the task when it grades its own."""
    if not grades_itself(task):
        return score(preds, labels)[0]
    rows = preds.tolist()
    return torch.tensor([bool(task.grade(task.problem(split, i), row, task.sample(split, i)))
                         for i, row in zip(indices, rows)], dtype=torch.bool)


def held_out(task: Task, n: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """The first `n` held-out samples, stacked once: drawing them again at every evaluation is wasted work."""
    inputs, labels = batch(task, "test", list(range(n)))
    return inputs.to(device), labels.to(device)


@torch.no_grad()
def evaluate(model, task: Task, n: int, batch_size: int, device: torch.device | str = "cpu",
             data: tuple[torch.Tensor, torch.Tensor] | None = None, split: str = "test") -> dict[str, float]:
    """Exact (graded by the task) and cell accuracy on the first `n` samples of `split` (`data`: those
    samples, already stacked on the device)."""
    inputs, labels = data if data is not None else held_out(task, n, device)
    exact, cells, total_cells = count_right(model, task, inputs[:n], labels[:n], batch_size, split=split)
    return {"eval_exact": exact / n, "eval_cell": cells / max(1, total_cells)}


@torch.no_grad()
def count_right(model, task: Task, all_inputs: torch.Tensor, all_labels: torch.Tensor, batch_size: int,
                first: int = 0, split: str = "test") -> tuple[int, int, int]:
    """(exact samples, correct cells, scored cells) on samples first.. of `split`, stacked in `all_inputs` and
    `all_labels`: the counts behind evaluate(), which ranks that share the samples add up."""
    preds = predictions(model, task, all_inputs, batch_size, first, split)
    exact = grade(task, split, list(range(first, first + len(preds))), preds, all_labels)
    return int(exact.sum()), int(score(preds, all_labels)[1].sum()), int((all_labels != PAD).sum())


@torch.no_grad()
def predictions(model, task: Task, all_inputs: torch.Tensor, batch_size: int, first: int = 0,
                split: str = "test") -> torch.Tensor:
    """The model's answers (N, S) to samples first.. of `split`, stacked in `all_inputs`, in eval mode."""
    was_training = model.training
    model.eval()
    try:
        if getattr(task, "carry_turns", False):
            # a turn trained with the latents its conversation's earlier turns left is graded with them too:
            # graded alone, a follow-up ("tell me more") has nothing to answer from
            n = all_inputs.shape[0]
            carried = carried_predictions(model, task, split, range(first, first + n), batch_size)
            return torch.stack([carried[i] for i in range(first, first + n)]).to(all_inputs.device)
        return torch.cat([model.predict(all_inputs[s:s + batch_size])[0]
                          for s in range(0, all_inputs.shape[0], batch_size)])
    finally:
        model.train(was_training)


@torch.no_grad()
def carried_predictions(model, task, split: str, indices, batch_size: int) -> dict[int, torch.Tensor]:
    """{sample index: preds (S,)} for held-out samples of a task with conversation chains (task.carry_turns):
    each chain's turns run in order, every turn from the latents (z_H, z_L) the turn before it left and every
    one with all N_sup steps and an empty neural memory, as the API answers a conversation."""
    size = task.size(split)
    wanted: dict[int, list[int]] = {}  # example -> the sample indices that show it (held-out indices wrap)
    for i in indices:
        wanted.setdefault(i % size, []).append(i)
    chains = []
    for chain in task.chains[split]:
        last = max((t for t, ex in enumerate(chain) if ex in wanted), default=-1)
        if last >= 0:
            chains.append(chain[:last + 1])  # later turns cannot change an earlier one's answer
    device = next(model.parameters()).device
    latents: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # chain number -> its latents after the last turn
    out: dict[int, torch.Tensor] = {}
    for turn in range(max(map(len, chains), default=0)):
        active = [c for c, chain in enumerate(chains) if len(chain) > turn]
        for start in range(0, len(active), batch_size):
            group = active[start:start + batch_size]
            inputs = torch.tensor([task.turn_sample(split, chains[c][turn]).inputs for c in group], dtype=torch.long,
                                  device=device)
            carry = None if turn == 0 else tuple(torch.cat(z) for z in zip(*(latents[c] for c in group)))
            logits, _, (z_H, z_L, _) = model.recur(inputs, carry, memory=model.initial_memory(len(group), device))
            preds = logits.argmax(-1).cpu()
            for row, c in enumerate(group):
                latents[c] = (z_H[row:row + 1], z_L[row:row + 1])
                for i in wanted.get(chains[c][turn], ()):
                    out[i] = preds[row]
    return out


def load_run_model(run_dir: Path, use_ema: bool = True):
    """(cfg, task, model, step) from the run's config and newest checkpoint that verifies."""
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
        right, n_cells = score(preds, labels)
        exact += int(right.sum())
        cells += int(n_cells.sum())
        total += int((labels != PAD).sum())
    n = len(items)
    return {"exact": exact / n, "n": n, "n_exact": exact, "cell": cells / total, "step": step}


@torch.no_grad()
def evaluate_task(run_dir: Path, task_name: str, n: int = 1000, difficulty: int | None = None,
                  batch_size: int = 256, store: bool = True) -> dict:
    """Exact accuracy of the run's newest checkpoint (EMA) on `n` held-out samples of `task_name`
    at each difficulty (or only `difficulty`), and per curriculum level (the level's mix of
    difficulties) when the run trained that task with the curriculum. Stored with the run as an
    "eval" event and `eval/<task>/...` metrics."""
    from engine.curriculum import ProgrammaticProvider
    from engine.store import RunStore
    from engine.tasks.registry import DATASET_TASKS, get_task, list_tasks, task_params

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
    # a task served from a built dataset has one difficulty
    for d in [difficulty] if difficulty else [1] if task_name in DATASET_TASKS else [1, 2, 3]:
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
            indices = list(range(start, min(n, start + batch_size)))
            inputs, labels = batch(task, "test", indices)
            preds, _ = model.predict(inputs)  # (b, S)
            marks += grade(task, "test", indices, preds, labels).tolist()
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
