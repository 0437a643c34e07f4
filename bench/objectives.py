"""The memory-training objectives, ablated at equal steps: the task loss alone, the full mix (configs/objectives.toml,
the document's 70/20/10) and the full mix with each term removed.

Every condition trains the same model (bench/kv_gap.py's continual KV-Gap format: `tag key value` facts, a gap
beyond the attention window, queries; Titans-MAG memory; here 2 H cycles, so the answers y1, y2 can be compared)
from the same start, with the same data, steps, optimizer and seeds; only [objectives] differs.
- start (one per seed, shared by every condition): --start-steps steps of in-context recall (fresh values every
  episode) with the task loss alone, so the cycles begin from a model that reads its context;
- five AB-AC cycles (bench/kv_gap.py's): each --wake-steps wake steps with the condition's mix, then as many
  replay-sleep steps (the lab's SleepStage, the task loss alone);
- retention across the cycles: the mean closed-book accuracy (memory-free path) on every cycle's facts after the
  last cycle, and the forgetting;
- held-out exact: then, the share of 256 distinct held-out in-context episodes (fresh values) whose every query is
  answered (memory on, eval semantics).
The slow term's anchor is the weights' moving average (decay --ema-decay), as the trainer's EMA is in a run.
Runs go to --workers processes of one thread each.

Each figure is a mean over seeds with a Student t interval (bench/stats.py); the mix's and each removal's effects
are paired by seed. Prints one line per condition and seed, the table with each condition's ratio to the task loss
alone, then the figures as one JSON object on the last line.
Two controls get the mix's compute (a mixed step costs about 5x a task-loss step): the task loss alone with 5x
the wake steps a cycle, and with the same steps on 5x larger batches, so a gain of the mix is not one of compute.
Usage: python bench/objectives.py [--quick | --smoke] [--seeds N] [--start-steps N] [--wake-steps N] [--batch N]
                                  [--workers N] [--conditions task_only,full_mix,...]
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import sys
import time
import tomllib
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the repo root, for `engine` and `bench`

import torch  # noqa: E402

from bench import kv_gap  # noqa: E402
from bench.stats import over_seeds, shown  # noqa: E402
from engine.accumulate import MicroBatches  # noqa: E402
from engine.config import OBJECTIVE_TERMS, ObjectivesConfig, OptimConfig, SleepConfig, from_dict  # noqa: E402
from engine.faults import Faults  # noqa: E402
from engine.model.trm import PAD, TinyRecursiveModel  # noqa: E402
from engine.objectives import Objectives  # noqa: E402
from engine.optim import build_optimizer  # noqa: E402
from engine.precision import Precision  # noqa: E402
from engine.stages.sleep import SleepStage  # noqa: E402

PRESET = ROOT / "configs" / "objectives.toml"
# the controls that get the mix's compute, the task loss alone with (wake steps, batch) times the others': more
# wake steps a cycle, or the same steps on larger batches (the sleep sees the same samples a step as every other
# condition). A mixed step cost 5.3x a task-loss step (0.58 s against 0.11 s, docs/decisions.md): fixed at 5.
EQUAL_COMPUTE = {"task_only_equal_compute": (5, 1), "task_only_equal_compute_batch": (1, 5)}
FMT = kv_gap.CONTINUAL
HELD_OUT = 256


def preset_mix() -> ObjectivesConfig:
    """The preset's [objectives], validated as a run's config is."""
    return from_dict(tomllib.loads(PRESET.read_text()), str(PRESET)).objectives


def conditions() -> dict[str, ObjectivesConfig]:
    full = preset_mix()
    named = {"task_only": ObjectivesConfig(), "full_mix": full}
    for term in OBJECTIVE_TERMS:
        if getattr(full, term):
            named[f"minus_{term}"] = dataclasses.replace(full, **{term: 0.0})
    named |= {c: ObjectivesConfig() for c in EQUAL_COMPUTE}
    return named


def new_model() -> TinyRecursiveModel:
    cfg = dataclasses.replace(kv_gap.model_config("titans-mag", FMT), H_cycles=2)
    return TinyRecursiveModel(cfg, FMT.vocab, kv_gap.SEQ)


def held_out_set(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """HELD_OUT distinct in-context episodes (fresh values), from a generator no training stream uses."""
    g = torch.Generator().manual_seed(10_000 + seed)
    inputs, labels = kv_gap.episodes(FMT, 2 * HELD_OUT, g, None, [0])
    seen, keep = set(), []
    for i, row in enumerate(map(tuple, inputs.tolist())):
        if row not in seen:
            seen.add(row)
            keep.append(i)
    return inputs[keep[:HELD_OUT]], labels[keep[:HELD_OUT]]


@torch.no_grad()
def exact(model: TinyRecursiveModel, inputs: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of episodes whose every query is right, with the memory on."""
    model.eval()
    logits, _ = model.predict_logits(inputs)
    model.train()
    scored = labels != PAD
    return float((((logits.argmax(-1) == labels) | ~scored).all(-1)).float().mean())


