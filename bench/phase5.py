"""Phase 5, level by level: configs/phase5-cpu.toml's pipeline (curriculum -> bake -> self-model -> dream) run by
the real trainer on CPU, and every stage's figure, whether or not it shows a gain.

    .venv/bin/python bench/phase5.py [--quick | --smoke] [--levels N] [--threads 2] [--set key=value ...]
                                     [--part all | pipeline | curriculum | tool] [--selfmodel-control]
                                     [--compare-steps N] [--seeds N] [--first-seed K]
                                     [--tool-references varied | one] [--tool-steps N]

Full: the first 3 levels of the preset as it is. `--quick`: one level with a smaller question queue and shorter
stages (the same code path). `--smoke`: a tiny model, seconds.

Arms, measured in the same run:
- pipeline: Trainer.run on the preset. Per level and stage: minutes, steps, questions left; bake: KL from the
  prompted teacher to the model without the prompt, before and after, exact without the prompt against exact with
  it, and the checkable prompts' adherence: `reverse` (held-out questions on which the model without the prompt
  writes its own answer backwards, as the prompt asks; its teacher is that answer, since the small model given
  the prompt does not follow it; graded against the right answer too) and `letters` (baked from the model read
  with the prompt: without it, the prompted model's answer, the right answer in letters, and any answer written
  in letters); self-model: self-prediction exact per temperature
  range, calibration error of the halting head and of the answer's probability, and task exact, before and
  after; dream: held-out exact of this level and every earlier one, before and after.
- pipeline uniform: the same model and seed trained by the wake stage on the level's plain question stream
  (uniform over its question space), for as many steps as the pipeline's curriculum stage took at that level,
  level after level. Held-out exact of both right after the curriculum's stage (for the pipeline) on the same
  distinct held-out questions: a bootstrap interval over the questions and their paired difference
  (pipeline_curriculum_exact, pipeline_uniform_exact). The curriculum arm spends pipeline.prompt_share of its slots
  practising prompts; the uniform arm never sees a prompt.
- curriculum vs uniform (curriculum_exact, uniform_exact): per seed (3; --quick 2), one small model trained on
  levels 1 to 3 either by the pipeline's curriculum stage alone (spaced review, masked hints, advancement on
  held-out figures) or by uniform sampling over the same three levels' questions, for the same steps; held-out
  exact over every level's distinct held-out questions at the end. Intervals over seeds (Student t) and, pooled,
  over questions (bootstrap), with the paired difference.
- tool use (tool_pass_outcome, tool_pass_ce): per seed, the program task trained with cross-entropy against the
  reference program or with expert iteration on the sandbox's outcome (train.outcome = "expert"), the same steps;
  the share of distinct held-out program questions whose greedy program passes every test case in the sandbox.
  By default the task's references are "varied" (task.references: each question's reference drawn among the
  template's equivalent programs, so cross-entropy sees several layouts for one kind of question);
  --tool-references one gives every template its one reference program, as before.

Its last line is one JSON object: minutes, curriculum_exact, uniform_exact (over seeds), bake_kl_before,
bake_kl_after (means over the baked prompts of the last level), bake_adherence (`reverse`), bake_letters_adherence,
bake_letters_in_form, selfmodel_ece_before/after,
task_exact_before/after_selfmodel, dream_retention_before/after (the last level), tool_pass_outcome, tool_pass_ce,
and `levels`: every level's figures by stage.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from bench.stats import over_items, over_seeds, shown  # noqa: E402
from engine import config  # noqa: E402
from engine.evaluate import score  # noqa: E402
from engine.stages.levels import LevelPlan  # noqa: E402
from engine.tasks.tokenizer import stable_rng  # noqa: E402
from engine.trainer import Trainer  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PRESET = ROOT / "configs" / "phase5-cpu.toml"
QUICK = ["curriculum.questions=200", "curriculum.max_epochs=8", "pipeline.probe_size=128", "pipeline.bake_steps=15",
         "pipeline.selfmodel_steps=40", "pipeline.dream_steps=20"]
SMOKE = ["model.d_model=32", "model.n_layers=1", "model.n_heads=2", "model.H_cycles=2", "model.L_cycles=1",
         "model.halt_max_steps=2", "model.memory=none", "model.bitnet=false", "model.step_loss_weights=[]",
         "train.batch_size=8", "curriculum.questions=16", "curriculum.max_epochs=2", "pipeline.probe_size=16",
         "pipeline.bake_steps=2", "pipeline.selfmodel_steps=2", "pipeline.dream_steps=2", "sleep.buffer_size=16",
         "sleep.probe_size=4", "eval.batch_size=16"]
QUIET = ["checkpoint.every=0", "eval.every=0", "log.print_seconds=3600", "log.telemetry_seconds=3600",
         "train.device=cpu"]


@torch.no_grad()
def held_out_marks(plan, model, level: int) -> list[bool]:
    """Each of the level's distinct held-out questions answered exactly, without a prompt."""
    inputs, labels = plan.probe(level)
    logits, _ = plan.logits(model, inputs)
    return score(logits.argmax(-1), labels)[0].tolist()


def weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def selfmodel_start(trainer_of, into: dict):
    """An event hook that keeps the weights the first self-model stage begins from (the control's check)."""
    def on_event(e: dict) -> None:
        if e["event"] == "phase" and e["data"]["phase"] == "selfmodel" and not into:
            into.update(weights(trainer_of().model))
    return on_event


def pipeline_arm(cfg: config.RunConfig) -> tuple[Trainer, float, dict[int, list[bool]], dict]:
    """The pipeline through its levels; the curriculum's held-out marks taken as each curriculum stage ends, and
    the weights the first self-model stage began from."""
    marks: dict[int, list[bool]] = {}
    trainer, start = None, {}
    keep_start = selfmodel_start(lambda: trainer, start)

    def on_event(e: dict) -> None:
        keep_start(e)
        if e["event"] == "eval" and "questions" in e["data"]:  # the curriculum stage's figures: it just ended
            curriculum = trainer.stages["curriculum"]
            marks[int(e["data"]["level"])] = held_out_marks(curriculum.plan, trainer.model, int(e["data"]["level"]))
        elif e["event"] == "phase":
            print(f"  step {e['step']:>6}  {(time.time() - t0) / 60:6.2f} min  -> {e['data']['phase']}", flush=True)

    with tempfile.TemporaryDirectory() as d:
        trainer = Trainer(Path(d) / "run", cfg, output="quiet", emit=on_event)
        t0 = time.time()
        trainer.run()
        minutes = (time.time() - t0) / 60
    return trainer, minutes, marks, start


def uniform_arm(cfg: config.RunConfig, steps: dict[int, int], plan) -> dict[int, list[bool]]:
    """The same model and seed, trained by wake on each level's plain question stream for `steps[level]` steps."""
    plain = dataclasses.replace(cfg, pipeline=dataclasses.replace(cfg.pipeline, enabled=False))
    marks = {}
    with tempfile.TemporaryDirectory() as d:
        trainer = Trainer(Path(d) / "run", plain, output="quiet")
        step = 0
        for level, n in steps.items():
            trainer.wake.task = plan.at(level)  # the level's question stream, from its start
            trainer.wake.data_index = 0
            for _ in range(n):
                step += 1
                trainer.wake.step(step)
            marks[level] = held_out_marks(plan, trainer.model, level)
    return marks


# ---------------------------------------------------------------------------------------------- curriculum vs uniform
# Both arms: one small model that learns the first levels within minutes (the preset's BitNet and memory learn too
# slowly to tell samplers apart in the budget), the same seed, the same total steps, the same levels' questions.
COMPARE = ["model.d_model=64", "model.n_layers=2", "model.n_heads=4", "model.mixer=mlp", "model.memory=none",
           "model.bitnet=false", "model.H_cycles=2", "model.L_cycles=2", "model.halt_max_steps=1",
           "model.step_loss_weights=[]", "model.detach_cycles=false", "optim.preset=adamw", "optim.lr=0.003",
           "optim.warmup_steps=50", "train.batch_size=32", "task.prompt_chars=0", "pipeline.stages=['curriculum']",
           "pipeline.bake=[]", "pipeline.prompt_share=0.0", "pipeline.probe_size=100", "curriculum.questions=2000",
           "curriculum.mastery=2", "curriculum.review_share=0.5", "curriculum.review_gap=256",
           "curriculum.advance_exact=0.5", "curriculum.check_every=50", "curriculum.check_size=100",
           "curriculum.max_epochs=1000", "curriculum.review_unmastered=true"]
COMPARE_STEPS = {"full": 500, "quick": 100, "smoke": 6}  # each arm's steps, per seed
COMPARE_SEEDS = {"full": 3, "quick": 2, "smoke": 1}
COMPARE_LEVELS = 3


