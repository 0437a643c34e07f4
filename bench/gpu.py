"""GPU figures: steps/s, tokens/s, model FLOP utilisation, peak VRAM and the largest batch under 12 GB, for the
quickstart and the seed-sized TRM x Titans-MAG preset (configs/phase5.toml's model; its pipeline switched off,
so every step is a wake step on the levels task's stream).

    .venv/bin/python bench/gpu.py [--quick | --smoke] [--device cuda|cpu] [--peak-tflops T] [--checkpointing]

A step is the engine's own wake step (engine/stages/wake.py: data, forward, backward, optimizer) on the preset's
model, optimizer and batch, in train.dtype = auto unless --dtype says otherwise; its samples come from POOL
samples of the preset's task generated beforehand, so the figures are the step's, not the Python generator's. Steps/s is timed over STEPS
steps after WARMUP, with the device synchronised; tokens/s counts the L positions f sees per sample.

MFU = model FLOPs per step (engine/flops.py: matmuls from the model's shapes, backpropagated passes x 3, passes
without gradient x 1, written out in the JSON) x steps/s / the card's dense bf16 peak (PEAK_BF16_TFLOPS, matched
by name; --peak-tflops overrides). Unknown card, a run not in bfloat16, or a CPU: MFU is null with the reason.

Peak VRAM: torch.cuda.max_memory_allocated over the timed steps. The largest batch under 12 GB: the largest
batch whose two steps keep the allocator's reserved peak plus what the process holds outside it (CUDA context,
libraries) under train.vram_limit x 12 GiB (the users' RTX 3080 Ti; above vram_limit the engine would split
the batch), searched by doubling from the preset's batch and then bisection, out-of-memory errors caught and the
cache emptied between tries. --checkpointing adds each preset with model.checkpointing = true beside it.

On a CPU (--device cpu: width 128, 4 layers, batch 16; --smoke: width 32, one layer, also where there is no
CUDA) the same code runs, each arm in a fresh process: peak memory is then the growth of the process's peak RSS over the steps, and there is no batch
search (a CPU has no out-of-memory error to find). Without CUDA and without either flag it prints one line,
{"cuda": false, ...}, and exits 0.
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from engine import config  # noqa: E402
from engine.accumulate import MicroBatches  # noqa: E402
from engine.build import build_model, make_task, pick_device  # noqa: E402
from engine.faults import Faults  # noqa: E402
from engine.flops import step_flops  # noqa: E402
from engine.optim import build_optimizer  # noqa: E402
from engine.precision import Precision, resolve_dtype  # noqa: E402
from engine.stages.wake import WakeStage  # noqa: E402

PRESETS = {"quickstart": "configs/quickstart.toml", "phase5": "configs/phase5.toml"}
# wake steps only: no evaluation, checkpoints or pipeline stages in the timed loop
BASE = ["train.max_minutes=0", "eval.every=0", "checkpoint.every=0", "pipeline.enabled=false"]
TINY = ["model.d_model=32", "model.n_layers=1", "model.n_heads=2", "model.d_mem=16", "train.batch_size=4"]
# --device cpu without --smoke: deep enough that checkpointing has blocks to recompute, small enough for 2 cores
CPU_SIZE = ["model.d_model=128", "model.n_layers=4", "model.n_heads=4", "model.d_mem=64", "train.batch_size=16"]
CARD_12GB = 12 * 2**30  # the RTX 3080 Ti's 12 GiB
# Dense (no sparsity) bf16 tensor-core peaks with fp32 accumulation, TFLOPS, first match of the device name wins.
# H100/H200/A100/RTX 4090: the vendor's spec sheets. RTX 3080 Ti (not in the GA102 whitepaper's table): the
# whitepaper's GeForce rate of 128 dense bf16 FLOPs per tensor core per clock x 320 cores x 1.665 GHz boost.
PEAK_BF16_TFLOPS = [
    ("H200 NVL", 835.0, "NVIDIA H200 NVL spec sheet"),
    ("H200", 989.4, "NVIDIA H200 SXM spec sheet"),
    ("H100 NVL", 835.0, "NVIDIA H100 NVL spec sheet"),
    ("H100 PCIe", 756.0, "NVIDIA H100 PCIe spec sheet"),
    ("H100", 989.4, "NVIDIA H100 SXM spec sheet"),
    ("A100", 312.0, "NVIDIA A100 spec sheet (SXM and PCIe)"),
    ("RTX 4090", 165.2, "NVIDIA Ada whitepaper, GeForce RTX 4090"),
    ("RTX 3080 Ti", 68.2, "GA102 whitepaper rate x RTX 3080 Ti cores and boost clock"),
]
MB = 2**20
POOL = 1024  # training samples generated once and reused by every step


class BackedOff(RuntimeError):
    """The engine would have split this batch into micro-batches: it does not fit as one."""


def peak_tflops(device_name: str) -> tuple[float | None, str]:
    """The card's dense bf16 peak and where the figure comes from; (None, why) for an unknown card."""
    for key, tflops, source in PEAK_BF16_TFLOPS:
        if key in device_name:
            return tflops, source
    return None, f"no peak figure for {device_name!r}; give --peak-tflops"


