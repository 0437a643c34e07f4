"""The Phase-5 level pipeline: levels of curriculum -> bake -> self-model -> dream as stages of the schedule."""

from __future__ import annotations

import pytest
import torch

from engine import checkpoint, protocol
from engine.config import ConfigError, from_dict
from engine.trainer import Trainer

torch.set_num_threads(1)


def config(levels=1, max_steps=1000, ckpt_every=0, **pipeline):
    return from_dict({
        "model": {"d_model": 32, "n_layers": 1, "n_heads": 2, "H_cycles": 2, "L_cycles": 1, "halt_max_steps": 2},
        "task": {"name": "levels", "prompt_chars": 20},
        "curriculum": {"questions": 24, "levels": levels, "mastery": 1, "max_epochs": 2},
        "pipeline": {"enabled": True, "probe_size": 8, "bake_steps": 4, "selfmodel_steps": 4, "dream_steps": 4,
                     "eudaimonia": "be good", "ooda": "look then act", "identity": "a solver", **pipeline},
        "optim": {"lr": 3e-3, "warmup_steps": 2},
        "train": {"batch_size": 8, "max_steps": max_steps, "threads": 1, "device": "cpu"},
        "eval": {"every": 0, "batch_size": 8}, "checkpoint": {"every": ckpt_every, "keep": 100},
        "sleep": {"buffer_size": 16, "probe_size": 4},
        "log": {"flush_seconds": 0.05, "telemetry_seconds": 100.0, "print_seconds": 100.0},
    })


def run(run_dir, cfg, resume=False):
    run_dir.mkdir(parents=True, exist_ok=True)
    events = []
    trainer = Trainer(run_dir, cfg, output="quiet", emit=events.append)
    if resume:
        trainer.resume()
    assert trainer.run() == 0
    return trainer, events


def untimed(reports):
    """A stage's reports without the wall-clock figures."""
    def strip(d):
        return {k: strip(v) if isinstance(v, dict) else v for k, v in d.items() if k != "minutes"}
    return strip(reports)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """One level straight through: the trainer, its events, and the step range of each stage."""
    trainer, events = run(tmp_path_factory.mktemp("straight") / "run", config())
    switches = [(e["step"], e["data"]["phase"]) for e in events if e["event"] == "phase"]
    starts = [(0, "curriculum")] + switches
    spans = {stage: (a, b) for (a, stage), (b, _) in zip(starts, starts[1:] + [(trainer.step, None)])}
    return trainer, events, spans


def test_a_level_runs_its_stages_in_order_and_each_reports_its_figures(straight):
    trainer, events, spans = straight
    assert list(spans) == ["curriculum", "bake", "selfmodel", "dream"] and trainer.status == "finished"
    assert spans["bake"][1] - spans["bake"][0] == 5 * 4  # five prompts of four steps
    assert spans["selfmodel"][1] - spans["selfmodel"][0] == 4 == spans["dream"][1] - spans["dream"][0]
    assert [p for m in events for p in protocol.check_event(m)] == []
    evals = [e["data"] for e in events if e["event"] == "eval"]
    assert [e["level"] for e in evals] == [1.0] * 4
    curriculum, bake, selfmodel, dream = evals
    assert curriculum["questions"] == 24 and 0 <= curriculum["questions_left"] <= 24
    for prompt in ("eudaimonia", "ooda", "identity", "reverse", "letters"):
        assert {f"{prompt}_kl_before", f"{prompt}_kl_after", f"{prompt}_followed_after", f"{prompt}_in_form_after"} <= set(bake)
    assert bake["reverse_kept"] == 0.0 == bake["letters_kept"] and bake["ooda_kept"] == 1.0
    # before baking the model is its own teacher: no answer it would write backwards is written backwards yet
    assert bake["reverse_agree_changed_before"] == 0.0 and 0 <= bake["reverse_with_prompt_own"] <= 1
    assert {"ece_before", "ece_after", "self_exact_r0_after", "self_exact_r2_after"} <= set(selfmodel)
    assert {"L1_before", "L1_after", "retention_before", "retention_after"} <= set(dream)
    assert [e["data"]["mode"] for e in events if e["event"] == "consolidation"] == ["dream"]


