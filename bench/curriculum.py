"""Does the curriculum shrink, and does it pay? Three runs of the real trainer on CPU:

1. an arithmetic level of 2,000 questions (`--quick`: 200) trained with the curriculum queue
   until fewer than 2.5% remain (or a step/minute cap): steps and minutes to get there;
2. the same model trained for the same number of steps on uniform samples of the same task and
   difficulty: held-out exact accuracy of both on the same held-out set of distinct questions, and
   their ratio and paired difference. The test split of difficulty-1 arithmetic holds only 16
   distinct questions (its first 1,000 samples repeat them), so each figure carries a bootstrap
   interval over the questions, and a gap inside it is noise;
3. tool use: a model trained on the program task with the curriculum until its level is mastered
   or a step cap (300, `--quick`; 1,500; caps in steps keep the figure free of the machine's load),
   then asked distinct held-out programs: the share that pass all their test cases at the first
   attempt, and the share that pass within up to 4 attempts, the first unhinted and the next ones
   with a quarter, a half and three quarters of the reference program revealed (best of 4 with
   hints: an upper bound that leans on the answer, not a pass rate).

    .venv/bin/python bench/curriculum.py [--quick | --smoke] [--threads 1]

Its last line is one JSON object (remaining_fraction, steps_to_threshold, minutes_to_threshold,
acc_curriculum, acc_uniform, acc_difference, tool_pass_first, tool_pass_best_of_4_with_hints, ...);
each accuracy is {"mean", "ci_low", "ci_high", "n", "over": "items"} (bench/stats.py). A level that
did not reach the threshold within its caps reports steps_to_threshold = null, never a made-up figure.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from bench.stats import over_items, shown  # noqa: E402
from engine import config  # noqa: E402
from engine.evaluate import grade  # noqa: E402
from engine.tasks.base import batch  # noqa: E402
from engine.tasks.program import ProgramTask  # noqa: E402
from engine.trainer import Trainer  # noqa: E402

# small and shallow on purpose: the bench measures the queue, not the reasoner, on 2 shared cores
BASE = [
    "model.d_model=64", "model.n_layers=1", "model.n_heads=4", "model.H_cycles=1", "model.L_cycles=2",
    "model.halt_max_steps=1", "train.ema_decay=0.9", "optim.preset=adamw", "optim.lr=0.003",
    "optim.warmup_steps=20", "train.device=cpu", "eval.every=0", "checkpoint.every=0",
    "log.print_seconds=1000", "log.telemetry_seconds=1000",
]
THRESHOLD = 0.025  # the level counts as shrunk at <= 2.5% remaining (the queue itself ends below it)


def make_config(overrides: list[str]) -> config.RunConfig:
    return config.from_dict({}, "curriculum-bench", BASE + overrides)


def train(cfg: config.RunConfig, stop_at: float | None = None) -> tuple[Trainer, float, list[dict]]:
    """Run the trainer in a throwaway run folder until its end, or until the curriculum's remaining
    share is <= `stop_at`: (trainer, minutes, curriculum events, each with its step and minute)."""
    events: list[dict] = []
    t0 = time.time()

    def on_event(e: dict) -> None:
        if e["event"] != "curriculum":
            return
        events.append({**e["data"], "step": e["step"], "minute": (time.time() - t0) / 60})
        if stop_at is not None and e["data"]["remaining"] <= stop_at * e["data"]["size"]:
            trainer.stop_reason = "stopped"  # taken at the next step boundary, as a `stop` command is

    with tempfile.TemporaryDirectory() as d:
        trainer = Trainer(d, cfg, output="quiet", emit=on_event)
        t0 = time.time()
        trainer.run()
        minutes = (time.time() - t0) / 60
    return trainer, minutes, events


def distinct_test_indices(task, n: int) -> list[int]:
    """Indices of the first n distinct questions of the test split, among its first 10 n samples (fewer when the
    split holds fewer)."""
    seen, indices = set(), []
    for i in range(10 * n):
        prompt = task.problem("test", i).prompt
        if prompt not in seen:
            seen.add(prompt)
            indices.append(i)
            if len(indices) == n:
                break
    return indices


@torch.no_grad()
def exact_marks(trainer: Trainer, indices: list[int]) -> list[bool]:
    """Each held-out question answered exactly (graded by the task, as engine.evaluate grades)."""
    model, task = trainer.model.eval(), trainer.task
    marks: list[bool] = []
    for start in range(0, len(indices), 256):
        chunk = indices[start:start + 256]
        inputs, labels = batch(task, "test", chunk)
        preds, _ = model.predict(inputs.to(trainer.device))
        marks += grade(task, "test", chunk, preds.cpu(), labels).tolist()
    return marks


@torch.no_grad()
def tool_use(trainer: Trainer, n: int) -> tuple[list[bool], list[bool], int]:
    """Distinct held-out programs: (passed all test cases at the first, unhinted attempt; passed within up to 4
    attempts, the later ones hinted; how many attempts the last hint level makes)."""
    task = ProgramTask(difficulty=1, seed=trainer.cfg.task.seed)
    model = trainer.model.eval()
    first, best, attempts = [], [], 0
    for i in distinct_test_indices(task, n):
        problem = task.problem("test", i)
        ok = False
        attempts = max(attempts, task.max_hint(problem) + 1)
        for hint in range(task.max_hint(problem) + 1):  # hint 0 is the first attempt
            sample = task.encode(problem, hint)
            preds, _ = model.predict(torch.tensor([sample.inputs], dtype=torch.long))
            ok = task.grade(problem, preds[0].tolist(), sample)
            if ok:
                break
        first.append(ok and hint == 0)
        best.append(ok)
    return first, best, attempts


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="200 questions and short caps (~5 min)")
    ap.add_argument("--smoke", action="store_true", help="20 questions and caps of seconds: checks the code path")
    ap.add_argument("--questions", type=int, default=None)
    ap.add_argument("--max-minutes", type=float, default=None, help="cap of the curriculum run")
    ap.add_argument("--tool-steps", type=int, default=None, help="steps of the tool-use run (its figure)")
    ap.add_argument("--tool-minutes", type=float, default=None, help="safety cap of the tool-use run")
    ap.add_argument("--n-eval", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args()
    questions = args.questions or (20 if args.smoke else 200 if args.quick else 2000)
    # the 200-question level needs ~300 steps (under a minute on 2 idle cores); 2,000 questions need a few
    # times that (the model learns by steps, the queue then drains at batch / mastery questions a step)
    max_minutes = args.max_minutes or (0.03 if args.smoke else 4.0 if args.quick else 20.0)
    # the tool-use run is capped in steps, so that its pass rates do not depend on the machine's load
    tool_steps = args.tool_steps or (5 if args.smoke else 300 if args.quick else 1500)
    tool_minutes = args.tool_minutes or (3.0 if args.quick or args.smoke else 10.0)
    n_eval = args.n_eval or (20 if args.smoke else 200 if args.quick else 1000)
    if args.smoke:
        args.batch = min(args.batch, 8)
    torch.set_num_threads(args.threads)
    common = [f"train.threads={args.threads}", f"train.batch_size={args.batch}", "train.max_steps=100000"]

    # 1. the curriculum: one level of arithmetic (difficulty 1) until the threshold or the cap
    cur_cfg = make_config(common + [
        "task.name=arithmetic", "curriculum.enabled=true", f"curriculum.questions={questions}",
        "curriculum.levels=1", f"curriculum.threshold={THRESHOLD}", "curriculum.max_epochs=100000",
        f"train.max_minutes={max_minutes}",
    ])
    cur, cur_minutes, events = train(cur_cfg, stop_at=THRESHOLD)
    last = events[-1] if events else {"remaining": questions, "size": questions}
    remaining_fraction = last["remaining"] / last["size"]
    reached = remaining_fraction <= THRESHOLD
    steps = cur.step
    for e in events[:: max(1, len(events) // 10)] + events[-1:]:
        print(f"curriculum  step {e['step']:>6}  {e['minute']:6.2f} min  remaining {e['remaining']:>5}/{e['size']}  "
              f"epoch {e['epoch']:>5}", flush=True)
    print(f"curriculum: {steps} steps, {cur_minutes:.2f} min, {remaining_fraction:.1%} remaining "
          f"({'reached' if reached else 'did NOT reach'} <= 2.5%)", flush=True)
    held_out = distinct_test_indices(cur.task, n_eval)
    marks_cur = exact_marks(cur, held_out)

    # 2. uniform sampling of the same task for the same number of steps
    uni_cfg = make_config(common[:-1] + ["task.name=arithmetic", f"train.max_steps={max(1, steps)}"])
    uni, uni_minutes, _ = train(uni_cfg)
    marks_uni = exact_marks(uni, held_out)
    acc_cur, acc_uni = over_items(marks_cur), over_items(marks_uni)
    difference = over_items([float(c) - float(u) for c, u in zip(marks_cur, marks_uni)])  # paired by question
    ratio = acc_cur["mean"] / acc_uni["mean"] if acc_uni["mean"] else None  # none when uniform got nothing right
    print(f"held-out exact at {steps} steps on {len(held_out)} distinct questions (95% bootstrap over questions): "
          f"curriculum {shown(acc_cur)}, uniform {shown(acc_uni)}, difference {shown(difference)}, ratio "
          f"{'-' if ratio is None else f'{ratio:.2f}x'}", flush=True)

    # 3. tool use: the program task with the curriculum, then held-out programs with and without hints
    tool_cfg = make_config(common[:-1] + [f"train.max_steps={tool_steps}",
        "task.name=program", "curriculum.enabled=true", f"curriculum.questions={questions}", "curriculum.levels=1",
        "curriculum.max_epochs=100000", f"train.max_minutes={tool_minutes}",
    ])
    tool, tool_min, _ = train(tool_cfg)
    first, best, attempts = tool_use(tool, min(n_eval, 100))
    pass_first, pass_best = over_items(first), over_items(best)
    print(f"tool use after {tool.step} steps ({tool_min:.2f} min), {len(first)} distinct held-out programs: "
          f"{shown(pass_first)} pass at the first attempt; {shown(pass_best)} pass within {attempts} attempts, the "
          f"later ones with 1/4, 1/2 and 3/4 of the reference program revealed (best of {attempts} with hints, "
          f"not a pass rate)", flush=True)

    print(json.dumps({
        "remaining_fraction": round(remaining_fraction, 4),
        "steps_to_threshold": steps if reached else None,
        "minutes_to_threshold": round(last["minute"], 2) if reached else None,
        "steps_run": steps, "minutes_run": round(cur_minutes, 2), "questions": questions,
        "acc_curriculum": acc_cur, "acc_uniform": acc_uni, "acc_difference": difference,
        "acc_ratio": None if ratio is None else round(ratio, 3),
        "tool_pass_first": pass_first, "tool_pass_best_of_4_with_hints": pass_best, "tool_attempts": attempts,
        "tool_steps": tool.step, "threads": args.threads, "n_eval": n_eval,
        "heldout_distinct": len(held_out), "tool_heldout_distinct": len(first), "smoke": args.smoke,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