class LevelMix:
    """Uniform sampling over levels 1..n: sample i is question i of a level drawn by (seed, i)."""

    def __init__(self, plan, levels: int, seed: int):
        self.plan, self.levels, self.seed = plan, levels, seed
        self.name, self.vocab_size, self.seq_len = "levels", plan.task.vocab_size, plan.task.seq_len

    def sample(self, split: str, index: int):
        level = 1 + stable_rng(self.seed, "mix", index).randrange(self.levels)
        return self.plan.at(level).sample(split, index)


def compare_config(seed: int, levels: int, steps: int, extra: list[str]) -> config.RunConfig:
    return config.load(PRESET, COMPARE + QUIET + [f"task.seed={seed}", f"train.seed={seed}", f"curriculum.levels={levels}",
                                                  f"train.max_steps={steps}", "train.threads=1", *extra])


def curriculum_marks(cfg: config.RunConfig) -> tuple[dict[int, list[bool]], int, dict]:
    """The curriculum arm: the pipeline's curriculum stage alone, up to train.max_steps; held-out marks of every
    level at the end, the steps it took, and each level's curriculum figures."""
    with tempfile.TemporaryDirectory() as d:
        trainer = Trainer(Path(d) / "run", cfg, output="quiet")
        trainer.run()
        stage = trainer.stages["curriculum"]
        plan = stage.plan
        marks = {level: held_out_marks(plan, trainer.model, level) for level in range(1, cfg.curriculum.levels + 1)}
        reached = max(int(k) for k in stage.reports) + (not stage.feed.done) if stage.reports else 1
        return marks, trainer.step, {"reports": stage.reports, "level_reached": min(reached, cfg.curriculum.levels)}


def uniform_marks(cfg: config.RunConfig, steps: int) -> dict[int, list[bool]]:
    """The uniform arm: the same model and seed, wake on a uniform mix of the same levels' questions."""
    plain = dataclasses.replace(cfg, pipeline=dataclasses.replace(cfg.pipeline, enabled=False))
    with tempfile.TemporaryDirectory() as d:
        trainer = Trainer(Path(d) / "run", plain, output="quiet")
        plan = LevelPlan(cfg.pipeline, cfg.curriculum, trainer.task, trainer.device)
        trainer.wake.task, trainer.wake.data_index = LevelMix(plan, cfg.curriculum.levels, cfg.task.seed), 0
        for step in range(1, steps + 1):
            trainer.wake.step(step)
        return {level: held_out_marks(plan, trainer.model, level) for level in range(1, cfg.curriculum.levels + 1)}


def curriculum_vs_uniform(seeds: list[int], steps_each: int, levels: int, extra: list[str]) -> dict:
    """Per seed: the curriculum arm, then uniform sampling for as many steps; held-out exact over every level's
    distinct held-out questions at the end (pooled), their paired difference, and intervals over seeds."""
    per_seed, c_all, u_all = [], [], []
    for seed in seeds:
        t0 = time.time()
        cfg = compare_config(seed, levels, steps_each, extra)
        c_marks, steps, info = curriculum_marks(cfg)
        u_marks = uniform_marks(cfg, steps)
        c = [m for level in sorted(c_marks) for m in c_marks[level]]
        u = [m for level in sorted(c_marks) for m in u_marks[level]]
        c_all, u_all = c_all + c, u_all + u
        row = {"seed": seed, "steps": steps, "minutes": round((time.time() - t0) / 60, 2),
               "level_reached": info["level_reached"], "curriculum_exact": over_items(c), "uniform_exact": over_items(u),
               "difference": over_items([float(a) - float(b) for a, b in zip(c, u)]),
               "by_level": {lv: {"curriculum": mean([float(m) for m in c_marks[lv]]),
                                 "uniform": mean([float(m) for m in u_marks[lv]]), "n": len(c_marks[lv])}
                            for lv in sorted(c_marks)},
               "curriculum_levels": {k: {f: round(v, 4) for f, v in r.items()} for k, r in info["reports"].items()}}
        per_seed.append(row)
        print(f"compare seed {seed}: {steps} steps each, curriculum reached level {row['level_reached']}; held-out "
              f"exact over levels 1 to {levels} ({len(c)} distinct questions): curriculum {shown(row['curriculum_exact'])}"
              f", uniform {shown(row['uniform_exact'])}, difference {shown(row['difference'])}; by level "
              + ", ".join(f"L{lv} {b['curriculum']:.3f} vs {b['uniform']:.3f}" for lv, b in row["by_level"].items())
              + f" ({row['minutes']:.1f} min)", flush=True)
    seeds_c = [r["curriculum_exact"]["mean"] for r in per_seed]
    seeds_u = [r["uniform_exact"]["mean"] for r in per_seed]
    return {"curriculum_exact": over_seeds(seeds_c), "uniform_exact": over_seeds(seeds_u),
            "curriculum_minus_uniform": over_seeds([a - b for a, b in zip(seeds_c, seeds_u)]),
            "curriculum_exact_items": over_items(c_all), "uniform_exact_items": over_items(u_all),
            "curriculum_minus_uniform_items": over_items([float(a) - float(b) for a, b in zip(c_all, u_all)]),
            "compare_seeds": per_seed, "compare_steps": steps_each, "compare_levels": levels,
            "compare_settings": COMPARE + extra}