def test_every_stage_says_where_the_pipeline_stands_and_the_stage_command_answers(straight):
    from engine.commands import run_handlers

    trainer, events, spans = straight
    where = [(e["step"], e["data"]) for e in events if e["event"] == "pipeline"]
    assert [d["stage"] for _, d in where if d["progress"] == 1.0] == ["curriculum", "bake", "selfmodel", "dream"]
    for step, d in where:  # each stage's own, at level 1 of 1, its progress rising to 1
        stage = next(name for name, (a, b) in spans.items() if a < step <= b)
        assert d["stage"] == stage and d["level"] == 1 and d["levels"] == 1 and 0 <= d["progress"] <= 1
        assert d["stages"] == ["curriculum", "bake", "selfmodel", "dream"]
    curriculum = trainer.stages["curriculum"].reports["1"]
    assert where[-1][1]["questions_left"] == curriculum["questions_left"] and where[-1][1]["questions"] == 24
    ok, error, result = run_handlers(trainer)["stage"]({})
    assert ok and protocol.check_data("pipeline", result) == [] and result["stage"] == "dream"
    # the self-model's calibration as a curve: its first and its last step
    ece = [e["step"] for e in events if e["event"] == "metrics" and "selfmodel/ece" in e["data"]]
    assert ece == [spans["selfmodel"][0] + 1, spans["selfmodel"][1]]


def test_the_stage_command_is_refused_without_a_pipeline(tmp_path):
    from engine.commands import run_handlers

    cfg = from_dict({"model": {"d_model": 16, "n_layers": 1, "n_heads": 2, "H_cycles": 1, "L_cycles": 1},
                     "task": {"name": "arithmetic"}, "train": {"max_steps": 1, "batch_size": 4, "device": "cpu"},
                     "eval": {"every": 0}, "checkpoint": {"every": 0}})
    trainer, _ = run(tmp_path / "run", cfg)
    ok, error, _ = run_handlers(trainer)["stage"]({})
    assert not ok and error == "this run has no level pipeline (pipeline.enabled is false): use `status`."


def test_the_levels_follow_one_another_and_the_run_ends_after_the_last(tmp_path):
    trainer, events = run(tmp_path / "run", config(levels=2, stages=["curriculum", "dream"]))
    assert [e["data"]["phase"] for e in events if e["event"] == "phase"] == ["dream", "curriculum", "dream"]
    assert [e["data"]["level"] for e in events if e["event"] == "eval"] == [1.0, 1.0, 2.0, 2.0]
    dream = trainer.stages["dream"].reports["2"]
    assert {"L1_before", "L2_before", "L1_after", "L2_after"} <= set(dream)  # this level and the earlier one
    assert trainer.stages["curriculum"].feed.queue.done and trainer.schedule.finished


