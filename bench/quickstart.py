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

    .venv/bin/python bench/quickstart.py [--quick | --smoke] [--seeds 3] [--steps N] [--set key=value ...]

Defaults: the preset's own budget (train.max_minutes), 3 seeds (about 16 minutes). --steps N trains N steps with no
clock instead, so a comparison does not depend on the machine's load. --quick: one seed. --smoke: a width-16
network for 20 steps, 16 puzzles per difficulty, the same code path.
Prints the minimal puzzles' accuracy as a share of difficulty 1's, measured in the same runs. Ends with a JSON
line: exact_by_difficulty {"1": {...}, "2": ..., "3": ...}, n_by_difficulty, minimal_over_d1, steps, steps_per_s.
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
SMOKE = ["model.d_model=16", "train.batch_size=8", "train.max_steps=20", "train.max_minutes=0", *QUIET]


def held_out(cfg: config.RunConfig, difficulty: int, limit: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Every distinct test puzzle of the run's pools at `difficulty` (the first `limit` of them), stacked."""
    task = SudokuTask(size=cfg.task.size, difficulty=difficulty, seed=cfg.task.seed, augment=cfg.task.augment)
    samples = task.distinct_samples("test", limit)
    return (torch.tensor([s.inputs for s in samples], dtype=torch.long),
            torch.tensor([s.labels for s in samples], dtype=torch.long))


def train_and_score(seed: int, overrides: list[str], limit: int | None) -> dict:
    """One run of the preset; its finished model's exact marks per difficulty, steps and training seconds."""
    cfg = config.load(PRESET, overrides + [f"train.seed={seed}", f"task.seed={seed}"])
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        trainer = Trainer(d, cfg, output="quiet")
        trainer.run()
        seconds = time.perf_counter() - t0
        assert trainer.status == "finished", f"seed {seed}: the run ended {trainer.status}"
        model = trainer.ema if cfg.eval.use_ema else trainer.model
        model.eval()
        marks = {}
        with torch.no_grad():
            for d in DIFFICULTIES:
                inputs, labels = held_out(cfg, d, limit)
                preds = torch.cat([model.predict(chunk)[0] for chunk in inputs.split(256)])
                marks[str(d)] = score(preds, labels)[0].tolist()
    exact = {d: sum(m) / len(m) for d, m in marks.items()}
    return {"marks": marks, "exact": exact, "steps": trainer.step, "seconds": round(seconds, 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one seed")
    ap.add_argument("--smoke", action="store_true", help="a tiny network for 20 steps, 16 puzzles: the code path")
    ap.add_argument("--seeds", type=int, default=None, help="training runs, seeds first-seed .. (default 3)")
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=None, help="train this many steps with no clock, evaluations off")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override the preset, e.g. --set task.difficulty=[1,2,3]")
    args = ap.parse_args()
    overrides = list(args.set)
    if args.steps:
        overrides = [f"train.max_steps={args.steps}", "train.max_minutes=0", *QUIET, *overrides]
    if args.smoke:
        overrides = [*overrides, *SMOKE]
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
        run = train_and_score(seed, overrides, limit)
        runs.append(run)
        cells = [f"{run['exact'][d]:.3f} of {len(m):>3}" for d, m in run["marks"].items()]
        speed = run["steps"] / run["seconds"]
        print(f"{seed:>4} {run['steps']:>7} {speed:>8.1f} " + " ".join(f"{c:>13}" for c in cells), flush=True)

    # over seeds when there are several; one run's interval is over its puzzles
    exact = {d: over_seeds([r["exact"][d] for r in runs]) if seeds > 1 else over_items(runs[0]["marks"][d])
             for d in map(str, DIFFICULTIES)}
    ratio = over_seeds([r["exact"]["3"] / r["exact"]["1"] if r["exact"]["1"] else 0.0 for r in runs])
    n_by_difficulty = {str(d): [len(r["marks"][str(d)]) for r in runs] for d in DIFFICULTIES}
    over = f"95% t interval over {seeds} seeds" if seeds > 1 else "95% bootstrap interval over the puzzles, one seed"
    print(f"\nheld-out exact on every distinct test puzzle after {budget}, mean [{over}]:")
    for d in DIFFICULTIES:
        print(f"  difficulty {d}: {shown(exact[str(d)])}  (n = {', '.join(map(str, n_by_difficulty[str(d)]))})")
    print(f"minimal puzzles (d3) / difficulty 1: {shown(ratio)}")
    print("(target: >= 0.95 exact at every difficulty)")
    print(json.dumps({
        "exact_by_difficulty": exact, "n_by_difficulty": n_by_difficulty, "minimal_over_d1": ratio,
        "steps": [r["steps"] for r in runs], "train_s": [r["seconds"] for r in runs],
        "steps_per_s": [round(r["steps"] / r["seconds"], 2) for r in runs], "budget": budget, "seeds": seeds,
        "first_seed": args.first_seed, "overrides": overrides, "smoke": args.smoke,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