# ------------------------------------------------------------------------------------ tool use: outcome vs CE
# The program task (difficulty 1) from the plain stream: cross-entropy against the reference program, or expert
# iteration (train.outcome = "expert", engine/outcome.py). Same model, seed, data and steps; the expert arm spends
# one extra forward pass a step on answering its questions, and the sandbox runs its programs.
TOOL = ["task.name=program", "task.difficulty=1", "model.d_model=64", "model.n_layers=1", "model.n_heads=4",
        "model.H_cycles=1", "model.L_cycles=2", "model.halt_max_steps=1", "optim.preset=adamw", "optim.lr=0.003",
        "optim.warmup_steps=20", "train.batch_size=32", "train.outcome_samples=4", "train.outcome_temperature=1.0"]
TOOL_STEPS = {"full": 250, "quick": 40, "smoke": 3}
TOOL_EVAL = {"full": 300, "quick": 100, "smoke": 8}  # difficulty 1 holds about 40 distinct held-out ones


def tool_config(seed: int, outcome: str, steps: int, extra: list[str]) -> config.RunConfig:
    return config.from_dict({}, "tool-use", TOOL + QUIET + [f"task.seed={seed}", f"train.seed={seed}",
                                                           f"train.outcome={outcome}", f"train.max_steps={steps}",
                                                           "train.threads=1", *extra])


def tool_pass_marks(cfg: config.RunConfig, n_eval: int) -> tuple[list[bool], dict]:
    """Train one arm; each distinct held-out program question passed (greedy answer, run in the sandbox on its
    test cases), and the outcome arm's own figures."""
    with tempfile.TemporaryDirectory() as d:
        trainer = Trainer(Path(d) / "run", cfg, output="quiet")
        trainer.run()
        task, model = trainer.task, trainer.model.eval()
        problems = task.distinct_problems("test", n_eval)
        samples = [task.encode(p) for p in problems]
        with torch.no_grad():
            preds, _ = model.predict(torch.tensor([s.inputs for s in samples], dtype=torch.long, device=trainer.device))
        marks = [task.grade(p, pred.tolist(), s) for p, pred, s in zip(problems, preds.cpu(), samples)]
        outcome = trainer.wake.outcome
        return marks, ({} if outcome is None else {k: round(v, 4) for k, v in outcome.metrics().items()})


def tool_use_comparison(mode: str, extra: list[str], steps: int) -> dict:
    """Per seed: cross-entropy only against expert iteration at equal steps; held-out pass rates with intervals."""
    per_seed, o_all, c_all = [], [], []
    for seed in range(COMPARE_SEEDS[mode]):
        t0 = time.time()
        c, _ = tool_pass_marks(tool_config(seed, "ce", steps, extra), TOOL_EVAL[mode])
        o, figures = tool_pass_marks(tool_config(seed, "expert", steps, extra), TOOL_EVAL[mode])
        o_all, c_all = o_all + o, c_all + c
        row = {"seed": seed, "outcome": over_items(o), "ce": over_items(c),
               "difference": over_items([float(a) - float(b) for a, b in zip(o, c)]), "outcome_figures": figures,
               "minutes": round((time.time() - t0) / 60, 2)}
        per_seed.append(row)
        print(f"tool use seed {seed}: {steps} steps each, held-out pass rate on {len(o)} distinct programs"
              f": outcome {shown(row['outcome'])}, cross-entropy {shown(row['ce'])}, difference "
              f"{shown(row['difference'])}; training questions answered by a passing program of its own "
              f"{figures.get('outcome/passed', 0):.3f}, not the reference {figures.get('outcome/own', 0):.3f} "
              f"({row['minutes']:.1f} min)", flush=True)
    seeds_o = [r["outcome"]["mean"] for r in per_seed]
    seeds_c = [r["ce"]["mean"] for r in per_seed]
    return {"tool_pass_outcome": over_seeds(seeds_o), "tool_pass_ce": over_seeds(seeds_c),
            "tool_outcome_minus_ce": over_seeds([a - b for a, b in zip(seeds_o, seeds_c)]),
            "tool_pass_outcome_items": over_items(o_all), "tool_pass_ce_items": over_items(c_all),
            "tool_outcome_minus_ce_items": over_items([float(a) - float(b) for a, b in zip(o_all, c_all)]),
            "tool_seeds": per_seed, "tool_steps": steps, "tool_settings": TOOL}


