"""KV-Gap AB-AC: in-context recall beyond the attention window, and sleep against interference.

Episode (one sequence): N_FACTS facts of the form `tag <fact>`, a gap of filler 2 to 6 attention windows long,
then one query per stated key (in another order than the facts) whose label is the key's value. Two parts,
each with its own episode format and its own model (`Format` below):

1. In-context recall (RECALL format): every episode draws fresh values, so only the context holds the answer.
   Memory on (Titans-MAG) against attention alone (same model, model.memory = "none"): accuracy on held-out
   episodes. Facts `tag key:value _`, queries `tag ? key` labelled at the key; 16 values; memory chunk 16.
2. Continual AB-AC (CONTINUAL format): five wake cycles; cycle i has its own tag and re-draws the values of
   the same keys. Each wake is followed by a sleep of equal budget (engine/sleep.py, one mode per condition).
   After cycle i and its sleep, R[i][j] is the closed-book accuracy on cycle j's facts: queries only, no
   facts in context, the memory-free path, so only the slow weights can answer. `joint` trains on all cycles
   at once for the same total budget (the ceiling).
   A sleep arm gets wake_steps extra optimizer steps per cycle on replayed old data that `no-sleep` never sees,
   so two controls stand beside the sleep modes, built with the same machinery (one SleepStage per run):
   - `no-sleep-extra-steps`: no sleep, and the sleep's steps spent as more wake steps (2 x wake_steps a cycle);
   - `interleaved-replay`: no sleep phase; every wake batch carries as many replayed samples as fresh ones,
     drawn from the same episodic buffer by the same replay Consolidator, so a cycle replays exactly the
     wake_steps x BATCH samples a replay sleep does (a draw the still-empty buffer cannot serve is made up at
     the next step). Facts `tag key value`, queries `tag key ?` labelled at
   `?`; 8 values; memory chunk 8; memory_theta_max 0.5. Its starting model is its own: the same network
   trained on in-context recall in this format (--start-steps), so the wake cycles begin from a model that
   reads its context.

Why two formats:
- Part 1 must defeat attention, so a fact is one token naming key and value together (`key:value`,
  N_KEYS x n_values of them; its embedding learns which key and which value it names). With a separate key
  token next to a value token, writing the pair into the memory first needs attention to copy the neighbour
  into the value's position, which within a few hundred steps the model does not find: it settles for "which
  values were stated" (recall ~ 1 / N_FACTS, 0.33-0.42 measured). 16 values put chance at 1/16 = 6%, below
  the <= 10% the attention-only figure is held to (8 values put it at 12.5%, which then measured nothing).
  Chunk 16: the facts (tokens 0-11) sit in the first chunk and every query (from token 20 on) in a later
  one, so retrieval, which reads the state of the last complete chunk, sees all facts (chunks of 8 learnt
  recall later: 0.66 against 0.98 at 350 steps).
- Part 2 measures consolidation into the slow weights (closed book, memory-free path), not in-context
  recall, and the separate key/value layout with 8 values and chunk 8 was measured to work there (replay
  0.95 against no sleep 0.40 at --quick). The fused layout with 16 values and chunk 16 (its wake episodes
  asking about any 4 of the 8 keys) gave replay 0.375 against no sleep 0.325. Part 2's memory_theta_max is
  0.5. Before the memory clipped its per-token gradients (model.memory_max_grad_norm, 30), the fast weights
  grew without bound (at theta_max 1.0 in the second sleep of seed 0; at 0.5 in the wake after the first
  sleep of seed 1: state entries 4 -> 42 -> inf) because the second memory layer's input grows with the
  first layer's weights.
- Reach (both): one layer, one L and one H pass, so attention's receptive field is 2 passes x (WINDOW - 1)
  = 6 tokens; the nearest fact is 12 tokens before the first query, out of reach. Only the neural memory,
  which the passes share, can carry a fact across the gap.

After each cycle the bench also scores the memory's own associative loss on 2 x BATCH = 64 episodes of that
cycle (raw, and relative to the values' energy) and reports whether it rose over the five cycles; sleep's
retention probe holds as many buffer samples.

Every accuracy is reported as its mean over seeds with a Student t interval (bench/stats.py), and replay's
paired (same seed) differences from no-sleep and from both controls likewise.

Prints one line per condition and seed, then the figures as one JSON object on the last line.
Usage: python bench/kv_gap.py [--quick | --smoke] [--seeds N] [--part recall|continual|all] [--continual-theta-max X]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, for `engine` and `bench`

import torch  # noqa: E402

from bench.stats import over_seeds, shown  # noqa: E402
from engine.accumulate import MicroBatches  # noqa: E402
from engine.config import ModelConfig, OptimConfig, SleepConfig  # noqa: E402
from engine.faults import Faults  # noqa: E402
from engine.model.titans import MemoryState, NeuralMemory  # noqa: E402
from engine.model.trm import PAD, TinyRecursiveModel  # noqa: E402
from engine.optim import build_optimizer  # noqa: E402
from engine.precision import Precision  # noqa: E402
from engine.stages.sleep import SleepStage  # noqa: E402

QUERY, FILL = 1, 2
N_CYCLES, N_KEYS, N_FACTS = 5, 8, 4
TAG0 = 3
KEY0 = TAG0 + N_CYCLES
VALUE0 = KEY0 + N_KEYS
WINDOW = 4
SEQ = 3 * N_FACTS + 6 * WINDOW + 3 * N_FACTS  # longest gap
BATCH = 32
SLEEP_MODES = ["replay", "replay-surprise", "distill", "dream"]
CONTROLS = ["no-sleep-extra-steps", "interleaved-replay"]  # what a sleep arm's extra steps would give without sleep
CONDITIONS = ["no-sleep", *CONTROLS, *SLEEP_MODES, "joint"]


@dataclass(frozen=True)
class Format:
    """One episode layout and its model's memory settings; token ids: QUERY, FILL, tags, keys, values, then
    (fused only) the fact tokens."""
    n_values: int
    fused: bool  # a fact is one `key:value` token (`tag key:value _`, query `tag ? key`); else `tag key value`
    memory_chunk: int
    memory_theta_max: float = 1.0  # the neural memory's learning-rate cap

    @property
    def fact0(self) -> int:  # fused fact token for (key, value): fact0 + key * n_values + value
        return VALUE0 + self.n_values

    @property
    def vocab(self) -> int:
        return self.fact0 + (N_KEYS * self.n_values if self.fused else 0)

    def fact(self, cycle: int, key: int, value: int) -> list[int]:
        if self.fused:
            return [TAG0 + cycle, self.fact0 + key * self.n_values + value, FILL]
        return [TAG0 + cycle, KEY0 + key, VALUE0 + value]

    def query(self, cycle: int, key: int) -> list[int]:
        """Three tokens; the label sits on the last one."""
        return [TAG0 + cycle, QUERY, KEY0 + key] if self.fused else [TAG0 + cycle, KEY0 + key, QUERY]


# part 1 must defeat attention, so a fact is one token and chance is 1/16; part 2 measures consolidation into
# the slow weights, where the separate key/value layout with 8 values was measured to work (module docstring)
RECALL = Format(n_values=16, fused=True, memory_chunk=16)
CONTINUAL = Format(n_values=8, fused=False, memory_chunk=8, memory_theta_max=0.5)


def model_config(memory: str, fmt: Format) -> ModelConfig:  # memory_max_grad_norm: the default (30)
    # one pass of L and one of H per step: attention reaches < 2 windows, so a gap of >= 2 windows is out of
    # its reach and only the neural memory (which the passes share) can carry a fact across it
    return ModelConfig(d_model=64, n_layers=1, n_heads=2, H_cycles=1, L_cycles=1, halt_max_steps=1,
                       memory=memory, window=WINDOW, d_mem=32, memory_chunk=fmt.memory_chunk, persistent_tokens=2,
                       memory_theta_max=fmt.memory_theta_max)


def new_model(memory: str, fmt: Format) -> TinyRecursiveModel:
    return TinyRecursiveModel(model_config(memory, fmt), fmt.vocab, SEQ)


def episodes(fmt: Format, n: int, g: torch.Generator, tables: torch.Tensor | None, cycles: list[int]):
    """n episodes. tables (N_CYCLES, N_KEYS) of value ids, or None for fresh random values per episode."""
    inputs = torch.full((n, SEQ), FILL, dtype=torch.long)
    labels = torch.full((n, SEQ), PAD, dtype=torch.long)
    for b in range(n):
        cycle = cycles[int(torch.randint(len(cycles), (1,), generator=g))]
        keys = torch.randperm(N_KEYS, generator=g)[:N_FACTS]
        values = (tables[cycle, keys] if tables is not None
                  else torch.randint(fmt.n_values, (N_FACTS,), generator=g))
        gap = WINDOW * int(torch.randint(2, 7, (1,), generator=g))
        for f, (k, v) in enumerate(zip(keys.tolist(), values.tolist())):
            inputs[b, 3 * f: 3 * f + 3] = torch.tensor(fmt.fact(cycle, k, v))
        order = torch.randperm(N_FACTS, generator=g).tolist()  # queries in another order than the facts
        start = 3 * N_FACTS + gap
        for q, f in enumerate(order):
            at = start + 3 * q
            inputs[b, at: at + 3] = torch.tensor(fmt.query(cycle, int(keys[f])))
            labels[b, at + 2] = VALUE0 + int(values[f])
    return inputs, labels


def closed_book(fmt: Format, tables: torch.Tensor, cycle: int):
    """Queries for all keys of one cycle and no facts: (1, SEQ) inputs and labels."""
    inputs = torch.full((1, SEQ), FILL, dtype=torch.long)
    labels = torch.full((1, SEQ), PAD, dtype=torch.long)
    start = SEQ - 3 * N_KEYS
    for k in range(N_KEYS):
        at = start + 3 * k
        inputs[0, at: at + 3] = torch.tensor(fmt.query(cycle, k))
        labels[0, at + 2] = VALUE0 + int(tables[cycle, k])
    return inputs, labels


@torch.no_grad()
def accuracy(model: TinyRecursiveModel, inputs, labels, memory_free: bool) -> float:
    model.eval()
    logits, _ = model.predict_logits(inputs, memory_free=memory_free)
    model.train()
    scored = labels != PAD
    return float(((logits.argmax(-1) == labels) & scored).sum() / scored.sum())


@torch.no_grad()
def closed_book_row(model: TinyRecursiveModel, fmt: Format, tables: torch.Tensor) -> list[float]:
    """A row of R: the closed-book accuracy (memory-free path) on each cycle's facts, all cycles in one batch."""
    inputs, labels = (torch.cat(parts) for parts in zip(*(closed_book(fmt, tables, j) for j in range(N_CYCLES))))
    model.eval()
    logits, _ = model.predict_logits(inputs, memory_free=True)
    model.train()
    scored = labels != PAD
    return (((logits.argmax(-1) == labels) & scored).sum(1) / scored.sum(1)).tolist()