def test_a_level_trains_the_same_whether_or_not_a_level_follows_it(tmp_path):
    """The self-model's control runs the first level alone: its stages must start from the weights the first level
    of a longer run starts them from. A level that ends on its passes in the middle of a refill used to serve the
    rest of that refill from the next level, so level 1's last step trained on level 2's questions."""
    def start_of_selfmodel(levels, max_steps=1000):
        seen, trainer = {}, None

        def on_event(e):
            if e["event"] == "phase" and e["data"]["phase"] == "selfmodel" and not seen:
                seen.update({k: v.clone() for k, v in trainer.model.state_dict().items()})

        (tmp_path / str(levels)).mkdir()
        cfg = config(levels=levels, max_steps=max_steps, stages=["curriculum", "selfmodel"], bake=[])
        cfg.curriculum.questions = 12
        trainer = Trainer(tmp_path / str(levels), cfg, output="quiet", emit=on_event)
        assert trainer.run() == 0
        return seen, trainer.stages["selfmodel"].reports["1"], trainer.stages["curriculum"].feed.queue, trainer.step

    alone, alone_figures, _, steps = start_of_selfmodel(1)
    first, first_figures, queue, _ = start_of_selfmodel(2, max_steps=steps)  # level 1 of 2, then stop
    assert queue.ended["1"]["reason"] == "epochs"  # the case that crossed: the level ran out of passes
    assert alone and all(torch.equal(alone[k], first[k]) for k in alone)
    assert {k: v for k, v in alone_figures.items() if k.endswith("_before") and not k.startswith("self_exact")} == \
        {k: v for k, v in first_figures.items() if k.endswith("_before") and not k.startswith("self_exact")}


@pytest.mark.parametrize("stage", ["curriculum", "bake", "selfmodel", "dream"])
def test_every_stage_resumes_exactly_after_a_stop_in_its_middle(straight, tmp_path, stage):
    reference, _, spans = straight
    start, stop = spans[stage]
    middle = (start + stop) // 2 + (stage == "bake")  # bake: inside the second prompt, not at its edge
    assert start < middle < stop
    run(tmp_path / "run", config(max_steps=middle))
    assert checkpoint.load(tmp_path / "run" / "checkpoints" / f"step-{middle:08d}").state["schedule"]["stage"] == stage
    resumed, events = run(tmp_path / "run", config(), resume=True)
    assert resumed.step == reference.step
    a, b = reference.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    for name in ("curriculum", "bake", "selfmodel", "dream"):
        assert untimed(resumed.stages[name].reports) == untimed(reference.stages[name].reports), name


def test_a_pipeline_config_is_checked_with_one_sentence_each():
    def refused(match, **over):
        with pytest.raises(ConfigError, match=match) as e:
            from_dict({"task": {"name": "levels", "prompt_chars": 40}, "pipeline": {"enabled": True},
                       **over})
        assert "\n" not in str(e.value)

    refused("needs task.name = 'levels'", task={"name": "arithmetic"})
    refused("sleep.enabled cannot both be on", sleep={"enabled": True})
    refused("must begin with 'curriculum'", pipeline={"enabled": True, "stages": ["bake", "curriculum"]})
    refused("'nap' is not one of them", pipeline={"enabled": True, "stages": ["curriculum", "nap"]})
    refused("a name repeats", pipeline={"enabled": True, "bake": ["ooda", "ooda"]})
    refused("levels <= 10", curriculum={"levels": 12})
    refused("pipeline.eudaimonia has 42 characters but task.prompt_chars = 40; raise",
            pipeline={"enabled": True, "eudaimonia": "x" * 42})
    refused("pipeline.ooda has characters outside the alphabet", pipeline={"enabled": True, "ooda": "observe → act"})
    with pytest.raises(ConfigError, match="15-character tag"):  # the self-model's tag needs room too
        from_dict({"task": {"name": "levels", "prompt_chars": 12}, "pipeline": {"enabled": True, "bake": []}})


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["curriculum", "bake", "selfmodel", "dream"])
def test_a_real_engine_killed_in_the_middle_of_a_stage_resumes_to_the_same_weights(straight, tmp_path, stage):
    import json
    import sqlite3

    from engine.config import to_toml
    from tests.helpers import kill9, lab, lab_popen, only_run, wait_for

    reference, _, spans = straight
    path = tmp_path / "p5.toml"
    path.write_text(to_toml(config(ckpt_every=1)))
    proc = lab_popen("run", str(path), "--headless", "--runs-dir", str(tmp_path / "runs"))

    def in_stage():
        try:
            run_dir = only_run(tmp_path / "runs")
            conn = sqlite3.connect(f"file:{run_dir / 'run.db'}?mode=ro", uri=True, timeout=5)
            rows = conn.execute("SELECT step, data FROM events WHERE kind = 'phase' ORDER BY id").fetchall()
            last = conn.execute("SELECT max(step) FROM metrics").fetchone()[0] or 0
            conn.close()
        except (AssertionError, FileNotFoundError, sqlite3.Error):
            return False
        current = json.loads(rows[-1][1])["phase"] if rows else "curriculum"
        return current == stage and last >= spans[stage][0] + 2

    try:
        wait_for(in_stage, timeout=120, interval=0.02)
    finally:
        kill9(proc)
    run_dir = only_run(tmp_path / "runs")
    latest, _ = checkpoint.load_latest(run_dir / "checkpoints")
    assert latest.state["schedule"]["stage"] == stage and latest.step < spans[stage][1]
    out = lab("run", "--resume", str(run_dir), "--headless", timeout=300)
    assert out.returncode == 0, out.stderr
    final, _ = checkpoint.load_latest(run_dir / "checkpoints")
    assert final.step == reference.step
    weights = reference.model.state_dict()
    assert all(torch.equal(final.tensors[f"model.{k}"], v) for k, v in weights.items())


