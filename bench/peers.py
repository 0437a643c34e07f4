"""Side by side with the public peers: our recursive model and neural memory against `tiny-recursive-model`
(0.0.15) and `titans-pytorch` (0.5.5), on equal terms, every setting reported.

1. Recursion: 6x6 Sudoku from engine/tasks/sudoku.py at difficulties 1, 2 and 3, 3 seeds each. Both arms read the
   same training stream (train split, indices 0, 1, 2, ...; task seed = the seed) for the same wall-clock budget
   on the same threads. Ours runs through engine.trainer.Trainer; the peer's TinyRecursiveModel runs the loop of
   its own Trainer (a batch takes up to max_recurrent_steps optimizer steps, halted samples leave it) with an
   endless stream and a deadline instead of epochs, with the pitfalls of its defaults fixed: AdamW is built
   here with the learning rate meant (its Trainer divides by batch x max_recurrent_steps), warm-up 100 instead
   of 2,000 steps, and its halting head, initialised at exactly 0.5 (which halts the whole first batch at its
   first step), gets a bias starting far from halting, as ours has.
   - Tuning: both arms get the same learning-rate x weight-decay sweep (GRID, fixed before any result), run at
     seed 0; each arm keeps the point whose best variant scores highest on a validation split, then seeds 1 and
     2 run at that point (seed 0's figure is its sweep run there). Every sweep point is reported.
   - Evaluation sets: distinct puzzles (SudokuTask.distinct_samples, none one symmetry from another): the first
     n_eval of the test split are the held-out test set, the next n_val the validation split.
   - Variants scored: ours raw and EMA (our model always runs its full N_sup steps); the peer raw and EMA, each
     with its early halting (threshold 0.5) and at its full step count (max_recurrent_steps, no halting).
   - The gap (per seed, in points): our variant chosen on that seed's validation split, minus the peer's better
     variant on the test set itself (the choice that favours the peer). Reported per difficulty as the median
     over seeds and the lower end of a Student t interval over seeds.
2. Memory: forward + backward on 16 x 256 tokens at width 64, chunk 16, 2 heads, memory MLP depth 2 at the
   peer's sizes (head width 64, hidden 256): our NeuralMemory, the peer's NeuralMemory, and a plain causal
   attention layer of width 64 as the yardstick.

Every run is its own process (one after the other, or --workers at once), so its peak RSS is its own; peak memory is reported over the
process's footprint once its libraries are imported (torch, the peer's packages, ours), so a heavier import does
not count as a model's memory. The last line is JSON (gap_points_by_difficulty, gap_ci_low_by_difficulty, ...).
Full run: 3 difficulties x (4 sweep points x 2 arms + 2 seeds x 2 arms) = 36 training runs of the budget
(6 hours at 10 minutes). Without the peers installed it says so and exits 0 (with --smoke it still runs our arm).
On a machine shared with other work, --clock cpu --threads 1 charges each run only the CPU time of its training
thread, and --workers runs several at once.

    pip install -e ".[peers]"
    python bench/peers.py [--quick | --smoke] [--budget-s 600 | --minutes 10] [--threads 2] [--difficulty 1 2 3]
                          [--clock wall|cpu] [--workers N]
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the repo root, for `engine` and `bench`

from bench.stats import over_seeds, shown  # noqa: E402

PEER_PACKAGES = ("tiny_recursive_model", "titans_pytorch", "ema_pytorch")
# what a second of budget is: wall-clock, or CPU time of the one training thread (fair when several runs share
# the machine, since each arm is charged only what it used)
CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time}

# -- recursion settings: the same task for both arms ---------------------------------------------------------
SIZE, DIFFICULTIES, SEEDS = 6, (1, 2, 3), 3
WIDTH, LAYERS = 128, 2
GRID = [(lr, wd) for lr in (1e-3, 3e-3) for wd in (0.1, 1.0)]  # AdamW (learning rate, weight decay), both arms
OURS = [
    "name=peers-bench", "task.name=sudoku", f"task.size={SIZE}", f"model.d_model={WIDTH}",
    f"model.n_layers={LAYERS}", "model.mixer=mlp", "model.expansion=2", "model.H_cycles=3", "model.L_cycles=3",
    "model.halt_max_steps=4", "optim.preset=adamw", "optim.warmup_steps=50", "train.batch_size=32",
    "train.max_steps=100000000", "eval.every=0", "checkpoint.every=0", "log.telemetry_seconds=600",
    "log.print_seconds=600",
]
PEER_BATCH, PEER_MAX_RECURRENT_STEPS, PEER_WARMUP = 16, 12, 100
PEER_T, PEER_N = 3, 6  # the peer's defaults: num_refinement_blocks, num_latent_refinements
SMOKE_OURS = ["model.d_model=32", "train.batch_size=8"]  # --smoke: a smaller network of ours, seconds per run

# -- memory settings: the peer's NeuralMemory(dim=64, chunk_size=16, batch_size=16, heads=2) ----------------
from bench.memory_speed import BATCH as MEM_BATCH, CHUNK as MEM_CHUNK, DIM as MEM_DIM, HEADS as MEM_HEADS  # noqa: E402
from bench.memory_speed import LENGTH as MEM_LENGTH, peak_rss_mb  # noqa: E402

MEM_HEAD_DIM, MEM_HIDDEN = MEM_DIM, 4 * MEM_DIM  # titans-pytorch's defaults: dim_head = dim, a 4x memory MLP


# ================================================================ recursion arms (each in its own process)


def evaluation_sets(difficulty: int, seed: int, n_eval: int, n_val: int):
    """(test, validation): distinct puzzles of the test split as (inputs, labels) (n, 36) long tensors; the
    validation puzzles follow the test ones, so the two share none."""
    import torch

    from engine.tasks.sudoku import SudokuTask

    task = SudokuTask(SIZE, difficulty, seed)

    def stacked(samples):
        return (torch.tensor([s.inputs for s in samples], dtype=torch.long),
                torch.tensor([s.labels for s in samples], dtype=torch.long))

    return stacked(task.distinct_samples("test", n_eval)), stacked(task.distinct_samples("test", n_val, skip=n_eval))


def score(predict, inputs, labels, batch_size: int = 100) -> dict:
    """Exact (whole grid) and cell accuracy of `predict` (inputs -> preds), and how long it took."""
    import torch

    t0 = time.perf_counter()
    with torch.no_grad():
        preds = torch.cat([predict(inputs[i:i + batch_size]) for i in range(0, len(inputs), batch_size)])
    seconds = time.perf_counter() - t0
    correct = preds == labels
    return {"exact": correct.all(1).float().mean().item(), "cell": correct.float().mean().item(), "eval_s": seconds}


def peer_predict_both(net, inputs, threshold: float = 0.5, steps: int = PEER_MAX_RECURRENT_STEPS):
    """The peer's predict() at `threshold` (early halting) and at its full step count, from one pass: a sample's
    halting answer is the one of the first step whose halt probability reaches the threshold (the last step's if
    none does), as predict() takes it, and its full answer is the last step's. The batch stays whole, so a halted
    sample's later steps are computed and only the full answer reads them; the pass costs what the full variant
    alone would. Returns (halting, full) predictions, each (B, S)."""
    import torch
    from einops import unpack

    embedded, packed_shape = net.embed_inputs_with_registers(inputs)
    outputs, latents = net.get_initial()
    halting = full = None
    done = torch.zeros(inputs.shape[0], dtype=torch.bool)
    for _ in range(steps):
        outputs, latents = net.deep_refinement(embedded, outputs, latents)
        halts = net.to_halt_pred(outputs).sigmoid() >= threshold
        full = net.to_pred(unpack(outputs, packed_shape, "b * d")[1]).argmax(-1)
        halting = full.clone() if halting is None else halting
        newly = halts & ~done
        halting[newly] = full[newly]
        done |= halts
    halting[~done] = full[~done]
    return halting, full


def score_halting_and_full(net, name: str, test, val, batch_size: int = 100) -> dict:
    """score_variants' figures of the peer network `net` with early halting (`{name}_halting`) and at its full
    step count (`{name}_full`), both from peer_predict_both's one pass per batch."""
    import torch

    out: dict = {f"{name}_halting": {}, f"{name}_full": {}}
    for split, (inputs, labels) in (("test", test), ("val", val)):
        t0 = time.perf_counter()
        with torch.no_grad():
            pairs = [peer_predict_both(net, inputs[i:i + batch_size]) for i in range(0, len(inputs), batch_size)]
        seconds = time.perf_counter() - t0
        for k, variant in enumerate(("halting", "full")):
            correct = torch.cat([p[k] for p in pairs]) == labels
            figures = out[f"{name}_{variant}"]
            figures[split] = correct.all(1).float().mean().item()
            if split == "test":
                figures.update(test_cell=correct.float().mean().item(), eval_s=seconds)
    return out