def comparison_figures(args) -> dict:
    """Curriculum vs uniform sampling and tool use (outcome vs cross-entropy), each over seeds; sized by the mode."""
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    torch.set_num_threads(1)  # both comparisons train at one thread, whatever the pipeline took
    figures = {}
    if args.part in ("all", "curriculum"):
        steps = args.compare_steps or COMPARE_STEPS[mode]
        seeds = list(range(args.first_seed, args.first_seed + (args.seeds or COMPARE_SEEDS[mode])))
        print(f"curriculum vs uniform: levels 1 to {COMPARE_LEVELS}, seeds {seeds}, {steps} steps an arm", flush=True)
        figures = curriculum_vs_uniform(seeds, steps, COMPARE_LEVELS, args.compare_set)
        print(f"curriculum vs uniform over seeds: curriculum {shown(figures['curriculum_exact'])}, uniform "
              f"{shown(figures['uniform_exact'])}, difference {shown(figures['curriculum_minus_uniform'])}; pooled "
              f"over the seeds' questions: difference {shown(figures['curriculum_minus_uniform_items'])}", flush=True)
    if args.part in ("all", "tool"):
        steps = args.tool_steps or TOOL_STEPS[mode]
        print(f"tool use: program task, references {args.tool_references}, {COMPARE_SEEDS[mode]} seeds, "
              f"{steps} steps an arm", flush=True)
        tool = tool_use_comparison(mode, [f"task.references={args.tool_references}"], steps)
        tool["tool_references"] = args.tool_references
        print(f"tool use over seeds: outcome {shown(tool['tool_pass_outcome'])}, cross-entropy "
              f"{shown(tool['tool_pass_ce'])}, difference {shown(tool['tool_outcome_minus_ce'])}", flush=True)
        figures.update(tool)
    return figures


def comparisons(args) -> int:
    """--part curriculum or tool: that comparison alone, its figures as the last line."""
    t0 = time.time()
    figures = comparison_figures(args)
    print(json.dumps({"minutes": round((time.time() - t0) / 60, 2), **figures, "threads": 1, "quick": args.quick,
                      "smoke": args.smoke}))
    return 0


def mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 4) if values else None


def print_stages(level: int, row: dict, stages: dict, start_level: int) -> None:
    """The level's bake, self-model and dream figures, one line each (a prompt's bake per line)."""
    key = str(level)
    for prompt, f in ((row.get("bake") and stages["bake"].reports[key]) or {}).items():
        print(f"level {level}  bake {prompt:<10} KL {f['kl_before']:.4f} -> {f['kl_after']:.4f}; exact without "
              f"the prompt {f['task_exact_before']:.3f} -> {f['task_exact_after']:.3f}, with it "
              f"{f['exact_with_prompt']:.3f}; gives the teacher's answer without the prompt {f['agree_before']:.3f} "
              f"-> {f['agree_after']:.3f}; the prompt's answer graded {f['followed_before']:.3f} -> "
              f"{f['followed_after']:.3f} (per answer character {f['followed_cell_before']:.3f} -> "
              f"{f['followed_cell_after']:.3f}){'' if f['kept'] else ' (baked into a copy, dropped)'}; where the "
              f"teacher's answer is not the model's own ({f.get('changed', 0):.3f} of them) "
              f"{f.get('agree_changed_before', 0):.3f} -> {f.get('agree_changed_after', 0):.3f}; given the prompt, "
              f"it does what the prompt asks to its own answer {f.get('with_prompt_own', 0):.3f}; answers without "
              f"it in the prompt's form {f.get('in_form_before', 0):.3f} -> {f.get('in_form_after', 0):.3f} (with "
              f"it {f.get('in_form_with_prompt', 0):.3f})",
              flush=True)
    s = row.get("selfmodel")
    if s:
        ranges = [k[:-len("_after")] for k in s if k.startswith("self_exact_r") and k.endswith("_after")]
        print(f"level {level}  selfmodel: task exact {s['task_exact_before']:.3f} -> {s['task_exact_after']:.3f}; "
              f"calibration error (halting head) {s['ece_before']:.3f} -> {s['ece_after']:.3f}, (answer "
              f"probability) {s['ece_answer_before']:.3f} -> {s['ece_answer_after']:.3f}; self-prediction exact "
              + ", ".join(f"{r[len('self_exact_'):]} {s[r + '_before']:.3f} -> {s[r + '_after']:.3f}" for r in ranges),
              flush=True)
    dr = row.get("dream")
    if dr:
        each = ", ".join(f"L{k} {dr[f'L{k}_before']:.3f} -> {dr[f'L{k}_after']:.3f}"
                         for k in range(start_level, level + 1) if f"L{k}_before" in dr)
        print(f"level {level}  dream: retention (held-out exact, levels {start_level} to {level}) "
              f"{dr['retention_before']:.3f} -> {dr['retention_after']:.3f} ({each})", flush=True)


