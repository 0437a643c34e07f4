"""Data-parallel on CPU: N processes (torchrun, gloo) against 1 process at the same global batch, same config,
same steps, one thread per process: the largest loss difference over every step (they should train alike), and
steps/s of each arm, with their ratio.

Both arms run as a user runs them, `lab run CONFIG --headless` and `lab run CONFIG --headless --nproc N`, with
the neural memory and sleep on (a sleep every 20 wake steps, 5 steps long); steps/s is timed from the store's
row times, from step WARMUP to the last step (torch imports and the rendezvous are not counted). The loss
difference is relative, over the wake loss and the consolidation loss of every step, shown per window of
WINDOW steps: the arms add float32 numbers in another order, and training carries such differences forward
and grows them, so the bench holds the first TESTED_STEPS steps to LOSS_RTOL (what tests/test_distributed.py
holds) and reports the rest.

    .venv/bin/python bench/ddp.py [--quick | --smoke] [--nproc 2] [--config configs/quickstart.toml]

Ends with a JSON line: max_loss_diff, steps, world_size, steps_per_s_1proc, steps_per_s_nproc, speedup,
max_loss_diff_tested_steps, max_loss_diff_by_window.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.store import RunReader  # noqa: E402

WARMUP = 5  # steps before the timed window, in both arms
LOSS_RTOL = 1e-5  # the tolerance tests/test_distributed.py holds the arms to, over its TESTED_STEPS steps
TESTED_STEPS = 40
WINDOW = 20
# the neural memory runs beside attention, so the mixer is set whatever the config's
SETS = ["train.threads=1", "train.device=cpu", "model.mixer=attention", "model.memory=titans-mag", "sleep.enabled=true",
        "sleep.wake_steps=20", "sleep.sleep_steps=5", "train.max_minutes=0", "eval.every=0",
        "checkpoint.every=0"]
SMOKE = ["model.d_model=32", "model.n_layers=1", "train.batch_size=8"]  # seconds: checks the path


def run_arm(config: str, sets: list[str], nproc: int, work: Path) -> Path:
    """One `lab run --headless` (through torchrun when nproc > 1); returns its run folder."""
    runs_dir = work / f"nproc{nproc}"
    cmd = [sys.executable, "-m", "lab.cli", "run", config, "--headless", "--runs-dir", str(runs_dir)]
    if nproc > 1:
        cmd += ["--nproc", str(nproc)]
    for s in sets:
        cmd += ["--set", s]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=3600)
    if out.returncode != 0:
        raise SystemExit(f"bench/ddp.py: the {nproc}-process arm failed (exit {out.returncode}): "
                         f"{out.stderr.strip().splitlines()[-1] if out.stderr.strip() else 'no message'}")
    return next(d for d in runs_dir.iterdir() if not d.name.startswith("."))


def losses_and_times(run: Path) -> tuple[dict[tuple[str, int], float], dict[int, float]]:
    """Every step's loss (wake) or consolidation loss (sleep), and the time its row was written."""
    r = RunReader(run)
    try:
        rows = r.conn.execute("SELECT key, step, value, time FROM metrics WHERE superseded = 0 AND key IN "
                              "('loss', 'consolidation_loss') ORDER BY step").fetchall()
    finally:
        r.close()
    return {(k, s): v for k, s, v, _ in rows}, {s: t for _, s, _, t in rows}


def steps_per_s(times: dict[int, float]) -> float:
    last = max(times)
    return (last - WARMUP) / (times[last] - times[WARMUP])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="100 steps instead of 400")
    ap.add_argument("--smoke", action="store_true", help="12 steps of a smaller model: checks the code path")
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--config", default="configs/quickstart.toml")
    args = ap.parse_args(argv)
    steps = 12 if args.smoke else 100 if args.quick else 400
    sets = SETS + [f"train.max_steps={steps}"] + (SMOKE if args.smoke else [])
    if args.smoke:
        sets += ["sleep.wake_steps=4", "sleep.sleep_steps=2"]
    with tempfile.TemporaryDirectory(prefix="bench-ddp-") as tmp:
        one = losses_and_times(run_arm(args.config, sets, 1, Path(tmp)))
        many = losses_and_times(run_arm(args.config, sets, args.nproc, Path(tmp)))
    (want, t1), (got, tn) = one, many
    if want.keys() != got.keys():
        raise SystemExit("bench/ddp.py: the arms recorded different steps; they did not train alike.")
    diffs = {step: abs(got[(key, step)] - v) / max(abs(v), 1e-3) for (key, step), v in want.items()}
    diff, tested = max(diffs.values()), max(d for s, d in diffs.items() if s <= TESTED_STEPS)
    windows = {f"{a}-{min(a + WINDOW - 1, steps)}": max(d for s, d in diffs.items() if a <= s < a + WINDOW)
               for a in range(1, steps + 1, WINDOW)}
    sps1, spsn = steps_per_s(t1), steps_per_s(tn)
    print(f"{steps} steps of {args.config} (memory and sleep on, {sum(k == 'consolidation_loss' for k, _ in want)} "
          f"sleep steps), one thread per process, global batch the same in both arms")
    print(f"  1 process        {sps1:7.2f} steps/s")
    print(f"  {args.nproc} processes      {spsn:7.2f} steps/s   ratio {spsn / sps1:.2f}x")
    print(f"  largest loss difference per step, relative: {diff:.2e}; steps 1-{min(steps, TESTED_STEPS)}: "
          f"{tested:.2e} ({'within' if tested <= LOSS_RTOL else 'OUTSIDE'} the tested {LOSS_RTOL:g})")
    print("  by window: " + ", ".join(f"{w} {d:.1e}" for w, d in windows.items()))
    print(json.dumps({"max_loss_diff": diff, "steps": steps, "world_size": args.nproc, "steps_per_s_1proc": sps1,
                      "steps_per_s_nproc": spsn, "speedup": spsn / sps1, "loss_rtol": LOSS_RTOL,
                      "max_loss_diff_tested_steps": tested, "max_loss_diff_by_window": windows}))
    return 0 if tested <= LOSS_RTOL else 1


if __name__ == "__main__":
    sys.exit(main())