def score_variants(predictors: dict, test, val) -> dict:
    """{variant: {"test": exact, "val": exact, "test_cell": cell, "eval_s": s}} for every predictor."""
    out = {}
    for name, predict in predictors.items():
        on_test, on_val = score(predict, *test), score(predict, *val)
        out[name] = {"test": on_test["exact"], "val": on_val["exact"], "test_cell": on_test["cell"],
                     "eval_s": on_test["eval_s"]}
    return out


def train_ours(a) -> dict:
    from engine import config
    from engine.trainer import Trainer

    footprint = peak_rss_mb()  # torch and the engine are imported by now
    overrides = OURS + a.set + [f"task.difficulty={a.difficulty}", f"task.seed={a.seed}", f"train.seed={a.seed}",
                                f"optim.lr={a.lr}", f"optim.weight_decay={a.wd}", f"train.threads={a.threads}"]
    cfg = config.from_dict({}, "peers-bench", overrides)
    test, val = evaluation_sets(a.difficulty, a.seed, a.n_eval, a.n_val)
    clock = CLOCKS[a.clock]
    with tempfile.TemporaryDirectory() as run_dir:
        # the budget is checked after every step, as the peer's loop checks it, on the same clock
        def on_event(event: dict) -> None:
            if event["event"] == "metrics" and clock() - t0 >= a.budget_s:
                trainer.stop_reason = "stopped"  # taken at the next step boundary

        trainer = Trainer(run_dir, cfg, output="quiet", emit=on_event)
        t0, p0 = clock(), time.process_time()
        trainer.run()
        seconds, process_s = clock() - t0, time.process_time() - p0
        variants = score_variants({"raw": lambda x: trainer.model.predict(x)[0],
                                   "ema": lambda x: trainer.ema.predict(x)[0]}, test, val)
    # process CPU time beside the clock's: work done outside the training thread would show here
    return {"arm": "ours", "steps": trainer.step, "train_s": seconds, "process_cpu_s": process_s,
            "steps_per_s": trainer.step / seconds,
            "params": sum(p.numel() for p in trainer.model.parameters()), "variants": variants,
            "peak_over_imports_mb": peak_rss_mb() - footprint, "import_mb": footprint}