def stage_keys(last: dict, bake_last: dict | None) -> dict:
    """The JSON keys of the bake, self-model and dream stages, from the last level's figures. bake_adherence: the
    checkable prompt baked from a teacher that follows it (the model's own answer written backwards), the share of
    held-out questions on which the model without the prompt writes that answer; bake_adherence_exact grades the
    same answers against the right answer written backwards."""
    bake_last = bake_last or {}
    reverse, letters = bake_last.get("reverse", {}), bake_last.get("letters", {})
    selfmodel, dream = last.get("selfmodel") or {}, last.get("dream") or {}
    ranges = sorted(k[:-len("_after")] for k in selfmodel if k.startswith("self_exact_r") and k.endswith("_after"))
    levels = sorted(k[:-len("_after")] for k in dream if k.startswith("L") and k.endswith("_after"))
    return {
        "bake_kl_before": mean([f["kl_before"] for f in bake_last.values()]),
        "bake_kl_after": mean([f["kl_after"] for f in bake_last.values()]),
        "bake_kl": {p: [f["kl_before"], f["kl_after"]] for p, f in bake_last.items()},
        "bake_adherence": reverse.get("agree_after"), "bake_adherence_before": reverse.get("agree_before"),
        "bake_adherence_exact": reverse.get("followed_after"),
        "bake_adherence_exact_before": reverse.get("followed_before"),
        "bake_adherence_cell": reverse.get("followed_cell_after"),
        "bake_adherence_cell_before": reverse.get("followed_cell_before"),
        "bake_reverse_exact_with_prompt": reverse.get("exact_with_prompt"),
        # the checkable prompt against the model's own answers: the non-palindromic ones written backwards without
        # the prompt after baking (0 before), and whether the model given the prompt writes them backwards at all
        "bake_adherence_changed": reverse.get("agree_changed_after"),
        "bake_adherence_changed_before": reverse.get("agree_changed_before"),
        "bake_reverse_with_prompt_own": reverse.get("with_prompt_own"),
        # the second checkable prompt, baked from the model read with it: without the prompt after baking, the
        # prompted model's answer (adherence), the right answer in letters, and any answer written in letters
        "bake_letters_adherence": letters.get("agree_after"), "bake_letters_adherence_before": letters.get("agree_before"),
        "bake_letters_exact": letters.get("followed_after"), "bake_letters_exact_before": letters.get("followed_before"),
        "bake_letters_in_form": letters.get("in_form_after"), "bake_letters_in_form_before": letters.get("in_form_before"),
        "bake_letters_exact_with_prompt": letters.get("exact_with_prompt"),
        "bake_letters_with_prompt_own": letters.get("with_prompt_own"),
        "bake_letters_in_form_with_prompt": letters.get("in_form_with_prompt"),
        "bake_exact_with_prompt": mean([f["exact_with_prompt"] for f in bake_last.values()]),
        "bake_exact_without_prompt": mean([f["task_exact_after"] for f in bake_last.values() if f["kept"]]),
        "selfmodel_ece_before": selfmodel.get("ece_before"), "selfmodel_ece_after": selfmodel.get("ece_after"),
        "selfmodel_ece_answer_before": selfmodel.get("ece_answer_before"),
        "selfmodel_ece_answer_after": selfmodel.get("ece_answer_after"),
        "task_exact_before_selfmodel": selfmodel.get("task_exact_before"),
        "task_exact_after_selfmodel": selfmodel.get("task_exact_after"),
        "selfmodel_self_exact": {r[len("self_exact_"):]: [selfmodel[r + "_before"], selfmodel[r + "_after"]]
                                 for r in ranges},
        "dream_retention_before": dream.get("retention_before"), "dream_retention_after": dream.get("retention_after"),
        "dream_retention_levels": {k: [dream[k + "_before"], dream[k + "_after"]] for k in levels},
    }