class Trainee:
    """One condition's model, optimizer, moving average and mix; train() is one wake step with the mix."""

    def __init__(self, mix: ObjectivesConfig, seed: int, ema_decay: float, start: dict | None = None):
        torch.manual_seed(seed)
        self.model = new_model()
        if start is not None:
            self.model.load_state_dict(start)
        self.ema = copy.deepcopy(self.model).requires_grad_(False)
        self.ema_decay = ema_decay
        self.objectives = Objectives(mix, anchor=self.ema)
        # the lab's own optimizer (AdamW under MuGrokfast), as bench/kv_gap.py's continual part: sleep scales it
        self.optimizer = build_optimizer(self.model, OptimConfig(preset="adamw", lr=3e-3, weight_decay=0.01,
                                                                 beta2=0.999, warmup_steps=0, grad_clip=1.0))

    def train(self, inputs: torch.Tensor, labels: torch.Tensor):
        carry, out = self.model(self.model.initial_carry(inputs.shape[0]), inputs, labels, objectives=self.objectives)
        self.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        self.optimizer.step()
        self.average()
        assert math.isfinite(float(out.loss.detach())), "non-finite loss"
        return carry, out

    @torch.no_grad()
    def average(self) -> None:
        torch._foreach_lerp_(list(self.ema.parameters()), [p.detach() for p in self.model.parameters()],
                             1.0 - self.ema_decay)


def set_sizes(batch: int, held_out: int) -> None:
    global HELD_OUT
    kv_gap.BATCH, HELD_OUT = batch, held_out  # a worker process starts from the module's values; --smoke's are smaller


def start_model(seed: int, steps: int) -> dict:
    """Every condition's starting weights for a seed: in-context recall (fresh values) with the task loss alone."""
    torch.set_num_threads(1)
    t = Trainee(ObjectivesConfig(), seed, 0.0)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        t.train(*kv_gap.episodes(FMT, kv_gap.BATCH, g, None, [0]))
    return {k: v.clone() for k, v in t.model.state_dict().items()}


