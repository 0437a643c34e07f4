"""Does recursion pay, and at which budget? 6x6 Sudoku, held-out exact accuracy of the recursive model (T=3
cycles, deep supervision) against the same network run once per step (T=1, n=1, N_sup=1), as a curve over
wall-clock training minutes on CPU, over several seeds.

One training run per arm and seed, evaluated at each minute mark while it runs: the trainer's emit callback sees
every step's metrics event, and at the first step boundary past a mark it scores the model on the held-out set;
the time spent scoring is taken off the run's clock, so a mark measures training minutes only, and the run stops
(`stop_reason`) after the last mark. The learning-rate schedule does not depend on the budget (warm-up, then a
cosine over 1,000,000 steps, flat at these lengths), so the model at minute 2 of a 10-minute run is the model a
2-minute run would have trained.

The held-out set is `n_eval` distinct test puzzles (SudokuTask.distinct_samples: one per base puzzle, none one
symmetry from another), the same for both arms of a seed; each seed has its own task seed. Every accuracy is
reported with a Student t interval over seeds, and the gap per mark is the paired (same seed) difference.

    .venv/bin/python bench/recursion.py [--quick | --smoke] [--minutes 1,2,5,10] [--seeds N] [--threads 1]
                                        [--clock wall|cpu]

--clock cpu measures a minute as CPU time of the training thread (the engine trains in the calling thread at one
thread), so a run on a machine busy with other work gets the steps a quiet core would give it in that time.

Defaults: minutes 1, 2, 5, 10; 3 seeds; 300 held-out puzzles; 1 thread (about 2 x 3 x 10 = 60 minutes).
--quick: minutes 0.5 and 1, 2 seeds. --smoke: a width-32 network for 0.3 and 0.6 seconds, 16 puzzles, the same
code path.
Ends with a JSON line: exact_by_minutes {"trm": {"1": {...}}, "single_pass": {...}}, gap_points_by_minutes,
steps_by_minutes. Target: recursion ahead by >= 20 points at the budget quoted.
Earlier figures of this bench (5 minutes: 0.880 vs 0.630) were scored on the first 300 test samples, which are
symmetries of about 38 base puzzles; they are not comparable with these.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from bench.stats import over_seeds, shown  # noqa: E402
from engine import config  # noqa: E402
from engine.evaluate import evaluate  # noqa: E402
from engine.trainer import Trainer  # noqa: E402

BASE = [
    # difficulty 2 (15 of 36 cells given) needs several rounds of constraint propagation, more than one pass
    # of a 2-layer network holds; the sequence-MLP mixer is the TRM paper's choice for Sudoku
    "name=recursion-bench", "task.name=sudoku", "task.size=6", "task.difficulty=2",
    "model.d_model=128", "model.n_layers=2", "model.mixer=mlp", "model.expansion=2",
    "optim.lr=3e-3", "optim.warmup_steps=50", "train.batch_size=32", "train.max_steps=1000000",
    "train.max_minutes=0", "eval.every=0", "eval.use_ema=false", "checkpoint.every=0", "log.telemetry_seconds=60",
]
SMOKE = ["model.d_model=32", "train.batch_size=8"]  # --smoke: a smaller network, so the path runs in seconds
VARIANTS = {
    "trm": ["model.H_cycles=3", "model.L_cycles=3", "model.halt_max_steps=4"],
    "single_pass": ["model.H_cycles=1", "model.L_cycles=1", "model.halt_max_steps=1"],
}


def mark_key(minutes: float) -> str:
    return f"{minutes:g}"


def held_out(task, n: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """n distinct test puzzles of the task, stacked on the device."""
    samples = task.distinct_samples("test", n)
    inputs = torch.tensor([s.inputs for s in samples], dtype=torch.long, device=device)
    labels = torch.tensor([s.labels for s in samples], dtype=torch.long, device=device)
    return inputs, labels


def train_and_score(variant: str, seed: int, marks: list[float], n_eval: int, threads: int,
                    extra: list[str] = (), clock_fn=time.perf_counter) -> dict[str, dict]:
    """One run, scored at every mark (minutes of training, scoring time excluded): {mark: figures}."""
    overrides = BASE + list(extra) + VARIANTS[variant] + [
        f"train.seed={seed}", f"task.seed={seed}", f"train.threads={threads}",
    ]
    cfg = config.from_dict({}, "recursion-bench", overrides)
    figures: dict[str, dict] = {}
    pending = sorted(marks)
    with tempfile.TemporaryDirectory() as d:
        trainer = Trainer(d, cfg, output="quiet", emit=lambda e: on_event(e))
        data = held_out(trainer.task, n_eval, trainer.device)
        clock = {"start": 0.0, "scoring": 0.0}

        def on_event(event: dict) -> None:
            if event["event"] != "metrics" or not pending:
                return
            trained = clock_fn() - clock["start"] - clock["scoring"]
            while pending and trained >= pending[0] * 60:
                t0 = clock_fn()
                scored = evaluate(trainer.model, trainer.task, n_eval, min(n_eval, 256), trainer.device, data=data)
                figures[mark_key(pending.pop(0))] = {**scored, "steps": trainer.step, "train_s": round(trained, 1)}
                clock["scoring"] += clock_fn() - t0
            if not pending:
                trainer.stop_reason = "stopped"  # taken at the next step boundary

        clock["start"] = clock_fn()
        trainer.run()
    assert not pending, f"the {variant} run ended before the {pending[0]}-minute mark"
    return figures


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="minutes 0.5 and 1, 2 seeds")
    ap.add_argument("--smoke", action="store_true", help="seconds of training and 16 puzzles: checks the code path")
    ap.add_argument("--minutes", default=None, help="comma-separated minute marks (default 1,2,5,10)")
    ap.add_argument("--seeds", type=int, default=None)
    ap.add_argument("--first-seed", type=int, default=0, help="seeds run are first-seed .. first-seed + seeds - 1")
    ap.add_argument("--n-eval", type=int, default=None, help="distinct held-out puzzles (default 300)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--workers", type=int, default=1,
                    help="runs at once, each its own process (use with --clock cpu on a shared machine)")
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="what a minute is: wall-clock, or CPU time of the training thread (needs --threads 1)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override the shared settings of both arms, e.g. --set model.mixer=mlp")
    args = ap.parse_args()
    try:
        config.from_dict({}, "recursion-bench", BASE + args.set)
    except config.ConfigError as exc:
        ap.error(str(exc))
    default_marks = "0.005,0.01" if args.smoke else "0.5,1" if args.quick else "1,2,5,10"
    try:
        marks = sorted({float(m) for m in (args.minutes or default_marks).split(",")})
    except ValueError:
        ap.error(f"--minutes takes comma-separated numbers of minutes such as 1,2,5,10, not {args.minutes!r}")
    if not marks or marks[0] <= 0:
        ap.error("the minute marks must be positive")
    if args.clock == "cpu" and args.threads != 1:
        ap.error("--clock cpu counts the CPU time of the one training thread, so it needs --threads 1")
    # On a busy machine wall-clock minutes buy fewer steps; the training thread's CPU time is what a quiet
    # core would have spent, so both arms get the same compute whatever else runs beside them.
    clock_fn = time.thread_time if args.clock == "cpu" else time.perf_counter
    if not 1 <= args.workers <= 64:
        ap.error("--workers must be 1 to 64")
    seeds = args.seeds or (2 if args.quick or args.smoke else 3)
    n_eval = args.n_eval or (16 if args.smoke else 300)
    torch.set_num_threads(args.threads)
    shared = (SMOKE if args.smoke else []) + args.set

    runs: dict[str, list[dict[str, dict]]] = {v: [] for v in VARIANTS}
    print(f"{'variant':<12} {'seed':>4} " + " ".join(f"{mark_key(m) + ' min':>15}" for m in marks))
    jobs = [(variant, seed) for seed in range(args.first_seed, args.first_seed + seeds)
            for variant in VARIANTS]  # interleaved, so drifts in machine load hit both
    with ProcessPoolExecutor(args.workers) as pool:
        futures = [pool.submit(train_and_score, variant, seed, marks, n_eval, args.threads, shared, clock_fn)
                   for variant, seed in jobs]
        for (variant, seed), future in zip(jobs, futures):
            figures = future.result()
            runs[variant].append(figures)
            cells = [f"{figures[mark_key(m)]['eval_exact']:.3f} @{figures[mark_key(m)]['steps']:>6}" for m in marks]
            print(f"{variant:<12} {seed:>4} " + " ".join(f"{c:>15}" for c in cells), flush=True)

    exact = {v: {mark_key(m): over_seeds([r[mark_key(m)]["eval_exact"] for r in runs[v]]) for m in marks}
             for v in VARIANTS}
    gap = {mark_key(m): over_seeds([100 * (t[mark_key(m)]["eval_exact"] - s[mark_key(m)]["eval_exact"])
                                    for t, s in zip(runs["trm"], runs["single_pass"])]) for m in marks}
    print(f"\nheld-out exact on {n_eval} distinct puzzles, mean [95% t interval over {seeds} seeds]:")
    for m in marks:
        k = mark_key(m)
        print(f"  {k:>5} min: recursion {shown(exact['trm'][k])}, single pass {shown(exact['single_pass'][k])}; "
              f"gap {shown(gap[k], 1)} points")
    print("(target: gap >= +20 points at the budget quoted)")
    print(json.dumps({
        "exact_by_minutes": exact, "gap_points_by_minutes": gap,
        "steps_by_minutes": {v: {mark_key(m): [r[mark_key(m)]["steps"] for r in runs[v]] for m in marks}
                             for v in VARIANTS},
        "minutes": marks, "seeds": seeds, "first_seed": args.first_seed, "n_eval": n_eval, "threads": args.threads,
        "clock": args.clock, "workers": args.workers, "overrides": shared, "smoke": args.smoke,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
