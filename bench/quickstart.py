"""Does the quickstart solve 4x4 Sudoku? configs/quickstart.toml trained for its own budget, then scored on every
distinct held-out puzzle of each difficulty (1: 10 of 16 cells given, 2: 7 given, 3: minimal puzzles, 4 to 6
given), over several seeds.

Each seed is one training run of the preset exactly as `lab run configs/quickstart.toml --headless` trains it (its
periodic evaluations and checkpoints included in its clock), with train.seed = task.seed = the seed. The finished
model (the EMA weights when eval.use_ema) is then scored on SudokuTask.distinct_samples("test") at each
difficulty: every test puzzle of the seed's pools, none one symmetry from another (about 770, 700 and 36). The
split holds out exact puzzles: 4x4 has so few puzzles up to symmetry that nearly every held-out one (all 36
minimal ones) has a symmetric image in the training pools, so these figures measure solving unseen images of
known puzzle shapes. Each difficulty's exact accuracy carries a Student t interval over seeds (a bootstrap over
its puzzles with one seed).

    .venv/bin/python bench/quickstart.py [--quick | --smoke] [--seeds 3] [--steps N[,N...]] [--set key=value ...]

Defaults: the preset's own budget (train.max_minutes), 3 seeds (about 16 minutes). --steps trains the largest
count of steps with no clock instead (and no periodic evaluations or checkpoints), so a comparison does not depend
on the machine's load, and scores the run at every count listed: the learning rate does not depend on the budget
(warm-up, then constant), so the run at step 2,000 of 4,000 is the model a 2,000-step run trains. --quick: one
seed. --smoke: a width-16 network for 10 and 20 steps, 16 puzzles per difficulty, the same code path.
Prints the minimal puzzles' accuracy as a share of difficulty 1's, measured in the same runs. Ends with a JSON
line: exact_by_difficulty {"1": {...}, "2": ..., "3": ...} at the end of the runs, n_by_difficulty,
minimal_over_d1, steps, steps_per_s, and with several step counts exact_by_steps {"2000": {"1": ...}, ...}.
Target: >= 0.95 exact at every difficulty.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench.stats import over_items, over_seeds, shown  # noqa: E402
from engine import config  # noqa: E402
from engine.evaluate import score  # noqa: E402
from engine.tasks.sudoku import SudokuTask  # noqa: E402
from engine.trainer import Trainer  # noqa: E402

PRESET = ROOT / "configs" / "quickstart.toml"
DIFFICULTIES = (1, 2, 3)
QUIET = ["eval.every=0", "checkpoint.every=0"]  # --steps runs: nothing but training inside the step budget
SMOKE = ["model.d_model=16", "train.batch_size=8"]


def held_out(cfg: config.RunConfig, difficulty: int, limit: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Every distinct test puzzle of the run's pools at `difficulty` (the first `limit` of them), stacked."""
    task = SudokuTask(size=cfg.task.size, difficulty=difficulty, seed=cfg.task.seed, augment=cfg.task.augment)
    samples = task.distinct_samples("test", limit)
    return (torch.tensor([s.inputs for s in samples], dtype=torch.long),
            torch.tensor([s.labels for s in samples], dtype=torch.long))


