"""model.compile on and off: steps/s of the full engine (Trainer.run()) with the recursion's network compiled by
torch.compile against the same run eager, same config, steps and threads, in this process; the first step's
time (the compiler's) apart; the largest loss difference per step between the arms.

Two configs: the quickstart, and the quickstart with the Titans-MAG neural memory. Steps/s is the median over
the steps after WARMUP (the first step compiles; later shapes, such as a shorter last chunk, may compile again).

    .venv/bin/python bench/compile.py [--quick | --smoke] [--config configs/quickstart.toml] [--device cpu|cuda]

Ends with a JSON line: per config, steps_per_s_eager, steps_per_s_compiled, speedup, compile_seconds,
max_loss_diff.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from engine import config  # noqa: E402
from engine.trainer import Trainer  # noqa: E402

WARMUP = 3  # steps left out of steps/s, in both arms
BASE = ["train.threads=1", "train.max_minutes=0", "eval.every=0", "checkpoint.every=0"]
# the neural memory runs beside attention, so its arm sets the mixer whatever the config's
ARMS = {"quickstart": [], "quickstart+memory": ["model.mixer=attention", "model.memory=titans-mag"]}
SMOKE = ["model.d_model=32", "model.n_layers=1", "train.batch_size=8"]


def run(cfg_path: str, sets: list[str], compiled: bool, work: Path) -> tuple[list[float], list[float], float]:
    """(losses, step times after WARMUP, the first step's compile time) of one run."""
    cfg = config.load(cfg_path, sets + [f"model.compile={str(compiled).lower()}"])
    events: list[dict] = []
    trainer = Trainer(work / f"{'compiled' if compiled else 'eager'}-{len(list(work.iterdir()))}", cfg,
                      output="quiet", emit=events.append)
    assert trainer.run() == 0
    metrics = [e["data"] for e in events if e["event"] == "metrics"]
    compile_seconds = next((m["compile_seconds"] for m in metrics if "compile_seconds" in m), 0.0)
    return [m["loss"] for m in metrics], [m["step_time"] for m in metrics[WARMUP:]], compile_seconds


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="40 steps per arm instead of 150")
    ap.add_argument("--smoke", action="store_true", help="6 steps of a smaller model without memory: the path")
    ap.add_argument("--config", default="configs/quickstart.toml")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="both arms on this device")
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: there is no CUDA device here; use --device cpu")
    torch.set_num_threads(1)
    steps = 6 if args.smoke else 40 if args.quick else 150
    arms = {"quickstart": SMOKE} if args.smoke else ARMS
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-compile-") as tmp:
        for name, extra in arms.items():
            sets = BASE + extra + [f"train.max_steps={steps}", f"train.device={args.device}"]
            eager_loss, eager_times, _ = run(args.config, sets, False, Path(tmp))
            compiled_loss, compiled_times, compile_seconds = run(args.config, sets, True, Path(tmp))
            sps_eager, sps_compiled = 1 / statistics.median(eager_times), 1 / statistics.median(compiled_times)
            diff = max(abs(a - b) / max(abs(a), 1e-3) for a, b in zip(eager_loss, compiled_loss))
            results[name] = {"steps_per_s_eager": sps_eager, "steps_per_s_compiled": sps_compiled,
                             "speedup": sps_compiled / sps_eager, "compile_seconds": compile_seconds,
                             "max_loss_diff": diff}
            print(f"{name:<20} eager {sps_eager:6.2f} steps/s   compiled {sps_compiled:6.2f} steps/s   "
                  f"ratio {sps_compiled / sps_eager:.2f}x   first step (compiling) {compile_seconds:.1f} s   "
                  f"largest loss difference {diff:.1e}", flush=True)
    print(json.dumps({"steps": steps, "threads": 1, "device": args.device, **results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
