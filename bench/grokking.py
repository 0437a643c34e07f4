"""Grokking benchmark: steps to 95% test accuracy on multiplication mod 97, trained on half the table.

A 1-layer transformer of width 64 built from engine.model.blocks, minibatches of 512 drawn by a seeded
generator from the 4,704 training pairs, each optimizer built by engine.optim.build_optimizer from an
OptimConfig exactly as a run would build it. Test accuracy is measured on all 4,705 held-out pairs every
25 steps.

    python bench/grokking.py            # 3 seeds per optimizer
    python bench/grokking.py --quick    # 1 seed, a 2,500-step budget
    python bench/grokking.py --smoke    # 1 seed, 10 steps: checks the code path

Prints a table with the ratio of every optimizer's steps to AdamW's; the last line is one JSON object. The one
accuracy it reports (Adam without weight decay after 6,000 steps, acc_adam_nowd_6000) carries a Student t
interval over the seeds (bench/stats.py); the held-out set is the whole test half of the table, every pair once.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.stats import over_seeds, shown  # noqa: E402
from engine.config import OptimConfig  # noqa: E402
from engine.model.bitlinear import convert_to_bitnet  # noqa: E402
from engine.model.blocks import Attention, SwiGLU, rms_norm  # noqa: E402
from engine.optim import build_optimizer  # noqa: E402
from engine.tasks.modular import ModularTask  # noqa: E402

TARGET = 0.95


class GrokNet(nn.Module):
    """token + position embedding -> post-norm attention -> post-norm SwiGLU -> head, read at "=".

    The learned position embedding matters: with RoPE alone the values carry no position, the model is
    symmetric in a and b, and for a commutative op it gets every test pair whose mirror is in the
    training half (about half the test set) without learning anything; memorising alone would then
    read ~50% test accuracy. Positions in the values make test accuracy measure generalisation."""

    def __init__(self, vocab_size: int, seq_len: int, d_model: int = 64, n_heads: int = 4,
                 expansion: float = 4.0, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.embed = nn.Embedding(vocab_size, d_model)
        self.pos_embed = nn.Embedding(seq_len, d_model)
        self.mixer = Attention(d_model, n_heads, seq_len, rope_theta=10000.0)
        self.mlp = SwiGLU(d_model, expansion)
        self.lm_head = nn.Linear(d_model, vocab_size, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # (B, L) -> logits (B, vocab)
        h = self.embed(tokens) + self.pos_embed.weight[: tokens.size(1)]  # (B, L, D)
        heads = self.mixer.attend(h)  # (B, L, H, d_head)
        # one layer: only the last position's output is read, so the rest needs no o_proj or MLP
        h = rms_norm(h[:, -1] + self.mixer.o_proj(heads[:, -1].flatten(1)), self.eps)  # (B, D)
        h = rms_norm(h + self.mlp(h), self.eps)
        return self.lm_head(h)


@dataclass
class Variant:
    key: str
    label: str
    optim: OptimConfig  # as a user would write it in [optim]
    bitnet: bool = False  # model.bitnet: BitLinear hidden layers (b1.58 STE)


def variants() -> list[Variant]:
    """The optimizers compared. Learning rates were tuned on seed 0 over a small grid each (AdamW and
    Adam + Grokfast: 1e-3, 3e-3, 1e-2; Muon's AdamW fallback: 1e-3, 3e-3, 1e-2); weight decay 1.0 on
    everything AdamW decays, and Muon's own decay the 0.1 the comparison is about."""
    muon = dict(preset="muon", lr=0.02, weight_decay=0.1, adamw_lr=1e-2, adamw_weight_decay=1.0, beta2=0.98)
    return [
        Variant("adamw", "AdamW (lr 1e-2, wd 1)",
                OptimConfig(preset="adamw", lr=1e-2, weight_decay=1.0, beta2=0.98)),
        Variant("adam_grokfast", "Adam + Grokfast (lr 3e-3, wd 1, l 2)",
                OptimConfig(preset="adamw", lr=3e-3, weight_decay=1.0, beta2=0.98,
                            grokfast_alpha=0.98, grokfast_lambda=2.0)),
        Variant("muon_wd", "Muon (lr 0.02, wd 0.1) + AdamW",
                OptimConfig(**muon)),
        Variant("muon_grokfast_all", "  the same + Grokfast on all",
                OptimConfig(**muon, grokfast_lambda=2.0, grokfast_scope="all")),
        Variant("phase5", "phase5 preset as shipped",
                OptimConfig(preset="phase5")),
        Variant("ste_muon", "Muon + AdamW, BitNet b1.58 STE",
                OptimConfig(**muon), bitnet=True),
    ]


def train(variant: Variant, seed: int, task: ModularTask, max_steps: int, batch_size: int = 512,
          eval_every: int = 25, stop_at_target: bool = True) -> tuple[int | None, float, int]:
    """Returns (first step with test accuracy >= 95% or None, last test accuracy, steps run)."""
    torch.manual_seed(seed)
    model = GrokNet(task.vocab_size, task.seq_len)
    if variant.bitnet:
        convert_to_bitnet(model)
    opt = build_optimizer(model, variant.optim, total_steps=max_steps)
    x_train, y_train = task.tensors("train")
    x_test, y_test = task.tensors("test")
    y_train, y_test = y_train[:, -1], y_test[:, -1]  # the answer sits at the "=" position
    draw = torch.Generator().manual_seed(seed)

    reached, acc = None, 0.0
    for step in range(1, max_steps + 1):
        idx = torch.randint(len(x_train), (batch_size,), generator=draw)  # (B,)
        loss = F.cross_entropy(model(x_train[idx]), y_train[idx])
        loss.backward()
        opt.step()
        opt.zero_grad()
        if step % eval_every == 0 or step == max_steps:
            with torch.no_grad():
                acc = (model(x_test).argmax(-1) == y_test).float().mean().item()
            if acc >= TARGET and reached is None:
                reached = step
                if stop_at_target:
                    return reached, acc, step
            if not torch.isfinite(loss):
                return None, acc, step
    return reached, acc, max_steps


def median_or_none(values: list[int | None]) -> float | None:
    """Median over seeds, a seed that never reached the target counting as infinitely slow."""
    ranked = sorted(values, key=lambda v: float("inf") if v is None else v)
    mid = ranked[len(ranked) // 2] if len(ranked) % 2 else None
    if len(ranked) % 2 == 0:
        a, b = ranked[len(ranked) // 2 - 1], ranked[len(ranked) // 2]
        mid = None if a is None or b is None else statistics.mean([a, b])
    return mid


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one seed and a 2,500-step budget")
    parser.add_argument("--smoke", action="store_true", help="one seed and 10 steps: checks the code path")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", nargs="*", help="variant keys to run (default: all)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    seeds = [0] if args.quick or args.smoke else [0, 1, 2]
    budget = 10 if args.smoke else 2_500 if args.quick else 10_000  # not at 95% by then: counts as never
    nowd_steps = 10 if args.smoke else 6_000
    task = ModularTask(p=97, op="mul", train_fraction=0.5, seed=0)
    print(f"multiplication mod 97: {task.size('train')} train / {task.size('test')} test pairs, batches of 512, "
          f"seeds {seeds}, budget {budget:,} steps, {args.threads} thread(s)")
    print(f"{'optimizer':38s} {'steps to 95% per seed':>22s} {'median':>7s} {'vs AdamW':>9s} {'s/seed':>7s}")

    results: dict[str, float | None] = {}
    for variant in variants():
        if args.only and variant.key not in args.only:
            continue
        t0 = time.perf_counter()
        steps = [train(variant, seed, task, budget)[0] for seed in seeds]
        seconds = (time.perf_counter() - t0) / len(seeds)
        results[variant.key] = median = median_or_none(steps)
        base = results.get("adamw")
        ratio = f"{median / base:.2f}x" if median is not None and base else "-"
        per_seed = ", ".join("never" if s is None else str(s) for s in steps)
        print(f"{variant.label:38s} {per_seed:>22s} {'never' if median is None else f'{median:g}':>7s} "
              f"{ratio:>9s} {seconds:7.1f}", flush=True)

    acc_nowd = None
    if not args.only or "adam_nowd" in args.only:
        nowd = Variant("adam_nowd", "Adam (lr 1e-2), no weight decay",
                       OptimConfig(preset="adamw", lr=1e-2, weight_decay=0.0, beta2=0.98))
        accs = [train(nowd, seed, task, nowd_steps, eval_every=nowd_steps, stop_at_target=False)[1] for seed in seeds]
        acc_nowd = over_seeds(accs)
        print(f"{nowd.label:38s} test accuracy after {nowd_steps:,} steps: " + ", ".join(f"{a:.3f}" for a in accs)
              + f"; mean {shown(acc_nowd)}")

    print(json.dumps({
        "steps_adamw": results.get("adamw"),
        "steps_adam_grokfast": results.get("adam_grokfast"),
        "steps_muon_wd": results.get("muon_wd"),
        "steps_phase5": results.get("phase5"),
        "steps_ste_muon": results.get("ste_muon"),
        f"acc_adam_nowd_{nowd_steps}": acc_nowd,
        "steps_muon_grokfast_all": results.get("muon_grokfast_all"),
        "seeds": len(seeds),
        "budget_steps": budget,
        "smoke": args.smoke,
    }))


if __name__ == "__main__":
    main()