@torch.no_grad()
def grade(model, sets: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> dict:
    """Exact marks per difficulty and their shares."""
    was_training = model.training
    model.eval()
    marks = {d: score(torch.cat([model.predict(chunk)[0] for chunk in inputs.split(256)]), labels)[0].tolist()
             for d, (inputs, labels) in sets.items()}
    model.train(was_training)
    return {"marks": marks, "exact": {d: sum(m) / len(m) for d, m in marks.items()}}


def train_and_score(seed: int, overrides: list[str], limit: int | None, step_marks: list[int]) -> dict:
    """One run of the preset, scored at each of `step_marks` (none: at the end of its budget). Returns {"scored":
    {steps: grades}, "steps", "seconds"}: seconds of the run with the scoring taken off."""
    cfg = config.load(PRESET, overrides + [f"train.seed={seed}", f"task.seed={seed}"])
    sets = {str(d): held_out(cfg, d, limit) for d in DIFFICULTIES}
    scored, scoring = {}, [0.0]
    with tempfile.TemporaryDirectory() as d:

        def on_event(event: dict) -> None:
            if event["event"] == "metrics" and trainer.step in step_marks and str(trainer.step) not in scored:
                t0 = time.perf_counter()
                scored[str(trainer.step)] = grade(trainer.ema if cfg.eval.use_ema else trainer.model, sets)
                scoring[0] += time.perf_counter() - t0

        t0 = time.perf_counter()
        trainer = Trainer(d, cfg, output="quiet", emit=on_event)
        trainer.run()
        seconds = time.perf_counter() - t0 - scoring[0]
        assert trainer.status == "finished", f"seed {seed}: the run ended {trainer.status}"
        if not step_marks:
            scored[str(trainer.step)] = grade(trainer.ema if cfg.eval.use_ema else trainer.model, sets)
    return {"scored": scored, "steps": trainer.step, "seconds": round(seconds, 1)}


def summarise(grades: list[dict]) -> dict:
    """Per difficulty: a t interval over the seeds' shares, or with one seed a bootstrap over its puzzles."""
    return {d: over_seeds([g["exact"][d] for g in grades]) if len(grades) > 1 else over_items(grades[0]["marks"][d])
            for d in map(str, DIFFICULTIES)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one seed")
    ap.add_argument("--smoke", action="store_true", help="a tiny network, 10 and 20 steps, 16 puzzles: the code path")
    ap.add_argument("--seeds", type=int, default=None, help="training runs, seeds first-seed .. (default 3)")
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--steps", default=None, help="comma-separated step counts: train to the largest with no clock, "
                                                  "score at each (default: the preset's budget)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override the preset, e.g. --set task.difficulty=[1,2,3]")
    args = ap.parse_args()
    try:
        step_marks = sorted({int(n) for n in (args.steps or ("10,20" if args.smoke else "")).split(",") if n})
    except ValueError:
        ap.error(f"--steps takes comma-separated step counts such as 1000,2000,4000, not {args.steps!r}")
    if step_marks and step_marks[0] < 1:
        ap.error("the step counts must be positive")
    overrides = list(args.set) + (SMOKE if args.smoke else [])
    if step_marks:
        overrides = [f"train.max_steps={step_marks[-1]}", "train.max_minutes=0", *QUIET, *overrides]
    try:
        cfg = config.load(PRESET, overrides)
    except config.ConfigError as exc:
        ap.error(str(exc))
    if cfg.task.name != "sudoku":
        ap.error("the quickstart bench scores Sudoku; leave task.name as it is")
    seeds = args.seeds or (1 if args.quick or args.smoke else 3)
    limit = 16 if args.smoke else None
    budget = f"{cfg.train.max_minutes:g} minutes" if cfg.train.max_minutes else f"{cfg.train.max_steps} steps"

    runs = []
    print(f"{'seed':>4} {'steps':>7} {'steps/s':>8} " + " ".join(f"{'d' + str(d):>13}" for d in DIFFICULTIES))
    for seed in range(args.first_seed, args.first_seed + seeds):
        run = train_and_score(seed, overrides, limit, step_marks)
        runs.append(run)
        for steps, grades in run["scored"].items():
            cells = [f"{grades['exact'][d]:.3f} of {len(m):>3}" for d, m in grades["marks"].items()]
            print(f"{seed:>4} {steps:>7} {run['steps'] / run['seconds']:>8.1f} " + " ".join(f"{c:>13}" for c in cells),
                  flush=True)

    final = [list(r["scored"].values())[-1] for r in runs]
    exact = summarise(final)
    by_steps = {str(n): summarise([r["scored"][str(n)] for r in runs]) for n in step_marks}
    ratio = over_seeds([g["exact"]["3"] / g["exact"]["1"] if g["exact"]["1"] else 0.0 for g in final])
    n_by_difficulty = {d: [len(g["marks"][d]) for g in final] for d in map(str, DIFFICULTIES)}
    over = f"95% t interval over {seeds} seeds" if seeds > 1 else "95% bootstrap interval over the puzzles, one seed"
    print(f"\nheld-out exact on every distinct test puzzle, mean [{over}]:")
    for n in step_marks[:-1]:
        print(f"  after {n} steps: " + ", ".join(f"d{d} {shown(s)}" for d, s in by_steps[str(n)].items()))
    print(f"after {budget}:")
    for d in map(str, DIFFICULTIES):
        print(f"  difficulty {d}: {shown(exact[d])}  (n = {', '.join(map(str, n_by_difficulty[d]))})")
    print(f"minimal puzzles (d3) / difficulty 1: {shown(ratio)}")
    print("(target: >= 0.95 exact at every difficulty)")
    print(json.dumps({
        "exact_by_difficulty": exact, "n_by_difficulty": n_by_difficulty, "minimal_over_d1": ratio,
        "steps": [r["steps"] for r in runs], "train_s": [r["seconds"] for r in runs],
        "steps_per_s": [round(r["steps"] / r["seconds"], 2) for r in runs], "budget": budget, "seeds": seeds,
        "first_seed": args.first_seed, "overrides": overrides, "smoke": args.smoke,
        **({"exact_by_steps": by_steps} if len(step_marks) > 1 else {}),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