def our_params(a) -> dict:
    from engine import config
    from engine.build import build_model, make_task

    cfg = config.from_dict({}, "peers-bench", OURS + a.set)
    return {"params": sum(p.numel() for p in build_model(cfg, make_task(cfg)).parameters())}


def peer_token_expansion(target_params: int) -> float:
    """The peer mixer's channel expansion that brings it to about `target_params` at width 128 and 2 layers:
    our SwiGLU widths round up to multiples of 256, so our smallest network of that shape is larger than the
    peer's default one, and the peer is widened to match rather than ours changed in shape."""
    per_unit = LAYERS * (2 * WIDTH + 1) * WIDTH  # parameters added by +1.0 of channel expansion (two linears a layer)
    base = build_peer(0.5)
    return 0.5 + max(0.0, target_params - sum(p.numel() for p in base.parameters())) / per_unit


def build_peer(token_expansion: float):
    import torch.nn as nn
    from tiny_recursive_model import MLPMixer1D, TinyRecursiveModel as PeerTRM

    network = MLPMixer1D(dim=WIDTH, depth=LAYERS, seq_len=SIZE * SIZE, expansion_factor_token=token_expansion)
    model = PeerTRM(dim=WIDTH, num_tokens=11, network=network, num_refinement_blocks=PEER_T,
                    num_latent_refinements=PEER_N)
    # its halting head has no bias and a zero weight, so every sample starts at halt probability exactly 0.5,
    # which is its threshold: a bias starting far from halting (as ours) lets the first batches learn
    head = nn.Linear(WIDTH, 1, bias=True)
    nn.init.zeros_(head.weight)
    nn.init.constant_(head.bias, -5.0)
    model.to_halt_pred[1] = head
    return model