def test_the_teachers_answer_positions_are_moved_to_the_students():
    from engine.stages.bake import aligned, answer_kl

    teacher_labels = torch.tensor([[0, 0, 0, 5, 6, 3, 0]])  # the prompt pushes the answer right
    labels = torch.tensor([[0, 7, 8, 3, 0, 0, 0]])
    logits = torch.randn(1, 7, 9)
    moved = aligned(logits, teacher_labels, labels)
    assert torch.allclose(moved[0, 1:4], torch.log_softmax(logits[0, 3:6], -1))
    assert moved[0, [0, 4, 5, 6]].abs().sum() == 0
    mask = labels != 0
    assert answer_kl(moved, moved, mask).abs().max() < 1e-6  # nothing to learn from oneself
    student = torch.randn(1, 7, 9)
    expected = torch.nn.functional.kl_div(torch.log_softmax(student[0, 1:4], -1), moved[0, 1:4], log_target=True,
                                          reduction="sum")
    assert answer_kl(moved, student, mask).sum() == pytest.approx(float(expected), rel=1e-5)


def test_baking_pulls_the_model_without_the_prompt_to_the_teacher_with_it(tmp_path, monkeypatch):
    import engine.stages.bake as bake

    real = bake.frozen

    def other_teacher(model):  # a teacher that differs a lot, so there is something to bake
        teacher = real(model)
        g = torch.Generator().manual_seed(7)
        with torch.no_grad():
            for p in teacher.parameters():
                if p.numel() > 1:
                    p.add_(0.5 * p.std() * torch.randn(p.shape, generator=g))
        return teacher

    monkeypatch.setattr(bake, "frozen", other_teacher)
    trainer, _ = run(tmp_path / "run", config(bake=["ooda"], stages=["curriculum", "bake"], bake_steps=30))
    figures = trainer.stages["bake"].reports["1"]["ooda"]
    assert figures["kl_after"] < 0.4 * figures["kl_before"], figures


class PerfectSolver(torch.nn.Module):
    """A model that answers every question right and follows a checkable prompt when given it: the answer,
    computed, then changed as the prompt's effect asks (for `reverse`, written backwards)."""

    def __init__(self, vocab_size: int, prompt: str, effect: str = "reverse"):
        super().__init__()
        self.vocab_size, self.prompt, self.effect = vocab_size, prompt, effect

    def predict_logits(self, inputs, n_steps=None, memory=None, memory_free=False):
        from engine.tasks.levels import PROMPT_JOIN, apply_effect
        from engine.tasks.tokenizer import EOS, SEP, TOKENIZER
        from tests.test_levels import value

        logits = torch.full(inputs.shape + (self.vocab_size,), -10.0)
        for b, row in enumerate(inputs.tolist()):
            sep = row.index(SEP)
            head = TOKENIZER.decode(row[:sep])
            answer = str(value(head.split(PROMPT_JOIN, 1)[-1]))
            if head.startswith(self.prompt + PROMPT_JOIN):
                answer = apply_effect(self.effect, answer)
            for i, t in enumerate(TOKENIZER.encode(answer) + [EOS]):
                logits[b, sep + 1 + i, t] = 10.0
        return logits, torch.zeros(inputs.shape[0])