@torch.no_grad()
def inner_memory_loss(model: TinyRecursiveModel, inputs) -> dict:
    """The neural memory's own associative loss mean_t ||M(k_t) - v_t||^2 after it has read `inputs`: every
    memory call's keys and values scored against the state that call ends with (what the fast weights hold).
    Returns the loss, `relative` = loss / mean_t ||v_t||^2 (the share of the values' energy the memory misses,
    which does not move when outer training rescales the values), `before` = the same loss against the empty
    memory (what reading the episode gained), the values' energy, the mean gates (theta, eta, alpha), the fast
    weights' norm |M - M_0| and the momentum's norm |S| (the surprise carried), all means over memory calls."""
    rows: list[dict] = []

    def score(module: NeuralMemory, args, output) -> None:
        x, state = args[0], output[1]
        _, keys, values = module.project(x)
        empty = module.init_state(x.shape[0], x.device, x.dtype)
        B, T, C = x.shape[0], x.shape[1], module.chunk_size
        theta, eta, alpha = (g.mean() for g in module.gates(x[:, : T // C * C].reshape(B, T // C, C, -1).mean(2)))
        momentum = MemoryState({n: t for n, t in state.items() if n.startswith("S")})
        rows.append({"loss": float((module.recall(state, keys) - values).pow(2).sum(-1).mean()),
                     "before": float((module.recall(empty, keys) - values).pow(2).sum(-1).mean()),
                     "energy": float(values.pow(2).sum(-1).mean()), "theta": float(theta), "eta": float(eta),
                     "alpha": float(alpha), "fast_norm": float(state.change_norm().mean()),
                     "momentum_norm": float(torch.stack([t.pow(2).flatten(1).sum(1) for t in momentum.values()])
                                            .sum(0).sqrt().mean())})

    handles = [m.register_forward_hook(score) for m in model.modules() if isinstance(m, NeuralMemory)]
    try:
        model.eval()
        model.predict_logits(inputs)
    finally:
        model.train()
        for handle in handles:
            handle.remove()
    figures = {key: sum(r[key] for r in rows) / len(rows) for key in rows[0]}
    figures["relative"] = figures["loss"] / figures["energy"]
    figures["relative_before"] = figures["before"] / figures["energy"]
    return figures


def train_step(model, optimizer, inputs, labels) -> tuple[float, object, object]:
    carry, out = model(model.initial_carry(inputs.shape[0]), inputs, labels)
    optimizer.zero_grad(set_to_none=True)
    out.loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    return float(out.loss.detach()), carry, out


def in_context_recall(fmt: Format, memory: str, seed: int, steps: int) -> tuple[float, TinyRecursiveModel]:
    torch.manual_seed(seed)
    model = new_model(memory, fmt)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        loss, _, _ = train_step(model, optimizer, *episodes(fmt, BATCH, g, None, [0]))
        assert math.isfinite(loss)
    test = episodes(fmt, 256, torch.Generator().manual_seed(10_000 + seed), None, [0])
    return accuracy(model, *test, memory_free=False), model


def fresh_rows(carry, n: int):
    """The carry of a batch's first n rows (its fresh samples): what SleepStage.observe reads."""
    rows = {name: getattr(carry, name)[:n] for name in ("z_H", "z_L", "steps", "halted", "inputs", "labels")}
    return dataclasses.replace(carry, **rows, memory=None)


def continual(condition: str, seed: int, start: dict, wake_steps: int):
    """Five wake cycles in the CONTINUAL format, each followed by an equal sleep (sleep modes), by as many more wake
    steps (no-sleep-extra-steps) or by nothing (no-sleep, interleaved-replay, whose wake batches carry replayed
    samples); returns R (N_CYCLES x N_CYCLES), the sleeps' consolidation losses and the inner memory loss after
    each cycle (on 2 x BATCH episodes of that cycle, the same ones for every condition of a seed)."""
    fmt = CONTINUAL
    torch.manual_seed(seed)
    model = new_model("titans-mag", fmt)
    model.load_state_dict(start)
    # the lab's own optimizer (AdamW under MuGrokfast): sleep scales its learning rate through it
    optimizer = build_optimizer(model, OptimConfig(preset="adamw", lr=3e-3, weight_decay=0.01, beta2=0.999,
                                                   warmup_steps=0, grad_clip=1.0))
    g = torch.Generator().manual_seed(seed + 1)
    tables = torch.randint(fmt.n_values, (N_CYCLES, N_KEYS), generator=torch.Generator().manual_seed(seed + 2))
    mode = condition if condition in SLEEP_MODES else "replay"
    sleep_cfg = SleepConfig(mode=mode, buffer_size=4096, prune_age=10**9, probe_size=2 * BATCH)
    sleep = SleepStage(sleep_cfg, model, optimizer, SEQ, BATCH, seed + 3, True, MicroBatches(BATCH),
                       Precision("float32", torch.device("cpu")), Faults({}), on_back_off=lambda change: None)
    R, losses, inner = [], [], []
    step = 0
    replay_due = 0  # interleaved-replay: replayed samples owed to the wake batches so far
    for cycle in range(N_CYCLES):
        cycles = list(range(N_CYCLES)) if condition == "joint" else [cycle]
        budget = 2 * wake_steps if condition in ("joint", "no-sleep-extra-steps") else wake_steps
        for _ in range(budget):
            inputs, labels = episodes(fmt, BATCH, g, tables, cycles)
            if condition == "interleaved-replay":
                replay_due += BATCH  # as many as a replay sleep step draws
                while replay_due >= BATCH and len(sleep.buffer):
                    old = sleep.consolidator.next_batch(sleep.buffer, sleep.generator, inputs.device)
                    inputs, labels = torch.cat([inputs, old.inputs]), torch.cat([labels, old.labels])
                    replay_due -= BATCH
            loss, carry, out = train_step(model, optimizer, inputs, labels)
            assert math.isfinite(loss), f"{condition}: non-finite loss"
            sleep.observe(fresh_rows(carry, BATCH), out.logits[:BATCH], step)  # replayed samples are in already
            step += 1
        if condition in SLEEP_MODES:
            sleep.begin(step)
            for _ in range(wake_steps):
                step += 1
                assert sleep.step(step).finite, f"{condition}: non-finite consolidation loss"
            [(_, figures)] = sleep.end(step)
            losses.append(figures["consolidation_loss"])
        R.append(closed_book_row(model, fmt, tables))
        probe, _ = episodes(fmt, 2 * BATCH, torch.Generator().manual_seed(20_000 + 10 * seed + cycle), tables, [cycle])
        inner.append(inner_memory_loss(model, probe))
        assert all(map(math.isfinite, inner[-1].values())), f"{condition}: non-finite inner memory loss"
    return R, losses, inner


def series(per_cycle: list[dict], key: str, digits: int = 2) -> str:
    return " ".join(f"{figures[key]:.{digits}f}" for figures in per_cycle)


def summarise(R: list[list[float]]) -> dict:
    T = len(R)
    final = sum(R[-1]) / T
    earlier = range(T - 1)
    forgetting = sum(max(R[i][j] for i in range(j, T - 1)) - R[-1][j] for j in earlier) / (T - 1)
    backward = sum(R[-1][j] - R[j][j] for j in earlier) / (T - 1)
    return {"acc": final, "forgetting": forgetting, "bwt": backward}


def main() -> None:
    global CONTINUAL, BATCH
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="two seeds per condition")
    parser.add_argument("--smoke", action="store_true",
                        help="one seed, batches of 4 and a few steps of each part: checks the code path")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--part", choices=["recall", "continual", "all"], default="all")
    parser.add_argument("--recall-steps", type=int, default=None, help="part 1 training steps (default 350)")
    parser.add_argument("--start-steps", type=int, default=None,
                        help="in-context training of part 2's starting model, in its own format (default 300)")
    parser.add_argument("--wake-steps", type=int, default=None, help="wake steps per cycle (default 40)")
    parser.add_argument("--continual-theta-max", type=float, default=CONTINUAL.memory_theta_max,
                        help="the continual part's memory_theta_max (the inner learning-rate cap)")
    parser.add_argument("--first-seed", type=int, default=0,
                        help="seeds run from this one on, so a run can be split across processes (default 0)")
    parser.add_argument("--conditions", default=",".join(CONDITIONS),
                        help="the continual part's conditions to run, comma-separated (default all)")
    args = parser.parse_args()
    conditions = args.conditions.split(",")
    if not set(conditions) <= set(CONDITIONS):
        parser.error(f"--conditions takes a comma-separated subset of {', '.join(CONDITIONS)}; "
                     f"got {args.conditions!r}")
    if not 0 <= args.first_seed <= 10**6:
        parser.error(f"--first-seed must be a whole number from 0 to 1000000; got {args.first_seed}")
    if not 0 < args.continual_theta_max <= 2:
        parser.error("--continual-theta-max must be in (0, 2]")
    CONTINUAL = dataclasses.replace(CONTINUAL, memory_theta_max=args.continual_theta_max)
    torch.set_num_threads(1)
    args.recall_steps = args.recall_steps or (3 if args.smoke else 350)
    args.start_steps = args.start_steps or (3 if args.smoke else 300)
    args.wake_steps = args.wake_steps or (2 if args.smoke else 40)
    if args.smoke:
        BATCH = 4  # every condition's path in seconds
    seeds = 1 if args.smoke else 2 if args.quick else args.seeds
    # replay-surprise against replay: more seeds, when both run
    both = {"replay", "replay-surprise"} <= set(conditions)
    extra_surprise_seeds = 2 * seeds if both and not (args.quick or args.smoke) else seeds
    first = args.first_seed
    seconds: dict[str, list[float]] = {c: [] for c in ["recall-memory", "recall-attention", "continual-start"]
                                       + CONDITIONS}

    recall_memory, recall_attention = [], []
    if args.part in ("recall", "all"):
        for seed in range(first, first + seeds):
            t0 = time.time()
            acc_mem, _ = in_context_recall(RECALL, "titans-mag", seed, args.recall_steps)
            t1 = time.time()
            acc_attn, _ = in_context_recall(RECALL, "none", seed, args.recall_steps)
            seconds["recall-memory"].append(t1 - t0)
            seconds["recall-attention"].append(time.time() - t1)
            recall_memory.append(acc_mem)
            recall_attention.append(acc_attn)
            print(f"recall seed {seed}: memory {acc_mem:.3f} ({t1 - t0:.0f} s)  attention only {acc_attn:.3f} "
                  f"({time.time() - t1:.0f} s)", flush=True)

    starts: dict[int, dict] = {}

    def start_for(seed: int) -> dict:
        """Part 2's starting weights for a seed: the CONTINUAL-format model after in-context recall training."""
        if seed not in starts:
            t0 = time.time()
            acc, model = in_context_recall(CONTINUAL, "titans-mag", seed, args.start_steps)
            seconds["continual-start"].append(time.time() - t0)
            starts[seed] = {k: v.clone() for k, v in model.state_dict().items()}
            print(f"continual start seed {seed}: in-context recall {acc:.3f} ({time.time() - t0:.0f} s)", flush=True)
        return starts[seed]

    results: dict[str, list[dict]] = {c: [] for c in CONDITIONS}
    matrices: dict[str, list] = {c: [] for c in CONDITIONS}
    inner_losses: dict[str, list] = {c: [] for c in CONDITIONS}
    for condition in [c for c in CONDITIONS if c in conditions] if args.part in ("continual", "all") else []:
        n = extra_surprise_seeds if condition in ("replay", "replay-surprise") else seeds
        for seed in range(first, first + n):
            start = start_for(seed)
            t0 = time.time()
            R, losses, inner = continual(condition, seed, start, args.wake_steps)
            inner_losses[condition].append(inner)
            seconds[condition].append(time.time() - t0)
            s = summarise(R)
            results[condition].append(s)
            matrices[condition].append(R)
            print(f"{condition:>15} seed {seed}: final acc {s['acc']:.3f}  forgetting {s['forgetting']:.3f}  "
                  f"bwt {s['bwt']:.3f}  consolidation loss {losses[-1] if losses else float('nan'):.4f}  "
                  f"inner loss by cycle {series(inner, 'loss')} (relative {series(inner, 'relative', 3)}; "
                  f"empty memory {series(inner, 'relative_before', 3)}; theta {series(inner, 'theta', 3)}; "
                  f"|M - M_0| {series(inner, 'fast_norm')}; |S| {series(inner, 'momentum_norm')})  "
                  f"({seconds[condition][-1]:.0f} s)", flush=True)

    def acc(c):
        return over_seeds([r["acc"] for r in results[c]])

    def minus(a: str, b: str) -> dict:
        """a - b in final accuracy, paired by seed over the seeds both ran."""
        return over_seeds([x["acc"] - y["acc"] for x, y in zip(results[a], results[b])])

    # the memory's figures per cycle (inner loss raw and relative to the values' energy, gates, norms), averaged
    # over seeds; "rising" = the last cycle's loss above the first's by more than 10%
    inner_mean = {c: {key: [sum(run[i][key] for run in v) / len(v) for i in range(N_CYCLES)] for key in v[0][0]}
                  for c, v in inner_losses.items() if v}
    gain = minus("replay-surprise", "replay")
    if results["no-sleep"]:
        print("\nfinal closed-book accuracy, mean [95% t interval over seeds]:")
        for c in CONDITIONS:
            print(f"{c:>21}: {shown(acc(c))}")
        print("replay minus " + ", ".join(f"{c}: {shown(minus('replay', c))}" for c in ["no-sleep", *CONTROLS]))
    figures = {
        "recall_memory": over_seeds(recall_memory),
        "recall_attention_only": over_seeds(recall_attention),
        "acc_no_sleep": acc("no-sleep"), "acc_no_sleep_extra_steps": acc("no-sleep-extra-steps"),
        "acc_interleaved_replay": acc("interleaved-replay"),
        "acc_replay": acc("replay"), "acc_replay_surprise": acc("replay-surprise"),
        "acc_distill": acc("distill"), "acc_dream": acc("dream"), "acc_joint": acc("joint"),
        "forgetting": {c: over_seeds([r["forgetting"] for r in results[c]]) for c in CONDITIONS},
        "bwt": {c: over_seeds([r["bwt"] for r in results[c]]) for c in CONDITIONS},
        "surprise_gain": gain["mean"], "surprise_gain_ci_low": gain["ci_low"], "surprise_gain_ci_high": gain["ci_high"],
        "surprise_helps": bool(gain["ci_low"] is not None and gain["mean"] >= 0.03 and gain["ci_low"] > 0),
        "replay_minus": {c.replace("-", "_"): minus("replay", c) for c in ["no-sleep", *CONTROLS]},
        "inner_loss_by_cycle": {c: [round(x, 3) for x in v["loss"]] for c, v in inner_mean.items()},
        "inner_loss_relative_by_cycle": {c: [round(x, 4) for x in v["relative"]] for c, v in inner_mean.items()},
        "inner_loss_rising": sorted(c for c, v in inner_mean.items() if v["loss"][-1] > 1.1 * v["loss"][0]),
        "inner_loss_relative_rising": sorted(c for c, v in inner_mean.items()
                                             if v["relative"][-1] > 1.1 * v["relative"][0]),
        "memory_by_cycle": {c: {key: [round(x, 4) for x in xs] for key, xs in v.items()}
                            for c, v in inner_mean.items()},
        "seconds_per_condition_seed": {c: max(v) for c, v in seconds.items() if v},
        "R": {c: [[[round(x, 3) for x in row] for row in R] for R in matrices[c]] for c in CONDITIONS},
        "seeds": seeds, "wake_steps": args.wake_steps, "batch": BATCH,
        "continual_theta_max": CONTINUAL.memory_theta_max,
        "smoke": args.smoke,
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