def train_peer(a) -> dict:
    import torch
    import tiny_recursive_model  # noqa: F401 - imported before the footprint is taken
    from ema_pytorch import EMA
    from torch.optim.lr_scheduler import LambdaLR

    from engine.tasks.base import batch
    from engine.tasks.sudoku import SudokuTask

    footprint = peak_rss_mb()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    task = SudokuTask(SIZE, a.difficulty, a.seed)
    test, val = evaluation_sets(a.difficulty, a.seed, a.n_eval, a.n_val)
    model = build_peer(peer_token_expansion(a.target_params))
    optimizer = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=a.wd)
    scheduler = LambdaLR(optimizer, lambda step: min((step + 1) / PEER_WARMUP, 1.0))
    ema = EMA(model, beta=0.999, update_model_with_ema_every=10000, forward_method_names=("predict",))

    clock = CLOCKS[a.clock]
    t0, p0 = clock(), time.process_time()
    deadline = t0 + a.budget_s
    steps = index = 0
    while clock() < deadline:
        inputs, labels = batch(task, "train", list(range(index, index + PEER_BATCH)))
        index += PEER_BATCH
        outputs, latents = model.get_initial()
        for _ in range(PEER_MAX_RECURRENT_STEPS):  # the peer's loop: deep supervision on one batch
            loss, _, outputs, latents, _, halt = model(inputs, outputs, latents, labels=labels)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            scheduler.step()
            ema.update()
            steps += 1
            keep = halt < 0.5  # halted samples leave the batch
            if not keep.all():
                outputs, latents, inputs, labels = outputs[keep], latents[keep], inputs[keep], labels[keep]
                if not len(inputs):
                    break
            if clock() >= deadline:
                break
    seconds, process_s = clock() - t0, time.process_time() - p0

    model.eval()
    smoothed = ema.ema_model.eval()
    variants = {}
    for name, net in (("raw", model), ("ema", smoothed)):
        variants.update(score_halting_and_full(net, name, test, val))
    return {"arm": "peer", "steps": steps, "train_s": seconds, "process_cpu_s": process_s,
            "steps_per_s": steps / seconds,
            "params": sum(p.numel() for p in model.parameters()), "variants": variants,
            "peak_over_imports_mb": peak_rss_mb() - footprint, "import_mb": footprint}


# ================================================================ memory arms (each in its own process)


def measure_memory(name: str, steps: int, threads: int) -> dict:
    """Forward + backward `steps` times after two warm-up passes (bench/memory_speed.py's measurement, whose
    contenders at the peer's sizes are exactly these arms); median wall time and best CPU time."""
    from bench.memory_speed import measure

    contender = {"ours": "ours_peer_sizes", "peer": "peer", "attention": "attention"}[name]
    return measure(contender, steps, threads) | {"arm": name}


# ================================================================ the parent


# every training run's result is kept here, so that --resume takes up a long invocation where it was stopped
RESULTS = Path(tempfile.gettempdir()) / "trm-lab-peers"


def result_file(args: list[str]) -> Path:
    """Where the result of the child run with these arguments is kept: one file per exact argument list."""
    return RESULTS / f"{hashlib.sha1(chr(0).join(args).encode()).hexdigest()[:16]}.json"