def test_the_checkable_prompts_teacher_is_the_models_own_answer_written_backwards():
    from engine.stages.bake import mirrored

    labels = torch.tensor([[0, 7, 8, 9, 2, 0]])  # three answer characters and EOS
    logits = torch.randn(1, 6, 11)
    out, logp = mirrored(logits, labels), torch.log_softmax(logits, -1)
    assert torch.allclose(out[0, [1, 2, 3]], logp[0, [3, 2, 1]]) and torch.allclose(out[0, 4], logp[0, 4])
    assert out[0, [0, 5]].abs().sum() == 0


def test_the_checkable_prompt_baked_is_followed_without_it_and_leaves_the_run_model_alone(tmp_path, monkeypatch):
    import engine.stages.bake as bake

    plain, _ = run(tmp_path / "plain", config(bake=["reverse"], stages=["curriculum"]))  # the same practice
    cfg = config(bake=["reverse"], stages=["curriculum", "bake"], bake_steps=100, probe_size=32)
    monkeypatch.setattr(bake, "frozen", lambda model: PerfectSolver(model.vocab_size, cfg.pipeline.reverse, "reverse"))
    baked, _ = run(tmp_path / "baked", cfg)
    f = baked.stages["bake"].reports["1"]["reverse"]
    assert f["exact_with_prompt"] == 1.0 and f["kept"] == 0.0
    assert f["with_prompt_own"] == 1.0 and 0 < f["changed"] < 1  # it follows it; one-digit answers read the same
    # without the prompt, the baked copy writes more of each answer backwards, as the prompt asks
    assert f["followed_cell_after"] > f["followed_cell_before"] + 0.05 and f["kl_after"] < f["kl_before"]
    assert f["agree_after"] >= f["followed_after"]  # the teacher's answer is the right one here
    a, b = plain.model.state_dict(), baked.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)  # baked into a copy, dropped: the run's weights never moved


def test_the_letters_prompt_is_baked_from_the_model_read_with_it_and_its_form_is_followed_without_it(tmp_path,
                                                                                                  monkeypatch):
    import engine.stages.bake as bake

    cfg = config(bake=["letters"], stages=["curriculum", "bake"], bake_steps=60, probe_size=32)
    monkeypatch.setattr(bake, "frozen", lambda model: PerfectSolver(model.vocab_size, cfg.pipeline.letters, "letters"))
    baked, _ = run(tmp_path / "baked", cfg)
    f = baked.stages["bake"].reports["1"]["letters"]
    assert f["exact_with_prompt"] == 1.0 and f["with_prompt_own"] == 1.0 and f["kept"] == 0.0
    assert f["changed"] == 1.0 == f["in_form_with_prompt"]  # every answer holds a digit: the prompt changes each one
    # before baking no answer is in letters; after, most are, and more of their characters are the right letters
    assert f["in_form_before"] == 0.0 and f["in_form_after"] >= 0.5, f
    assert f["followed_cell_after"] > f["followed_cell_before"] + 0.05 and f["kl_after"] < 0.7 * f["kl_before"], f