def selfmodel_control(cfg: config.RunConfig) -> tuple[dict | None, dict]:
    """The first level again up to the self-model's end, with no self-prediction slots (selfmodel_share 0): the same
    steps of the plain task alone. Every earlier stage runs the same way with the same seed, so the two self-model
    stages start from the same weights (`same_start` checks the weights and the figures taken before). Returns its
    figures and the weights its self-model stage began from."""
    if "selfmodel" not in cfg.pipeline.stages:
        return None, {}
    stages = cfg.pipeline.stages[:cfg.pipeline.stages.index("selfmodel") + 1]
    control = dataclasses.replace(cfg, pipeline=dataclasses.replace(cfg.pipeline, stages=stages, selfmodel_share=0.0),
                                  curriculum=dataclasses.replace(cfg.curriculum, levels=cfg.curriculum.start_level))
    trainer, start = None, {}
    with tempfile.TemporaryDirectory() as d:
        trainer = Trainer(Path(d) / "run", control, output="quiet", emit=selfmodel_start(lambda: trainer, start))
        trainer.run()
    return trainer.stages["selfmodel"].reports.get(str(cfg.curriculum.start_level)), start


def control_keys(with_self: dict | None, without: dict | None, same_weights: bool) -> dict:
    """The self-model stage against the same steps without its self-prediction slots, at the first level."""
    if not with_self or not without:
        return {}
    same = same_weights and all(with_self[f"{k}_before"] == without[f"{k}_before"]
                                for k in ("ece", "ece_answer", "task_exact"))
    keys = ("ece", "ece_answer", "task_exact")
    print(f"level 1  selfmodel against the same steps without self-prediction (same start: {same}): calibration "
          f"error (halting head) {with_self['ece_after']:.3f} against {without['ece_after']:.3f}, (answer "
          f"probability) {with_self['ece_answer_after']:.3f} against {without['ece_answer_after']:.3f}; task exact "
          f"{with_self['task_exact_after']:.3f} against {without['task_exact_after']:.3f}", flush=True)
    return {"selfmodel_control": {"same_start": same, **{f"{k}_after_without_selfmodel": without[f"{k}_after"]
                                                         for k in keys}}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one level, a smaller queue and shorter stages")
    ap.add_argument("--smoke", action="store_true", help="a tiny model and budgets of seconds: checks the code path")
    ap.add_argument("--levels", type=int, default=None, help="levels to run (default 3; --quick and --smoke: 1)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--selfmodel-control", action="store_true",
                    help="run the first level again without the self-prediction slots (always on with --smoke)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a preset override")
    ap.add_argument("--part", choices=("all", "pipeline", "curriculum", "tool"), default="all",
                    help="one part alone: the preset's pipeline, curriculum vs uniform, or tool use")
    ap.add_argument("--tool-references", choices=("varied", "one"), default="varied",
                    help="tool use: each question's reference drawn among equivalent programs, or one per template")
    ap.add_argument("--tool-steps", type=int, default=None,
                    help="tool use: steps an arm (default 250; --quick 40, --smoke 3)")
    ap.add_argument("--compare-steps", type=int, default=None,
                    help="curriculum vs uniform: steps an arm (default 500; --quick 100, --smoke 6)")
    ap.add_argument("--seeds", type=int, default=None,
                    help="curriculum vs uniform: seeds (default 3; --quick 2, --smoke 1)")
    ap.add_argument("--compare-set", action="append", default=[], metavar="KEY=VALUE",
                    help="curriculum vs uniform: a setting of both arms over the comparison's own (printed with them)")
    ap.add_argument("--first-seed", type=int, default=0,
                    help="curriculum vs uniform: the seeds run are first-seed .. first-seed + seeds - 1, so seeds can "
                         "run as separate processes and be joined with bench/stats.py combine")
    args = ap.parse_args()
    for name, value, low, top in (("--tool-steps", args.tool_steps, 1, 100_000),
                                  ("--compare-steps", args.compare_steps, 1, 100_000), ("--seeds", args.seeds, 1, 100),
                                  ("--first-seed", args.first_seed, 0, 10_000)):
        if value is not None and not low <= value <= top:
            print(f"phase5: {name} {value} is out of range; allowed is {low} to {top}.", file=sys.stderr)
            return 2
    if args.compare_set:
        try:
            compare_config(0, COMPARE_LEVELS, 1, args.compare_set)
        except config.ConfigError as exc:
            print(f"phase5: --compare-set: {exc}", file=sys.stderr)
            return 2
    if args.part in ("curriculum", "tool"):
        return comparisons(args)
    levels = args.levels or (1 if args.quick or args.smoke else 3)
    threads = 1 if args.smoke else args.threads
    torch.set_num_threads(threads)
    overrides = (SMOKE if args.smoke else QUICK if args.quick else []) + QUIET + [
        f"curriculum.levels={levels}", f"train.threads={threads}", "train.max_steps=10000000", *args.set]
    try:
        cfg = config.load(PRESET, overrides)
    except config.ConfigError as exc:
        print(f"phase5: {exc}", file=sys.stderr)
        return 2

    print(f"pipeline: {PRESET.name}, levels {cfg.curriculum.start_level} to {levels}, {threads} threads", flush=True)
    trainer, minutes, cur_marks, start = pipeline_arm(cfg)
    stages = {name: trainer.stages[name] for name in cfg.pipeline.stages}
    plan = stages["curriculum"].plan
    steps = {int(k): int(v["steps"]) for k, v in stages["curriculum"].reports.items()}
    print(f"pipeline: {trainer.step} steps, {minutes:.2f} min ({trainer.status})", flush=True)
    uni_marks = uniform_arm(cfg, steps, plan)
    control, control_start = selfmodel_control(cfg) if args.selfmodel_control or args.smoke else (None, {})
    same_weights = bool(start) and start.keys() == control_start.keys() and all(
        torch.equal(start[k], control_start[k]) for k in start)

    per_level = []
    for level in sorted(steps):
        key = str(level)
        row = {"level": level, **{name: stage.reports.get(key) for name, stage in stages.items()}}
        if level in cur_marks and level in uni_marks:
            c, u = cur_marks[level], uni_marks[level]
            row["curriculum_exact"], row["uniform_exact"] = over_items(c), over_items(u)
            row["difference"] = over_items([float(a) - float(b) for a, b in zip(c, u)])
        per_level.append(row)
        cur = row.get("curriculum") or {}
        print(f"level {level}  curriculum: {cur.get('minutes', 0):.2f} min, {cur.get('steps')} steps, "
              f"{cur.get('questions_left')} of {cur.get('questions')} questions left after {cur.get('epochs')} "
              f"passes; held-out exact curriculum {shown(row['curriculum_exact'])} against uniform "
              f"{shown(row['uniform_exact'])} at equal steps, difference {shown(row['difference'])}", flush=True)
        print_stages(level, row, stages, cfg.curriculum.start_level)

    last = per_level[-1] if per_level else {}
    bake_last = stages["bake"].reports.get(str(last.get("level"))) if "bake" in stages else None
    c_all = [m for level in sorted(cur_marks) if level in uni_marks for m in cur_marks[level]]
    u_all = [m for level in sorted(cur_marks) if level in uni_marks for m in uni_marks[level]]
    compared = comparison_figures(args) if args.part == "all" else {}
    print(json.dumps({
        "minutes": round(minutes, 2), "steps": trainer.step, "levels_run": len(per_level), "status": trainer.status,
        # the pipeline's curriculum against level-by-level uniform sampling right after each level's stage
        "pipeline_curriculum_exact": over_items(c_all), "pipeline_uniform_exact": over_items(u_all),
        "pipeline_curriculum_minus_uniform": over_items([float(a) - float(b) for a, b in zip(c_all, u_all)]),
        **stage_keys(last, bake_last),
        **control_keys((stages.get("selfmodel").reports.get(str(cfg.curriculum.start_level))
                        if "selfmodel" in stages else None), control, same_weights),
        "levels": per_level, "threads": threads, "quick": args.quick, "smoke": args.smoke, **compared,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