def keep_result(args: list[str], result: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    tmp = result_file(args).with_suffix(".tmp")
    tmp.write_text(json.dumps({"args": args, "result": result}))
    os.replace(tmp, result_file(args))  # whole or not at all


def run_child(args: list[str], resume: bool = False) -> dict:
    if resume and result_file(args).is_file():
        return json.loads(result_file(args).read_text())["result"] | {"reused": True}
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"the arm {' '.join(args)} failed:\n{proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "inf"


def best_on(result: dict, split: str) -> tuple[str, float]:
    """(variant, exact) of the run's best variant on `split` ("val" or "test")."""
    name = max(result["variants"], key=lambda v: result["variants"][v][split])
    return name, result["variants"][name][split]


def recursion(difficulties: list[int], seeds: int, grids: dict, common: list[str], workers: int,
              summary: dict, resume: bool = False) -> None:
    """The sweep at seed 0, the chosen point at the other seeds, the table and the figures of every difficulty.
    Runs go `workers` at a time, each its own process; the sweep of every difficulty first, then the seeds."""
    target = run_child(["--child=ours-params", *common])["params"]  # the peer is sized to our network
    runs: dict[tuple, dict] = {}  # (difficulty, arm, lr, wd, seed) -> result
    printing = threading.Lock()

    def run(job: tuple) -> None:
        difficulty, arm, lr, wd, seed = job
        extra = [f"--target-params={target}"] if arm == "peer" else []
        r = run_child([f"--child={arm}", f"--difficulty={difficulty}", f"--seed={seed}", f"--lr={lr}", f"--wd={wd}",
                       *extra, *common], resume)
        runs[job] = r
        variants = "  ".join(f"{v} {f['val']:.3f}/{f['test']:.3f}" for v, f in r["variants"].items())
        with printing:
            print(f"  d{difficulty} {arm:>4} seed {seed} lr {lr:g} wd {wd:g}: {r['steps']:>6} steps "
                  f"({r['steps_per_s']:.2f}/s, {r['train_s']:.0f} s, process CPU {r['process_cpu_s']:.0f} s), "
                  f"exact val/test  {variants}{' (kept from an earlier invocation)' if r.get('reused') else ''}",
                  flush=True)

    def run_all(jobs: list[tuple]) -> None:
        with ThreadPoolExecutor(workers) as pool:
            for future in [pool.submit(run, job) for job in jobs]:
                future.result()

    arms = ("ours", "peer")
    run_all([(d, arm, *point, 0) for d in difficulties for i in range(max(map(len, grids.values())))
             for arm in arms for point in grids[arm][i:i + 1]])
    chosen = {(d, arm): max(grids[arm], key=lambda p: best_on(runs[(d, arm, *p, 0)], "val")[1])
              for d in difficulties for arm in arms}
    # interleaved, so drifts in machine load hit both arms
    run_all([(d, arm, *chosen[(d, arm)], seed) for d in difficulties for seed in range(1, seeds) for arm in arms])
    for d in difficulties:
        summarise(d, seeds, grids, {arm: chosen[(d, arm)] for arm in arms},
                  {arm: {k[2:]: r for k, r in runs.items() if k[:2] == (d, arm)} for arm in arms}, summary)


def summarise(difficulty: int, seeds: int, grids: dict, chosen: dict, runs: dict, summary: dict) -> None:
    """The figures of one difficulty; `runs` is arm -> (lr, wd, seed) -> result, `grids` arm -> its points."""
    key = str(difficulty)
    per_seed = {arm: [runs[arm][(*chosen[arm], s)] for s in range(seeds)] for arm in runs}
    ours_exact = [r["variants"][best_on(r, "val")[0]]["test"] for r in per_seed["ours"]]
    peer_exact = [best_on(r, "test")[1] for r in per_seed["peer"]]
    gap = over_seeds([100 * (o - p) for o, p in zip(ours_exact, peer_exact)])
    print(f"  d{difficulty}: chosen on validation: ours lr {chosen['ours'][0]:g} wd {chosen['ours'][1]:g}, peer lr "
          f"{chosen['peer'][0]:g} wd {chosen['peer'][1]:g}; held-out exact ours {shown(over_seeds(ours_exact))}, "
          f"peer's better variant {shown(over_seeds(peer_exact))}; gap median {gap['median']:+.1f} points, "
          f"mean {shown(gap, 1)}", flush=True)
    mean = statistics.mean
    summary["gap_points_by_difficulty"][key] = gap["median"]
    summary["gap_ci_low_by_difficulty"][key] = gap["ci_low"]
    summary["gap_by_difficulty"][key] = gap
    summary["ours_exact_by_difficulty"][key] = over_seeds(ours_exact)
    summary["peer_exact_by_difficulty"][key] = over_seeds(peer_exact)
    summary["exact_by_variant"][key] = {arm: {v: over_seeds([r["variants"][v]["test"] for r in per_seed[arm]])
                                              for v in per_seed[arm][0]["variants"]} for arm in runs}
    def exact(result: dict, split: str) -> dict:
        return {v: round(f[split], 4) for v, f in result["variants"].items()}

    summary["sweep"][key] = {arm: [{"lr": lr, "weight_decay": wd, "chosen": (lr, wd) == chosen[arm],
                                    "val": exact(runs[arm][(lr, wd, 0)], "val"),
                                    "test": exact(runs[arm][(lr, wd, 0)], "test")} for lr, wd in grids[arm]]
                             for arm in runs}
    summary["steps_per_s_by_difficulty"][key] = {arm: round(mean(r["steps_per_s"] for r in per_seed[arm]), 3)
                                                 for arm in runs}
    # a kept result may lack them (one written by hand from an older invocation's printed line): left out
    peaks = {arm: [r["peak_over_imports_mb"] for r in per_seed[arm] if r.get("peak_over_imports_mb") is not None]
             for arm in runs}
    summary["peak_over_imports_mb_by_difficulty"][key] = {arm: round(max(p), 1) if p else None
                                                          for arm, p in peaks.items()}
    summary["params"] = {arm: next((r["params"] for r in per_seed[arm] if r.get("params")), None) for arm in runs}
    summary["runs_kept_from_earlier"] = summary.get("runs_kept_from_earlier", 0) + sum(
        bool(r.get("reused")) for arm in runs for r in runs[arm].values())


def memory(common: list[str], summary: dict) -> None:
    print(f"\nmemory: forward + backward on {MEM_BATCH} x {MEM_LENGTH} tokens, width {MEM_DIM}, chunk {MEM_CHUNK}, "
          f"{MEM_HEADS} heads of width {MEM_HEAD_DIM}, memory MLP {MEM_HEAD_DIM}-{MEM_HIDDEN}-{MEM_HEAD_DIM}",
          flush=True)
    results = {name: run_child([f"--child=mem-{name}", *common]) for name in ("ours", "peer", "attention")}
    peer = results["peer"]
    print(f"{'':>10} {'tokens/s':>9} {'tok/cpu-s':>9} {'peak MB':>8} {'over imports':>12} {'params':>7}  vs peer")
    for name, r in results.items():
        print(f"{name:>10} {r['tokens_per_s']:>9.0f} {r['tokens_per_cpu_s']:>9.0f} {r['peak_mb']:>8.0f} "
              f"{r['peak_over_imports_mb']:>12.0f} {r['params']:>7}  {ratio(r['tokens_per_s'], peer['tokens_per_s'])} "
              f"tokens/s, {ratio(r['peak_over_imports_mb'], peer['peak_over_imports_mb'])} peak memory over imports")
    print("(targets: ours >= 5x the peer's tokens/s at <= 1/3 of its peak memory)", flush=True)
    summary.update({
        "ours_mem_tokens_per_s": round(results["ours"]["tokens_per_s"], 1),
        "peer_mem_tokens_per_s": round(peer["tokens_per_s"], 1),
        "ours_mem_peak_over_imports_mb": round(results["ours"]["peak_over_imports_mb"], 1),
        "peer_mem_peak_over_imports_mb": round(peer["peak_over_imports_mb"], 1),
        "attention_tokens_per_s": round(results["attention"]["tokens_per_s"], 1),
        "attention_peak_over_imports_mb": round(results["attention"]["peak_over_imports_mb"], 1),
        "mem_speedup": round(results["ours"]["tokens_per_s"] / peer["tokens_per_s"], 2),
        "mem_cpu_speedup": round(results["ours"]["tokens_per_cpu_s"] / peer["tokens_per_cpu_s"], 2),
        "mem_peak_ratio": round(results["ours"]["peak_over_imports_mb"] / peer["peak_over_imports_mb"], 3),
    })


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="60 s per run, 2 seeds")
    parser.add_argument("--smoke", action="store_true",
                        help="seconds per run, difficulty 1, one seed, one sweep point: checks the code path")
    parser.add_argument("--budget-s", type=float, default=None, help="training seconds per run (default 600)")
    parser.add_argument("--minutes", type=float, default=None, help="training minutes per run (instead of --budget-s)")
    parser.add_argument("--threads", type=int, default=None, help="threads of every run (default 2; --smoke 1)")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="what the budget counts: wall-clock, or CPU time of the training thread (needs --threads 1)")
    parser.add_argument("--workers", type=int, default=1,
                        help="training runs at once, each its own process (use with --clock cpu on a shared machine)")
    parser.add_argument("--difficulty", type=int, nargs="+", choices=DIFFICULTIES, default=None,
                        help="Sudoku difficulties (cells given of 36: 1 -> 22, 2 -> 15, 3 -> minimal); default all")
    parser.add_argument("--seeds", type=int, default=None, help=f"seeds per difficulty (default {SEEDS})")
    parser.add_argument("--n-eval", type=int, default=None, help="distinct held-out test puzzles (default 300)")
    parser.add_argument("--n-val", type=int, default=None, help="distinct validation puzzles (default 100)")
    parser.add_argument("--mem-steps", type=int, default=None, help="timed forward+backward passes per memory arm")
    parser.add_argument("--skip", choices=["recursion", "memory"], help="leave one part out")
    parser.add_argument("--set", action="append", default=[], help="extra key=value overrides of our arm")
    parser.add_argument("--resume", action="store_true",
                        help=f"take the result of every training run an earlier invocation with the same settings "
                             f"finished (each is kept in {RESULTS}) instead of running it again")
    parser.add_argument("--fixed", action="append", default=[], metavar="ARM=LR,WD",
                        help="no sweep for that arm (ours or peer): every seed at this learning rate and weight decay, "
                             "e.g. a point an earlier sweep chose; give it for both arms to keep their tuning equal")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    for name, kind in (("--target-params", int), ("--seed", int), ("--lr", float), ("--wd", float)):
        parser.add_argument(name, type=kind, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    fixed = {}
    for item in args.fixed:
        arm, _, point = item.partition("=")
        try:
            lr, wd = (float(v) for v in point.split(","))
        except ValueError:
            lr = wd = -1.0
        if arm not in ("ours", "peer") or arm in fixed or not (lr > 0 and wd >= 0):
            parser.error(f"--fixed {item!r} is not one ARM=LR,WD with ARM ours or peer (once each), a positive "
                         "learning rate and a weight decay of 0 or more, e.g. --fixed ours=0.003,1.0")
        fixed[arm] = (lr, wd)
    args.fixed = fixed
    if args.budget_s is not None and args.minutes is not None:
        parser.error("give --budget-s or --minutes, not both")
    args.budget_s = args.budget_s if args.budget_s is not None else (
        args.minutes * 60 if args.minutes is not None else 2.0 if args.smoke else 60.0 if args.quick else 600.0)
    args.threads = args.threads or (1 if args.smoke else 2)
    args.n_eval = args.n_eval or (8 if args.smoke else 300)
    args.n_val = args.n_val or (8 if args.smoke else 100)
    args.mem_steps = args.mem_steps or (1 if args.smoke else 8)
    if args.smoke:
        args.set = SMOKE_OURS + args.set
    if args.budget_s <= 0:
        parser.error("the budget must be positive")
    if args.clock == "cpu" and args.threads != 1:
        parser.error("--clock cpu counts the CPU time of the one training thread, so it needs --threads 1")
    if not 1 <= args.workers <= 64:
        parser.error("--workers must be 1 to 64")

    if args.child:  # one run, in this process; its JSON is the last line
        args.difficulty = (args.difficulty or [1])[0]
        if args.child == "ours-params":
            result = our_params(args)
        elif args.child == "ours":
            result = train_ours(args)
        elif args.child == "peer":
            result = train_peer(args)
        else:
            result = measure_memory(args.child.removeprefix("mem-"), args.mem_steps, args.threads)
        if args.child in ("ours", "peer"):
            if result["train_s"] < args.budget_s:  # stopped from outside (a signal): not a run of the budget
                print(f"the run stopped after {result['train_s']:.0f} s of its {args.budget_s:.0f} s budget; "
                      f"its result is not kept.", file=sys.stderr)
                return 1
            keep_result(sys.argv[1:], result)
        print(json.dumps(result))
        return 0

    difficulties = args.difficulty or ([1] if args.smoke else list(DIFFICULTIES))
    seeds = args.seeds or (1 if args.smoke else 2 if args.quick else SEEDS)
    grid = GRID[:1] if args.smoke else GRID
    grids = {arm: [args.fixed[arm]] if arm in args.fixed else grid for arm in ("ours", "peer")}
    missing = [name for name in PEER_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        print(f"the peer packages are not installed ({', '.join(missing)}), so there is nothing to compare against; "
              f"install them with pip install -e \".[peers]\" (tiny-recursive-model==0.0.15, titans-pytorch==0.5.5, "
              f"ema-pytorch==0.8.3).")
        figures: dict = {"peers_installed": False, "missing": missing,
                         "gap_points_by_difficulty": None, "gap_ci_low_by_difficulty": None}
        if args.smoke:  # our arm's path still runs, in this process
            args.difficulty, args.lr, args.wd = difficulties[0], grid[0][0], grid[0][1]
            ours = train_ours(args)
            print(f"our arm alone (smoke): {ours['steps']} steps, exact val/test "
                  + "  ".join(f"{v} {f['val']:.3f}/{f['test']:.3f}" for v, f in ours["variants"].items()))
            figures["ours_smoke_steps"] = ours["steps"]
        print(json.dumps(figures))
        return 0

    common = [f"--budget-s={args.budget_s}", f"--threads={args.threads}", f"--clock={args.clock}", f"--n-eval={args.n_eval}",
              f"--n-val={args.n_val}", f"--mem-steps={args.mem_steps}"] + [f"--set={s}" for s in args.set]
    summary: dict = {"peers_installed": True, "budget_s": args.budget_s, "threads": args.threads,
                     "clock": args.clock, "workers": args.workers,
                     "n_eval": args.n_eval, "n_val": args.n_val, "seeds": seeds, "difficulties": difficulties,
                     "grid": {arm: [{"lr": lr, "weight_decay": wd} for lr, wd in points] for arm, points in grids.items()},
                     "fixed": sorted(args.fixed), "smoke": args.smoke}
    for name in ("gap_points_by_difficulty", "gap_ci_low_by_difficulty", "gap_by_difficulty",
                 "ours_exact_by_difficulty", "peer_exact_by_difficulty", "exact_by_variant", "sweep",
                 "steps_per_s_by_difficulty", "peak_over_imports_mb_by_difficulty"):
        summary[name] = {}

    if args.skip != "recursion":
        print(f"recursion: 6x6 Sudoku, difficulties {difficulties}, {args.budget_s:.0f} {args.clock} s of training "
              f"per run on {args.threads} threads, {args.workers} at once, sweep at seed 0 {grids}, {seeds} seeds, "
              f"{args.n_eval} test and {args.n_val} validation puzzles, all distinct", flush=True)
        recursion(difficulties, seeds, grids, common, args.workers, summary, args.resume)
    if args.skip != "memory":
        memory(common, summary)

    # the headline keys first, then the rest
    keys = ["gap_points_by_difficulty", "gap_ci_low_by_difficulty"]
    print(json.dumps({**{k: summary[k] for k in keys}, **summary}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