def test_an_effect_changes_the_models_own_answer_token_by_token():
    from engine.tasks.levels import effect_ids, written_as
    from engine.tasks.tokenizer import BLANK, EOS, TOKENIZER

    own = TOKENIZER.encode("-40") + [BLANK, EOS]  # whatever the model wrote, a blank included
    assert effect_ids("reverse", own) == [BLANK] + TOKENIZER.encode("04-") + [EOS]
    assert effect_ids("letters", own) == TOKENIZER.encode("-ea") + [BLANK, EOS]
    assert effect_ids("none", own) == own
    assert written_as("letters", TOKENIZER.encode("-ea") + [EOS]) and not written_as("letters", own)
    assert written_as("none", TOKENIZER.encode("-40") + [EOS]) and not written_as("none", TOKENIZER.encode("4a") + [EOS])


@pytest.mark.parametrize("held_out", [1.0, 0.0])
def test_a_level_ends_on_its_held_out_figures_not_on_its_training_answers(tmp_path, monkeypatch, held_out):
    """With curriculum.advance_exact set, the level ends at the first check its held-out questions pass."""
    from engine.stages.levels import LevelPlan
    cfg = config(levels=2, max_steps=20, stages=["curriculum"])
    cfg.curriculum.advance_exact, cfg.curriculum.check_every, cfg.curriculum.max_epochs = 0.5, 3, 1000
    checked = []
    monkeypatch.setattr(LevelPlan, "check_exact", lambda self, model, level: checked.append(level) or held_out)
    trainer, events = run(tmp_path / "run", cfg)
    ended = trainer.stages["curriculum"].feed.queue.ended
    if held_out:
        assert trainer.step == 6 and checked == [1, 2] and trainer.stages["curriculum"].feed.queue.done
        assert [e["reason"] for e in ended.values()] == ["held-out", "held-out"]
        assert trainer.stages["curriculum"].reports["1"]["ended_on_held_out"] == 1.0
    else:
        assert trainer.step == 20 and checked == [1] * 6 and not ended  # never passed: level 1 to the step cap


def test_a_level_ends_on_a_plateau_of_its_held_out_check(tmp_path, monkeypatch):
    """With curriculum.advance_patience N, a level the model cannot pass ends once its check has not beaten its
    best for N checks in a row; a check that improves starts the count again; the last level goes on."""
    from engine.stages.levels import LevelPlan
    cfg = config(levels=2, max_steps=40, stages=["curriculum"])
    cfg.curriculum.advance_exact, cfg.curriculum.advance_patience = 0.9, 2
    cfg.curriculum.check_every, cfg.curriculum.max_epochs = 2, 1000
    # level 1: 0.1, 0.2 (better), 0.2, 0.15 -> plateau at its 4th check; level 2 (the last): flat to the step cap
    answers = iter([0.1, 0.2, 0.2, 0.15] + [0.3] * 20)
    checked = []
    monkeypatch.setattr(LevelPlan, "check_exact", lambda self, model, level: checked.append(level) or next(answers))
    trainer, events = run(tmp_path / "run", cfg)
    stage = trainer.stages["curriculum"]
    assert checked == [1] * 4 + [2] * 16 and trainer.step == 40 and not stage.feed.queue.done
    assert [e["reason"] for e in stage.feed.queue.ended.values()] == ["plateau"]
    assert stage.reports["1"]["ended_on_plateau"] == 1.0 and stage.reports["1"]["ended_on_held_out"] == 0.0
    saved = stage.state_dict()
    stage.best_check, stage.stale_checks = -1.0, 0
    stage.load_state_dict(saved)  # a resumed stage goes on counting from where it was
    assert (stage.best_check, stage.stale_checks) == (0.3, 15)


def test_the_held_out_checks_are_distinct_from_the_reported_probe():
    from engine.stages.levels import LevelPlan
    from engine.tasks.levels import LevelTask
    cfg = config()
    cfg.curriculum.check_size = 30
    plan = LevelPlan(cfg.pipeline, cfg.curriculum, LevelTask(2), torch.device("cpu"))
    probe, checks = {p.prompt for p in plan.held_out(2)}, {p.prompt for p in plan.checks(2)}
    assert len(probe) == cfg.pipeline.probe_size and len(checks) == 30 and not probe & checks
