"""Neural-memory speed: forward + backward on 16 x 256 tokens at width 64, chunk 16, 2 heads, depth 2, one thread.

Each contender runs in its own process (so peak RSS is its own): our NeuralMemory at the lab's default sizes
(head width 32, d_mem 64), ours at the peer's sizes (head width 64, d_mem 256: titans-pytorch's defaults of
dim_head = dim and a 4x MLP), a plain attention layer of width 64 as the yardstick, and titans-pytorch's
NeuralMemory when it is installed. Prints a table with ratios; the last line is a JSON object.

    python bench/memory_speed.py [--steps 8] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, for `engine`

BATCH, LENGTH, DIM, CHUNK, HEADS = 16, 256, 64, 16, 2
PEER_TOKENS_PER_S, PEER_PEAK_MB = 4310.0, 1800.0  # titans-pytorch 0.5.5 measured on this kind of machine


def build(name: str):
    import torch

    from engine.config import ModelConfig
    clip = ModelConfig().memory_max_grad_norm  # the models' default per-token gradient clip

    if name == "ours":
        from engine.model.titans import NeuralMemory
        module = NeuralMemory(DIM, d_mem=64, chunk_size=CHUNK, n_heads=HEADS, depth=2, max_grad_norm=clip)
        return module, lambda x: module(x)[0]
    if name == "ours_peer_sizes":
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
        "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "params": sum(p.numel() for p in module.parameters()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.steps, args.threads)))
        return

    results = {}
    for name in ("ours", "ours_peer_sizes", "attention", "peer"):
        proc = subprocess.run([sys.executable, __file__, "--child", name, "--steps", str(args.steps),
                               "--threads", str(args.threads)], capture_output=True, text=True)
        if proc.returncode != 0:
            reason = "not installed (pip install titans-pytorch)" if name == "peer" else proc.stderr.strip()[-300:]
            print(f"{name:>16}: skipped, {reason}")
            continue
        results[name] = json.loads(proc.stdout.strip().splitlines()[-1])

    # ratios on CPU time: on a shared machine wall time mostly measures the neighbours
    peer = results.get("peer", {"tokens_per_s": PEER_TOKENS_PER_S, "tokens_per_cpu_s": PEER_TOKENS_PER_S,
                                "peak_mb": PEER_PEAK_MB})
    peer_source = "measured now" if "peer" in results else "quoted from the issue"
    print(f"{'':>16}  {'tokens/s':>9}  {'tok/cpu-s':>9}  {'peak MB':>8}  {'params':>7}  vs peer ({peer_source})")
    for name, r in results.items():
        print(f"{name:>16}  {r['tokens_per_s']:9.0f}  {r['tokens_per_cpu_s']:9.0f}  {r['peak_mb']:8.0f}  "
              f"{r['params']:7d}  x{r['tokens_per_cpu_s'] / peer['tokens_per_cpu_s']:.1f} speed, "
              f"{r['peak_mb'] / peer['peak_mb']:.2f} memory")
    summary = {f"{name}_{key}": round(r[key], 1) for name, r in results.items()
               for key in ("tokens_per_s", "tokens_per_cpu_s", "peak_mb")}
    summary["peer_source"] = peer_source
    for name in ("ours", "ours_peer_sizes"):
        if name in results:
            summary[f"{name}_speedup"] = round(results[name]["tokens_per_cpu_s"] / peer["tokens_per_cpu_s"], 2)
            summary[f"{name}_memory_ratio"] = round(results[name]["peak_mb"] / peer["peak_mb"], 3)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