def run(mix: ObjectivesConfig, seed: int, start: dict, wake_steps: int, ema_decay: float,
        factors: tuple[int, int] = (1, 1)) -> dict:
    """One condition and seed from the seed's start: five KV-Gap cycles, each factors[0] x wake_steps wake steps
    with the mix on batches factors[1] x the batch, and wake_steps replay-sleep steps; then the retention (closed
    book, every cycle's facts) and the held-out exact (in-context recall with the memory on)."""
    wake_factor, batch = factors[0], factors[1] * kv_gap.BATCH
    torch.set_num_threads(1)
    t0 = time.time()
    t = Trainee(mix, seed, ema_decay, start)
    sleep = SleepStage(SleepConfig(mode="replay", buffer_size=4096, prune_age=10**9, probe_size=2 * kv_gap.BATCH),
                       t.model, t.optimizer, kv_gap.SEQ, kv_gap.BATCH, seed + 3, True, MicroBatches(kv_gap.BATCH),
                       Precision("float32", torch.device("cpu")), Faults({}), on_back_off=lambda change: None)
    tables = torch.randint(FMT.n_values, (kv_gap.N_CYCLES, kv_gap.N_KEYS),
                           generator=torch.Generator().manual_seed(seed + 2))
    g = torch.Generator().manual_seed(seed + 1)
    R, step, terms = [], 0, {}
    for cycle in range(kv_gap.N_CYCLES):
        for _ in range(wake_factor * wake_steps):
            carry, out = t.train(*kv_gap.episodes(FMT, batch, g, tables, [cycle]))
            sleep.observe(kv_gap.fresh_rows(carry, kv_gap.BATCH), out.logits[:kv_gap.BATCH], step)
            terms = {k[4:]: v for k, v in out.metrics.items() if k.startswith("obj_")}
            step += 1
        sleep.begin(step)
        for _ in range(wake_steps):
            step += 1
            assert sleep.step(step).finite, "non-finite consolidation loss"
            t.average()
        sleep.end(step)
        R.append(kv_gap.closed_book_row(t.model, FMT, tables))
    s = kv_gap.summarise(R)
    return {"exact": exact(t.model, *held_out_set(seed)), "retention": s["acc"], "forgetting": s["forgetting"],
            "terms": terms, "seconds": time.time() - t0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 seeds at shorter budgets")
    parser.add_argument("--smoke", action="store_true", help="one seed, batches of 4, a few steps: the code path")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--start-steps", type=int, default=None,
                        help="in-context steps of the shared start, task loss alone (default 300, quick 150)")
    parser.add_argument("--wake-steps", type=int, default=None, help="wake (and sleep) steps a cycle (40, quick 8)")
    parser.add_argument("--ema-decay", type=float, default=0.99, help="the slow term's moving average")
    parser.add_argument("--workers", type=int, default=2, help="processes, one thread each")
    parser.add_argument("--batch", type=int, default=None, help="episodes a step (default 32, quick 16)")
    parser.add_argument("--conditions", default=None,
                        help="comma-separated subset of the conditions (default all); task_only and full_mix "
                             "always run")
    args = parser.parse_args()
    if not 1 <= args.seeds <= 100:
        parser.error("--seeds must be 1 to 100")
    if args.batch is not None and not 2 <= args.batch <= 1024:
        parser.error("--batch must be 2 to 1024")
    if not 1 <= args.workers <= 64:
        parser.error("--workers must be 1 to 64")
    if not 0 <= args.ema_decay < 1:
        parser.error("--ema-decay must be in [0, 1)")
    for name in ("start_steps", "wake_steps"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    torch.set_num_threads(1)
    args.start_steps = args.start_steps or (3 if args.smoke else 150 if args.quick else 300)
    args.wake_steps = args.wake_steps or (2 if args.smoke else 8 if args.quick else 40)
    set_sizes(args.batch or (4 if args.smoke else 16 if args.quick else 32), 32 if args.smoke else HELD_OUT)
    named = conditions()
    if args.conditions is not None:
        asked = [c.strip() for c in args.conditions.split(",") if c.strip()]
        unknown = [c for c in asked if c not in named]
        if unknown:
            parser.error(f"--conditions: unknown {', '.join(unknown)}; the conditions are {', '.join(named)}")
        named = {c: mix for c, mix in named.items() if c in {"task_only", "full_mix", *asked}}
    if args.smoke:  # every term's path, in seconds
        named = {c: named[c] for c in ("task_only", "full_mix", "minus_reconstruction")}
    seeds = 1 if args.smoke else args.seeds
    results: dict[str, list[dict]] = {c: [] for c in named}
    with ProcessPoolExecutor(args.workers, initializer=set_sizes, initargs=(kv_gap.BATCH, HELD_OUT)) as pool:
        starts = list(pool.map(start_model, range(seeds), [args.start_steps] * seeds))
        jobs = {(c, seed): pool.submit(run, mix, seed, starts[seed], args.wake_steps, args.ema_decay,
                                       EQUAL_COMPUTE.get(c, (1, 1)))
                for c, mix in named.items() for seed in range(seeds)}
        for (c, seed), job in jobs.items():
            r = job.result()
            results[c].append(r)
            print(f"{c:>22} seed {seed}: held-out exact {r['exact']:.3f}  retention {r['retention']:.3f}  "
                  f"forgetting {r['forgetting']:.3f}  last terms "
                  + " ".join(f"{k} {v:.3f}" for k, v in r["terms"].items()) + f"  ({r['seconds']:.0f} s)",
                  flush=True)
    seconds = {c: max(r["seconds"] for r in rs) for c, rs in results.items()}

    def summary(c: str, key: str) -> dict:
        return over_seeds([r[key] for r in results[c]])

    def paired(a: str, b: str, key: str) -> dict:
        """a - b, paired by seed."""
        return over_seeds([x[key] - y[key] for x, y in zip(results[a], results[b])])

    def ratio(c: str, key: str) -> float | None:
        base = summary("task_only", key)["mean"]
        return None if not base else round(summary(c, key)["mean"] / base, 3)

    print("\ncondition: held-out exact | retention after 5 cycles, mean [95% t interval over seeds], "
          "x the task loss alone's")
    for c in named:
        print(f"{c:>22}: {shown(summary(c, 'exact'))} (x{ratio(c, 'exact')}) | "
              f"{shown(summary(c, 'retention'))} (x{ratio(c, 'retention')})")
    print("full mix minus task only: exact " + shown(paired("full_mix", "task_only", "exact"))
          + ", retention " + shown(paired("full_mix", "task_only", "retention")))
    for c, (steps, batch) in EQUAL_COMPUTE.items():
        if c in named:
            print(f"full mix minus {c} ({steps}x the wake steps, {batch}x the batch): exact "
                  + shown(paired("full_mix", c, "exact")) + ", retention " + shown(paired("full_mix", c, "retention")))
    effects = {}
    for c in named:
        if c.startswith("minus_"):  # what the term adds to the mix: full mix minus the mix without it
            effects[c[6:]] = {key: paired("full_mix", c, key) for key in ("exact", "retention")}
            print(f"  {c[6:]:>15} adds: exact {shown(effects[c[6:]]['exact'])}, "
                  f"retention {shown(effects[c[6:]]['retention'])}")
    figures = {}
    for c in named:
        figures[f"exact_{c}"] = summary(c, "exact")
        figures[f"retention_{c}"] = summary(c, "retention")
        figures[f"forgetting_{c}"] = summary(c, "forgetting")
    figures.update({
        "exact_ratio_full_vs_task": ratio("full_mix", "exact"),
        "retention_ratio_full_vs_task": ratio("full_mix", "retention"),
        "full_minus_task": {key: paired("full_mix", "task_only", key) for key in ("exact", "retention")},
        "term_adds": effects,  # per term: full mix minus the mix without it, paired by seed
        "full_minus_equal_compute": {c: {key: paired("full_mix", c, key) for key in ("exact", "retention")}
                                     for c in EQUAL_COMPUTE if c in named},
        "equal_compute_factor": EQUAL_COMPUTE,
        "mix": dataclasses.asdict(preset_mix()),
        "seeds": seeds, "start_steps": args.start_steps, "wake_steps": args.wake_steps, "batch": kv_gap.BATCH,
        "held_out": HELD_OUT, "ema_decay": args.ema_decay, "H_cycles": 2, "threads": 1, "workers": args.workers,
        "seconds_per_condition_seed": {c: round(s, 1) for c, s in seconds.items()},
        "smoke": args.smoke, "quick": args.quick,
    })
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