def largest_batch(fits, start: int, cap: int) -> int | None:
    """The largest batch b <= cap with fits(b), for a fits that holds up to some size and not beyond: doubling up
    from a start that fits (halving down from one that does not), then bisection. None when not even 1 fits."""
    lo, hi = 0, cap + 1  # lo fits (0 trivially), hi does not (cap + 1 by decree)
    b = min(start, cap)
    while lo < b < hi:
        if fits(b):
            lo, b = b, min(2 * b, cap)
        else:
            hi, b = b, b // 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid
    return lo or None


class SamplePool:
    """The task's first `size` training samples, served round and round. The task generators are Python: at a batch
    of thousands a step would wait for them longer than for the card, and the step's work is the same whatever
    samples it holds."""

    def __init__(self, task, size: int):
        self.task, self.name, self.vocab_size, self.seq_len = task, task.name, task.vocab_size, task.seq_len
        self.samples = [task.sample("train", i) for i in range(size)]

    def sample(self, split: str, index: int):
        return self.samples[index % len(self.samples)]

    def render(self, sample) -> str:
        return self.task.render(sample)


class Bench:
    """One preset's model, optimizer and precision on a device; wake stages of any batch size over them."""

    def __init__(self, cfg: config.RunConfig, device: torch.device, dtype: str):
        torch.manual_seed(cfg.train.seed)
        self.cfg, self.device = cfg, device
        self.task = SamplePool(make_task(cfg), POOL)
        self.model = build_model(cfg, self.task).to(device)
        if cfg.model.compile:
            self.model.net.compile()
        self.optimizer = build_optimizer(self.model, cfg.optim, total_steps=cfg.train.max_steps)
        self.precision = Precision(dtype, device)
        self.flops = step_flops(cfg.model, self.task.seq_len, self.task.vocab_size)

    def stage(self, batch_size: int) -> WakeStage:
        def refuse(change):
            raise BackedOff(change.reason)

        generator = torch.Generator().manual_seed(self.cfg.train.seed + 1)
        return WakeStage(self.model, self.optimizer, self.task, batch_size, self.device, generator,
                         MicroBatches(batch_size), self.precision, Faults(), refuse)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def timed(self, batch_size: int, warmup: int, steps: int) -> dict:
        """Steps/s, tokens/s and peak memory of `steps` wake steps at `batch_size` after `warmup`."""
        stage = self.stage(batch_size)
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        for i in range(warmup):
            stage.step(i)
        self.sync()
        t0 = time.perf_counter()
        for i in range(warmup, warmup + steps):
            stage.step(i)
        self.sync()
        sps = steps / (time.perf_counter() - t0)
        out = {"batch": batch_size, "steps_per_s": sps, "tokens_per_s": sps * batch_size * self.flops.positions}
        if self.device.type == "cuda":
            out["peak_vram_mb"] = torch.cuda.max_memory_allocated(self.device) / MB
        else:  # no VRAM on a CPU; the figure in its place is the process's
            out["peak_vram_mb"] = None
            out["peak_rss_growth_mb"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
        return out

    def fits(self, batch_size: int, budget: int, outside: int) -> bool:
        """Whether two steps at `batch_size` run as one batch with the reserved peak + `outside` <= budget."""
        self.release()
        ok = True
        try:
            stage = self.stage(batch_size)
            stage.step(0)
            stage.step(1)
            self.sync()
        except (torch.OutOfMemoryError, BackedOff):
            ok = False
        stage = None  # noqa: F841  the carry goes before the cache is emptied
        peak = torch.cuda.max_memory_reserved(self.device)
        self.release()
        return ok and peak + outside <= budget

    def release(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        if self.device.type == "cuda":  # a failed try's tensors may sit in reference cycles until collected
            gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(self.device)


def outside_allocator(device: torch.device) -> int:
    """Bytes the process holds on the card beyond the allocator's reserve (context, libraries), as seen now."""
    free, total = torch.cuda.mem_get_info(device)
    return max(0, total - free - torch.cuda.memory_reserved(device))


def mfu(flops_per_s: float, dtype: str, device: torch.device, override: float | None) -> dict:
    if override is not None:
        peak, source = override, "--peak-tflops"
    elif device.type != "cuda":
        return {"mfu": None, "mfu_note": "a CPU has no peak in the table; give --peak-tflops"}
    elif dtype != "bfloat16":
        return {"mfu": None, "mfu_note": f"the table holds bfloat16 peaks and this ran in {dtype}; give --peak-tflops"}
    else:
        peak, source = peak_tflops(torch.cuda.get_device_name(device))
        if peak is None:
            return {"mfu": None, "mfu_note": source}
    return {"mfu": flops_per_s / (peak * 1e12), "peak_tflops": peak, "peak_source": source}


def measure(cfg_path: str, sets: list[str], device_name: str, dtype: str | None, warmup: int, steps: int,
            peak_override: float | None, search: bool) -> dict:
    """Every figure of one preset arm on one device."""
    cfg = config.load(str(ROOT / cfg_path), BASE + [f"train.device={device_name}"] + sets)
    device = pick_device(cfg.train.device)
    if device.type == "cpu":
        torch.set_num_threads(1)  # the CPU arms are a check of the code path, on a shared machine
    dtype = resolve_dtype(dtype or cfg.train.dtype, device)
    if device.type == "cuda":  # the peak is this arm's: the arms before it are gone
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    bench = Bench(cfg, device, dtype)
    out = {"dtype": dtype, **bench.timed(cfg.train.batch_size, warmup, steps)}
    flops_per_step = bench.flops.per_sample * cfg.train.batch_size
    out.update(mfu(flops_per_step * out["steps_per_s"], dtype, device, peak_override))
    out.update({"flops_per_step": flops_per_step, "flops": bench.flops.describe(),
                "parameters": sum(p.numel() for p in bench.model.parameters()), "sets": sets})
    if not search:
        out.update({"max_batch_12gb": None, "max_batch_note": "no batch search on a CPU"})
        return out
    budget, outside = int(cfg.train.vram_limit * CARD_12GB), outside_allocator(device)
    out.update({"max_batch_12gb": largest_batch(lambda b: bench.fits(b, budget, outside), cfg.train.batch_size,
                                                config.RANGES["train.batch_size"][1]),
                "budget_mb": budget / MB, "outside_allocator_mb": outside / MB})
    return out


def measure_fresh(*args) -> dict:
    """measure() in a process of its own, so its peak RSS is its own (CPU arms)."""
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        return pool.submit(measure, *args).result()


def line(name: str, r: dict) -> str:
    mem = (f"peak VRAM {r['peak_vram_mb']:8.0f} MB" if r["peak_vram_mb"] is not None
           else f"peak RSS +{r['peak_rss_growth_mb']:6.0f} MB")
    util = f"MFU {r['mfu']:.1%} of {r['peak_tflops']} TFLOPS" if r["mfu"] is not None else f"MFU n/a ({r['mfu_note']})"
    return (f"{name:<26} {r['dtype']:<9} batch {r['batch']:<5} {r['steps_per_s']:8.2f} steps/s "
            f"{r['tokens_per_s']:11.0f} tokens/s  {mem}  max batch under 12 GB {r['max_batch_12gb']}  {util}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer timed steps (same code path)")
    ap.add_argument("--smoke", action="store_true", help="seconds: a tiny model, 2 timed steps (CPU without CUDA)")
    ap.add_argument("--device", choices=("cuda", "cpu"), default=None, help="default: cuda where there is one")
    ap.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"), default=None)
    ap.add_argument("--peak-tflops", type=float, default=None, help="the card's peak, TFLOPS, for MFU")
    ap.add_argument("--checkpointing", action="store_true", help="each preset also with model.checkpointing")
    args = ap.parse_args(argv)
    if args.peak_tflops is not None and not args.peak_tflops > 0:
        ap.error(f"--peak-tflops {args.peak_tflops} is not allowed; give the card's peak, a positive number")
    cuda = torch.cuda.is_available()
    device = args.device or ("cuda" if cuda else "cpu" if args.smoke else None)
    if device is None:
        print(json.dumps({"cuda": False, "note": "no CUDA device here; the GPU figures need one "
                                                 "(--device cpu runs the measurement on a CPU at a tiny size)"}))
        return 0
    if device == "cuda" and not cuda:
        ap.error("--device cuda: there is no CUDA device here; use --device cpu")
    on_cpu = device == "cpu"
    warmup, steps = (1, 2) if args.smoke else (3, 10) if args.quick else (5, 30)
    size = TINY if args.smoke else CPU_SIZE if on_cpu else []
    arms = [(name, path, size) for name, path in PRESETS.items()]
    if args.checkpointing:
        arms += [(f"{name}+checkpointing", path, sets + ["model.checkpointing=true"]) for name, path, sets in arms]
    run = measure_fresh if on_cpu else measure
    results = {}
    for name, path, sets in arms:
        results[name] = run(path, sets, device, args.dtype, warmup, steps, args.peak_tflops, not on_cpu)
        print(line(name, results[name]), flush=True)
    for name in PRESETS:
        if f"{name}+checkpointing" in results:
            on, off = results[f"{name}+checkpointing"], results[name]
            key = "peak_vram_mb" if off["peak_vram_mb"] is not None else "peak_rss_growth_mb"
            print(f"{name}: checkpointing on/off  steps/s x{on['steps_per_s'] / off['steps_per_s']:.2f}  "
                  f"{key} x{on[key] / max(off[key], 1e-9):.2f}", flush=True)
    head = {"cuda": device == "cuda", "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
            "threads": 1 if on_cpu else torch.get_num_threads(), "warmup": warmup, "steps": steps}
    print(json.dumps({**head, **results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
