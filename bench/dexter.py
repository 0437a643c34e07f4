"""Dexter's three models on the synthetic set: held-out accuracy of each, stateful against stateless on follow-up
turns, tool choice after an error with and without being told it, latency per query and size on disk.

    .venv/bin/python bench/dexter.py [--quick | --smoke] [--out OUT] [--steps N] [--vocab-from records|examples]
        [--set key=value ...]

Without --out it samples a synthetic set (seed 0, 400 conversations), builds it and trains the three models with
`lab dexter train`'s own code (ordinary runs in a temporary runs folder) at a CPU size: width 64, 2 layers, H 2, L
2, N_sup 2, batch 32; 800 steps each (--quick: 300; --smoke: 4 steps of a width-16 network on a small set, the code
path only), the three at once by default (--jobs), each on one thread. With --out it measures the models `lab dexter
train` kept in OUT/models/. Every figure is taken through the Python API (engine/dexter/api.py) on the held-out
examples, one run per model, so each accuracy carries a bootstrap interval over the items.

- memory_recall_at_3: the share of an example's relevant facts among the first three retrieved, averaged; a
  conversation's turn is asked after its earlier turns, as a host would ask it.
- followup_exact_stateful / _stateless: held-out follow-up turns ("tell me more", "who works on it?") answered
  with every relevant fact, by a carried model that was asked the conversation's earlier turns first, against one
  whose carry was reset before the follow-up; followup_stateful_minus_stateless is their paired difference. The
  memory preset trains with task.carry_turns, so the follow-up's input is its query alone and what the carry holds
  is the latents z_H, z_L (followup_carry says which carry the model has).
- tool_top1 (all held-out calls); tool_top1_after_error (retries, given the previous error) against
  tool_top1_after_error_untold (the same retries without it).
- reasoning_plan_exact, reasoning_step_exact: whole plans and next steps.
- ternary: every figure again for the ternary form (hidden linears b1.58 of the trained weights, after training);
  not under --quick, where it is null.
- latency_ms_p50 / _p95: one query at a time on the CPU with one thread, stopping once the halting head is
  confident (the API's default), through the API's fast path (engine/model/fast.py); _plain_forward: the same
  calls through the model's own forward (latency_plain_over_fast, their ratio); _every_step: all N_sup steps;
  _design: an untrained model of each preset's size (configs/dexter-*.toml), every one of its N_sup steps, 10
  calls; tokenize_ms_p50: the tokenizer's share.
- size_mb: bytes on disk of the weights alone, float32 safetensors and the ternary export, per model; the
  same at the presets' sizes (configs/dexter-*.toml) on this vocabulary in size_mb_design.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench.stats import over_items, shown  # noqa: E402
from engine import config  # noqa: E402
from engine.build import build_model  # noqa: E402
from engine.dexter.api import MODELS, MemoryTRM, ReasoningTRM, ToolTRM  # noqa: E402
from engine.dexter.dataset import KINDS, META, VOCAB_SOURCES, build  # noqa: E402
from engine.dexter.sample import write_sample  # noqa: E402
from engine.dexter.task import Layout  # noqa: E402
from lab.dexter import train_models  # noqa: E402

CPU_SIZE = ["model.d_model=64", "model.n_layers=2", "model.H_cycles=2", "model.L_cycles=2", "model.halt_max_steps=2",
            "train.batch_size=32", "train.threads=1", "eval.every=100", "checkpoint.every=100", "optim.lr=1e-3",
            "optim.warmup_steps=20", "train.ema_decay=0.98"]
SMOKE_SIZE = ["model.d_model=16", "model.n_layers=1", "model.H_cycles=1", "model.L_cycles=1", "model.halt_max_steps=1",
              "train.batch_size=8", "train.threads=1", "eval.every=2", "checkpoint.every=2", "eval.n_puzzles=8"]


def held_out(out: Path, kind: str) -> list[dict]:
    return [e for e in map(json.loads, (out / f"{kind}.jsonl").read_text().splitlines()) if e["split"] == "test"]


def norm(text: str) -> str:
    return " ".join(text.split())


def asked_in_conversation(model: MemoryTRM, e: dict) -> set[str]:
    """The memories `model` retrieves for held-out example `e`: a conversation's turn after its earlier turns were
    asked (the carry, latents or text, holds them); any other example alone, with its own context."""
    model.reset_carry()
    if not e["followup"]:
        return {norm(m) for m in model.retrieve(e["query"], context=e["context"] or None)["memories"]}
    for turn in e["context"].split(" | "):
        model.retrieve(turn)
    return {norm(m) for m in model.retrieve(e["query"])["memories"]}


def memory_figures(carried: MemoryTRM, out: Path, limit: int) -> dict:
    rows = held_out(out, "memory")[:limit]
    recall = []
    for e in rows:
        got = asked_in_conversation(carried, e)
        recall.append(sum(norm(f) in got for f in e["facts"]) / len(e["facts"]))
    follow = [e for e in held_out(out, "memory") if e["followup"]][:limit]
    kept, reset = [], []
    for e in follow:
        kept.append(all(norm(f) in asked_in_conversation(carried, e) for f in e["facts"]))
        carried.reset_carry()
        got = {norm(m) for m in carried.retrieve(e["query"])["memories"]}
        reset.append(all(norm(f) in got for f in e["facts"]))
    return {"memory_recall_at_3": over_items(recall), "followup_exact_stateful": over_items(kept),
            "followup_exact_stateless": over_items(reset),
            "followup_stateful_minus_stateless": over_items([float(a) - float(b) for a, b in zip(kept, reset)]),
            "followup_carry": "latents" if carried.carry_latents else "text of the earlier queries"}


def tool_figures(tool: ToolTRM, out: Path, limit: int) -> dict:
    rows = [e for e in held_out(out, "tool") if e["output"].startswith("<TOOL_RESULT>")][:limit]

    def right(e, told: bool) -> bool:
        error = e["previous_error"] if told else None
        return tool.select_tool(e["task"], e["available"], error or None, e["context"])["selected_tool"] == e["tool"]

    retries = [e for e in rows if e["after_error"]]
    return {"tool_top1": over_items([right(e, True) for e in rows]),
            "tool_top1_after_error": over_items([right(e, True) for e in retries]),
            "tool_top1_after_error_untold": over_items([right(e, False) for e in retries])}


def reasoning_figures(reasoning: ReasoningTRM, out: Path, limit: int) -> dict:
    rows = held_out(out, "reasoning")
    plans = [e for e in rows if e["mode"] == "plan"][:limit]
    steps = [e for e in rows if e["mode"] == "step"][:limit]
    plan_marks = [[norm(s) for s in reasoning.plan(e["goal"], tuple(e["constraints"]))["plan_steps"]] ==
                  [norm(s) for s in e["steps"]] for e in plans]
    step_marks = [norm(reasoning.next_step(e["goal"], e["steps"][:e["done"]], tuple(e["constraints"]))["next_step"])
                  == norm(e["output"].removeprefix("<REASON_STEP>")) for e in steps]
    return {"reasoning_plan_exact": over_items(plan_marks), "reasoning_step_exact": over_items(step_marks)}


def all_figures(models: dict, out: Path, limit: int) -> dict:
    return {**memory_figures(models["memory"], out, limit), **tool_figures(models["tool"], out, limit),
            **reasoning_figures(models["reasoning"], out, limit)}


def latency_ms(model, kind: str, out: Path, calls: int) -> dict:
    """p50 and p95 of one query at a time after two warm-up calls, the tokenizer's share alone, and the supervision
    steps the calls took (they stop early once the halting head is confident)."""
    rows = held_out(out, kind)
    ask = {"memory": lambda e: model.retrieve(e["query"], context=e["context"]),
           "tool": lambda e: model.select_tool(e["task"], e["available"], e["previous_error"] or None),
           "reasoning": lambda e: model.plan(e["goal"], tuple(e["constraints"]))}[kind]
    times, tokenize, steps = [], [], []
    for i in range(calls + 2):
        e = rows[i % len(rows)]
        model.reset_carry()
        t0 = time.perf_counter()
        ask(e)
        times.append((time.perf_counter() - t0) * 1000)
        steps.append(model.last_steps)
        t0 = time.perf_counter()
        model.vocab.encode(e["input"])
        tokenize.append((time.perf_counter() - t0) * 1000)

    def pct(values, q):
        values = sorted(values[2:])
        return round(values[min(len(values) - 1, int(q * len(values)))], 2)
    return {"p50": pct(times, 0.5), "p95": pct(times, 0.95), "tokenize_p50": pct(tokenize, 0.5),
            "steps_mean": round(statistics.mean(steps[2:]), 2)}


def file_mb(model, folder: Path) -> dict:
    """Bytes on disk of the weights alone: float32 safetensors, and the ternary export."""
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.model.state_dict().items()}, str(folder / "float32.safetensors"))
    model.export_ternary(folder / "ternary.safetensors")
    return {name: round((folder / f"{name}.safetensors").stat().st_size / 2**20, 2) for name in ("float32", "ternary")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="300 steps per model, no ternary accuracy figures")
    ap.add_argument("--smoke", action="store_true", help="a width-16 network for 4 steps on a small set: the code path")
    ap.add_argument("--out", help="measure the models `lab dexter train` kept in OUT/models/ instead of training")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--vocab-from", choices=VOCAB_SOURCES, default="records",
                    help="the vocabulary learns from every record's text (default) or only the layouts' (examples)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="an override for every run")
    ap.add_argument("--jobs", type=int, default=len(KINDS),
                    help="models trained at once, each its own one-thread engine (default: all three); the figures "
                         "are measured after, one model at a time")
    args = ap.parse_args()
    if not 1 <= args.jobs <= len(KINDS):
        ap.error(f"--jobs {args.jobs} is out of range; allowed is 1 to {len(KINDS)}")
    torch.set_num_threads(1)
    steps = args.steps or (4 if args.smoke else 300 if args.quick else 800)
    limit, calls, design_calls = (8, 3, 2) if args.smoke else (10_000, 50, 10)
    tmp = tempfile.TemporaryDirectory(prefix="dexter-bench-")
    out = Path(args.out) if args.out else Path(tmp.name) / "built"
    t0 = time.time()
    if not args.out:
        write_sample(Path(tmp.name) / "raw", seed=0, size=150 if args.smoke else 400)
        build(Path(tmp.name) / "raw", out, vocab_from=args.vocab_from)
        sizes = SMOKE_SIZE if args.smoke else CPU_SIZE
        results = train_models(out, Path(tmp.name) / "runs", list(KINDS), sizes + args.set, steps, output="quiet",
                               jobs=args.jobs)
        failed = [k for k, r in results.items() if r["exit"] != 0]
        if failed:
            raise SystemExit(f"bench/dexter.py: the {', '.join(failed)} run failed; see its engine.log.")
    train_s = round(time.time() - t0, 1)
    paths = {kind: out / "models" / kind for kind in KINDS}
    built = json.loads((out / META).read_text())
    models = {kind: MODELS[kind].from_checkpoint(paths[kind], use_carry=kind == "memory") for kind in KINDS}
    seconds = {"train": train_s}
    t0 = time.time()
    figures = all_figures(models, out, limit)
    ternary = None if args.quick else all_figures({k: m.ternary() for k, m in models.items()}, out, limit)
    seconds["figures"] = round(time.time() - t0, 1)
    t0 = time.time()
    latency = {kind: latency_ms(models[kind], kind, out, calls) for kind in KINDS}
    fast = {kind: m.fast for kind, m in models.items()}
    for m in models.values():
        m.fast = None  # the same calls through the model's own forward: what the fast path saves
    plain = {kind: latency_ms(models[kind], kind, out, calls) for kind in KINDS}
    for kind, m in models.items():
        m.fast, m.halt_early = fast[kind], False
    all_steps = {kind: latency_ms(models[kind], kind, out, calls) for kind in KINDS}
    seconds["latency"] = round(time.time() - t0, 1)
    t0 = time.time()
    size, design, design_latency = {}, {}, {}
    sizes_dir = Path(tmp.name) / "sizes"
    sizes_dir.mkdir()
    for kind in KINDS:
        size[kind] = file_mb(models[kind], sizes_dir)
        # --smoke: one pass a step, the code path only (the cycles hold no weights, so the size is the same)
        short = ["model.H_cycles=1", "model.L_cycles=1", "model.halt_max_steps=1"] if args.smoke else []
        cfg = config.load(ROOT / "configs" / f"dexter-{kind}.toml", [f"task.path={paths[kind]}", *short])
        layout = Layout(kind, paths[kind])
        preset = MODELS[kind](build_model(cfg, layout), layout, use_carry=kind == "memory")
        design[kind] = file_mb(preset, sizes_dir)
        # untrained, so its halting head never stops early: every one of the preset's N_sup steps
        design_latency[kind] = latency_ms(preset, kind, out, design_calls)
    seconds["sizes_and_presets"] = round(time.time() - t0, 1)
    for key, value in figures.items():
        if isinstance(value, dict):
            print(f"{key:<36} {shown(value)}  (n={value['n']})" +
                  (f"   ternary: {shown(ternary[key])}" if ternary else ""))
    ratio = None
    stateful, stateless = figures["followup_exact_stateful"]["mean"], figures["followup_exact_stateless"]["mean"]
    if stateful is not None and stateless:
        ratio = round(stateful / stateless, 3)
    print(f"follow-ups ({figures['followup_carry']} carried), carried / reset: "
          f"{ratio if ratio is not None else 'n/a (nothing right when reset)'}")
    for kind in KINDS:
        lat, full = latency[kind], all_steps[kind]
        print(f"{kind:<10} latency p50 {lat['p50']} ms  p95 {lat['p95']} ms ({lat['steps_mean']} steps; every step: "
              f"p50 {full['p50']} ms, ratio {round(full['p50'] / lat['p50'], 2)}; the model's own forward: p50 "
              f"{plain[kind]['p50']} ms, ratio {round(plain[kind]['p50'] / lat['p50'], 2)}; tokenizer "
              f"{lat['tokenize_p50']} ms; presets' size, every step: p50 {design_latency[kind]['p50']} ms)"
              f"  size {size[kind]['float32']} MB float32, {size[kind]['ternary']} MB ternary (presets' size: "
              f"{design[kind]['float32']} / {design[kind]['ternary']} MB)")
    best = {kind: json.loads((paths[kind] / "best.json").read_text()) for kind in KINDS if
            (paths[kind] / "best.json").is_file()}
    print(json.dumps({
        **figures, "followup_stateful_over_stateless": ratio,
        "ternary": {k: v for k, v in ternary.items() if isinstance(v, dict)} if ternary else None,
        "latency_ms_p50": {k: v["p50"] for k, v in latency.items()}, "latency_ms_p95": {k: v["p95"] for k, v in latency.items()},
        "latency_ms_p50_every_step": {k: v["p50"] for k, v in all_steps.items()},
        "latency_ms_p95_every_step": {k: v["p95"] for k, v in all_steps.items()},
        "latency_ms_p50_plain_forward": {k: v["p50"] for k, v in plain.items()},
        "latency_plain_over_fast": {k: round(plain[k]["p50"] / latency[k]["p50"], 3) for k in KINDS},
        "latency_ms_p50_design": {k: v["p50"] for k, v in design_latency.items()},
        "latency_ms_p95_design": {k: v["p95"] for k, v in design_latency.items()},
        "tokenize_ms_p50": {k: v["tokenize_p50"] for k, v in latency.items()},
        "steps_mean": {k: v["steps_mean"] for k, v in latency.items()},
        "size_mb": size, "size_mb_design": design, "vocab_size": built["vocab_size"],
        "vocab_from": built.get("vocab_from", "records"),
        "best": best, "steps": None if args.out else steps, "train_seconds": None if args.out else train_s,
        "settings": (SMOKE_SIZE if args.smoke else CPU_SIZE) + args.set if not args.out else args.set,
        "threads": 1, "jobs": None if args.out else args.jobs, "seconds": seconds, "device": "cpu"}))


if __name__ == "__main__":
    main()
