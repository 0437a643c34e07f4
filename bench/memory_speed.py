"""Neural-memory speed: forward + backward on 16 x 256 tokens at width 64, chunk 16, 2 heads, depth 2, one thread.

Each contender runs in its own process (so peak RSS is its own): our NeuralMemory at the lab's default sizes
(head width 32, d_mem 64), ours at the peer's sizes (head width 64, d_mem 256: titans-pytorch's defaults of
dim_head = dim and a 4x MLP), the same again on PyTorch ops only (the path of a machine without a C compiler:
engine/model/memory_kernel.py), a plain attention layer of width 64 as the yardstick, and titans-pytorch's
NeuralMemory when it is installed. Peak memory is reported whole and over the process's footprint once its
libraries are imported (torch and the contender's package), so a heavier import does not count as the layer's.

Every ratio is between two contenders measured in this run: against attention always, against the peer only when
titans-pytorch is installed (otherwise those ratios are null and the output says why). Prints a table; the last
line is a JSON object; its `speedup_vs_peer` and `memory_ratio_vs_peer` are ours at the peer's sizes against the peer
(`memory_kernel` says which path ran), `speedup_vs_peer_torch_path` the same on PyTorch ops only.

    python bench/memory_speed.py [--steps 8] [--threads 1] [--rounds 1] [--smoke]
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, for `engine`

BATCH, LENGTH, DIM, CHUNK, HEADS = 16, 256, 64, 16, 2
CONTENDERS = ("ours", "ours_peer_sizes", "ours_peer_sizes_torch", "attention", "peer")
LIBRARY = {"ours": "engine.model.titans", "ours_peer_sizes": "engine.model.titans",
           "ours_peer_sizes_torch": "engine.model.titans", "attention": "engine.model.blocks", "peer": "titans_pytorch"}
# ours_peer_sizes_torch: the same module with its elementwise loops as PyTorch ops, the path of a machine without
# a C compiler (engine/model/memory_kernel.py)
TORCH_PATH = {"ours_peer_sizes_torch"}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def build(name: str):
    from engine.config import ModelConfig
    clip = ModelConfig().memory_max_grad_norm  # the models' default per-token gradient clip

    if name == "ours":
        from engine.model.titans import NeuralMemory
        module = NeuralMemory(DIM, d_mem=64, chunk_size=CHUNK, n_heads=HEADS, depth=2, max_grad_norm=clip)
        return module, lambda x: module(x)[0]
    if name in ("ours_peer_sizes", "ours_peer_sizes_torch"):
        from engine.model.titans import NeuralMemory
        module = NeuralMemory(DIM, d_mem=4 * DIM, chunk_size=CHUNK, n_heads=HEADS, depth=2, head_dim=DIM,
                              max_grad_norm=clip)
        return module, lambda x: module(x)[0]
    if name == "attention":
        from engine.model.blocks import Attention
        module = Attention(DIM, HEADS, LENGTH, 10000.0, causal=True)
        return module, module
    if name == "peer":
        from titans_pytorch import NeuralMemory as PeerMemory
        module = PeerMemory(dim=DIM, chunk_size=CHUNK, batch_size=CHUNK, heads=HEADS)
        return module, lambda x: module(x)[0]
    raise SystemExit(f"unknown contender {name!r}")


def measure(name: str, steps: int, threads: int) -> dict:
    """Runs in the child process: time `steps` forward+backward passes after two warm-up ones."""
    import torch

    import engine.config  # noqa: F401 - every contender reads the default gradient clip from it

    importlib.import_module(LIBRARY[name])
    footprint = peak_rss_mb()  # the process with its libraries imported, before the layer exists
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    module, run = build(name)
    x = torch.randn(BATCH, LENGTH, DIM, requires_grad=True)
    for _ in range(2):
        run(x).square().mean().backward()
    walls, cpus = [], []
    for _ in range(steps):
        wall, cpu = time.perf_counter(), time.process_time()
        run(x).square().mean().backward()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    tokens = BATCH * LENGTH
    return {
        "name": name,
        "tokens_per_s": tokens / sorted(walls)[len(walls) // 2],  # median wall time
        "tokens_per_cpu_s": tokens / min(cpus),  # best CPU time: less sensitive to a busy machine
        "peak_mb": peak_rss_mb(),
        "peak_over_imports_mb": peak_rss_mb() - footprint,
        "import_mb": footprint,
        "params": sum(p.numel() for p in module.parameters()),
        "kernel": memory_kernel_name() if name.startswith("ours") else None,
    }


def memory_kernel_name() -> str:
    from engine.model import memory_kernel
    return memory_kernel.name()


def ratio(a: float, b: float | None) -> float | None:
    return round(a / b, 3) if b else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=None, help="timed passes per contender (default 8)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="3 timed passes per contender")
    parser.add_argument("--smoke", action="store_true", help="1 timed pass per contender: checks the code path")
    parser.add_argument("--rounds", type=int, default=1,
                        help="runs of every contender, interleaved; each arm's best round counts (default 1)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    for flag in ("steps", "threads", "rounds"):
        value = getattr(args, flag)
        if value is not None and not 1 <= value <= 1000:
            parser.error(f"--{flag} must be a whole number from 1 to 1000; got {value}")
    steps = args.steps or (1 if args.smoke else 3 if args.quick else 8)
    if args.child:
        print(json.dumps(measure(args.child, steps, args.threads)))
        return

    rounds: dict[str, list[dict]] = {}
    skipped: dict[str, str] = {}
    names = [c for c in CONTENDERS if not (args.smoke and c.startswith("ours_peer_sizes"))]
    for round_ in range(args.rounds):
        # interleaved, the order reversed every other round, so a neighbour's burst of load hits every arm
        for name in names if round_ % 2 == 0 else names[::-1]:
            if name in skipped:
                continue
            if name == "peer" and importlib.util.find_spec("titans_pytorch") is None:
                skipped[name] = "titans-pytorch is not installed (pip install -e \".[peers]\")"
                continue
            env = {**os.environ, **({"TRM_LAB_MEMORY_KERNEL": "torch"} if name in TORCH_PATH else {})}
            proc = subprocess.run([sys.executable, __file__, "--child", name, "--steps", str(steps),
                                   "--threads", str(args.threads)], capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                skipped[name] = proc.stderr.strip()[-300:]
                continue
            rounds.setdefault(name, []).append(json.loads(proc.stdout.strip().splitlines()[-1]))
    # each arm's best round for speed (the one least slowed by neighbours), its median round for memory
    results = {}
    for name, runs in rounds.items():
        best = max(runs, key=lambda r: r["tokens_per_cpu_s"])
        peaks = sorted(r["peak_over_imports_mb"] for r in runs)
        results[name] = {**best, "peak_over_imports_mb": peaks[len(peaks) // 2]}
    per_round = [round(a["tokens_per_cpu_s"] / b["tokens_per_cpu_s"], 3)
                 for a, b in zip(rounds.get("ours_peer_sizes", []), rounds.get("peer", []))]
    if per_round:
        print(f"speed vs peer at the peer's sizes, round by round: {' '.join(map(str, per_round))}")
    for name, reason in skipped.items():
        print(f"{name:>16}: not measured, {reason}")

    # speed ratios on CPU time: on a shared machine wall time mostly measures the neighbours
    attention, peer = results.get("attention"), results.get("peer")
    print(f"{'':>16}  {'tokens/s':>9}  {'tok/cpu-s':>9}  {'peak MB':>8}  {'over imports':>12}  {'params':>7}  "
          f"{'vs attention':>21}  vs peer")
    for name, r in results.items():
        def versus(other):
            if other is None:
                return "-"
            return (f"x{r['tokens_per_cpu_s'] / other['tokens_per_cpu_s']:.2f} speed, "
                    f"{r['peak_over_imports_mb'] / other['peak_over_imports_mb']:.2f} memory")
        print(f"{name:>16}  {r['tokens_per_s']:9.0f}  {r['tokens_per_cpu_s']:9.0f}  {r['peak_mb']:8.0f}  "
              f"{r['peak_over_imports_mb']:12.0f}  {r['params']:7d}  {versus(attention):>21}  {versus(peer)}")
    if peer is None:
        print(f"no ratio against the peer: {skipped.get('peer', 'it was not measured')}")
    summary: dict = {f"{name}_{key}": round(r[key], 1) for name, r in results.items()
                     for key in ("tokens_per_s", "tokens_per_cpu_s", "peak_mb", "peak_over_imports_mb")}
    for name in ("ours", "ours_peer_sizes", "ours_peer_sizes_torch"):
        if name not in results:
            continue
        r = results[name]
        summary[f"{name}_speedup"] = ratio(r["tokens_per_cpu_s"], peer and peer["tokens_per_cpu_s"])
        summary[f"{name}_memory_ratio"] = ratio(r["peak_over_imports_mb"], peer and peer["peak_over_imports_mb"])
        summary[f"{name}_speed_vs_attention"] = ratio(r["tokens_per_cpu_s"],
                                                      attention and attention["tokens_per_cpu_s"])
        summary[f"{name}_memory_vs_attention"] = ratio(r["peak_over_imports_mb"],
                                                      attention and attention["peak_over_imports_mb"])
    # the headline: ours at the peer's own sizes (same head width and MLP), so the two do the same work
    same_sizes = results.get("ours_peer_sizes")
    summary["speedup_vs_peer"] = ratio(same_sizes["tokens_per_cpu_s"], peer and peer["tokens_per_cpu_s"]) \
        if same_sizes else None
    summary["memory_ratio_vs_peer"] = ratio(same_sizes["peak_over_imports_mb"], peer and peer["peak_over_imports_mb"]) \
        if same_sizes else None
    torch_path = results.get("ours_peer_sizes_torch")
    summary["speedup_vs_peer_torch_path"] = ratio(torch_path["tokens_per_cpu_s"], peer and peer["tokens_per_cpu_s"]) \
        if torch_path else None
    summary["memory_kernel"] = same_sizes and same_sizes["kernel"]
    summary["speedup_vs_peer_by_round"] = per_round
    summary["threads"], summary["rounds"] = args.threads, args.rounds
    summary["peer_measured"] = peer is not None
    summary["not_measured"] = skipped
    summary["steps"] = steps
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
