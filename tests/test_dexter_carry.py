"""task.carry_turns: a conversation's follow-up turn continues its slot with the latents the earlier turn left,
in training (the wake stage) and through the API (the latents go from call to call)."""

from pathlib import Path

import pytest
import torch

from engine import config
from engine.build import build_model
from engine.config import ConfigError
from engine.dexter.api import MemoryTRM
from engine.dexter.dataset import build
from engine.dexter.sample import write_sample
from engine.dexter.task import Layout
from engine.tasks.registry import get_task
from engine.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]

TINY = ["model.d_model=16", "model.n_layers=1", "model.n_heads=2", "model.H_cycles=1", "model.L_cycles=1",
        "model.halt_max_steps=2", "train.batch_size=4", "train.threads=1", "train.device=cpu", "eval.every=0",
        "checkpoint.every=0"]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("dexter")
    write_sample(root / "raw", seed=5, size=120)
    build(root / "raw", root / "built")
    return root / "built"


def test_a_chain_is_a_conversations_turns_in_order_and_a_follow_up_is_its_query_alone(built):
    task = get_task("dexter-memory", path=str(built), carry_turns=True)
    plain = get_task("dexter-memory", path=str(built))
    rows = task.examples["train"]
    chains = [task.chain("train", i) for i in range(len(task.chains["train"]))]
    assert sorted(i for c in chains for i in c) == list(range(len(rows)))  # a pass holds every example once
    long = next(c for c in chains if len(c) > 1)
    assert len({rows[i]["group"] for i in long}) == 1 and [rows[i]["turn"] for i in long] == sorted(
        rows[i]["turn"] for i in long)
    follow = rows[long[1]]
    assert follow["context"] and task.input_of(follow) == f"<MEM_QUERY> {follow['query']}"
    assert plain.input_of(follow) == follow["input"] and "context:" in follow["input"]
    with pytest.raises(ConfigError, match="does not take carry_turns"):
        get_task("dexter-tool", path=str(built), carry_turns=True)
    with pytest.raises(ConfigError, match="does not take task.carry_turns"):
        config.from_dict({"task": {"name": "dexter-tool", "path": str(built), "carry_turns": True}})
    with pytest.raises(ConfigError, match="curriculum.enabled = false"):
        config.from_dict({"task": {"name": "dexter-memory", "path": str(built), "carry_turns": True},
                          "curriculum": {"enabled": True}})


def test_the_wake_stage_keeps_a_slots_latents_into_its_conversations_next_turn(built, tmp_path):
    cfg = config.from_dict({"task": {"name": "dexter-memory", "path": str(built), "carry_turns": True},
                            "train": {"max_steps": 40}}, overrides=TINY)
    trainer = Trainer(tmp_path / "run", cfg, output="quiet")
    wake, task = trainer.wake, trainer.task
    seen_follow_up = False
    for step in range(1, 9):
        before = wake.carry
        halted, turn = wake.halted.clone(), wake.turn.clone()
        inputs, _ = wake.next_data()
        going_on = halted & (wake.turn == turn + 1)
        for g in range(wake.batch_size):
            if not halted[g]:
                continue
            example = task.chain("train", int(wake.chain_of[g]))[wake.turn[g]]
            assert inputs[g].tolist() == task.turn_sample("train", example).inputs
            if going_on[g]:  # a follow-up: its latents are the earlier turn's, not the initial ones
                seen_follow_up = True
                assert torch.equal(wake.carry.z_H[g], before.z_H[g]) and not wake.carry.halted[g]
                assert int(wake.carry.steps[g]) == 0
        wake.carry, wake.halted = before, halted  # undo, then take the step for real
        wake.turn, wake.data_index = turn, wake.data_index - int((halted & ~going_on).sum())
        assert trainer.wake.step(step).finite
    assert seen_follow_up
    state = wake.state_dict()
    assert torch.equal(state["chains"][1], wake.turn)


def test_the_api_carries_latents_only_for_a_model_trained_to_read_them(built):
    cfg = config.load(ROOT / "configs" / "dexter-memory.toml", [f"task.path={built}"] + TINY[:6])
    layout = Layout("memory", built)
    torch.manual_seed(0)
    model = build_model(cfg, layout)
    carried = MemoryTRM(model, layout, use_carry=True, carry_latents=True, halt_early=False)
    reset = MemoryTRM(model, layout, use_carry=True, carry_latents=False, halt_early=False)
    alone = carried.retrieve("tell me more")
    assert alone == reset.retrieve("tell me more") and carried.latents is not None
    carried.reset_carry()
    carried.retrieve("what website projects do I have?")
    kept = carried.latents
    follow = carried.retrieve("tell me more")
    assert follow["context"] == ""  # the conversation rides in the latents, not in text
    z_H, _, _ = model.recur(torch.tensor([layout.query("<MEM_QUERY> tell me more", "<MEM_FACT>")[0]]), kept)
    assert not torch.equal(model.recur(torch.tensor([layout.query("<MEM_QUERY> tell me more",
                                                                  "<MEM_FACT>")[0]]))[0], z_H)
    assert reset.retrieve("tell me more")["context"] == "tell me more"  # text carry: the earlier query
    carried.reset_carry()
    assert carried.latents is None and carried.retrieve("tell me more") == alone


def test_a_text_probe_answers_and_shows_the_carry_moving(built, tmp_path):
    from engine.probe import probe

    cfg = config.from_dict({"task": {"name": "dexter-memory", "path": str(built), "carry_turns": True}},
                           overrides=TINY)
    trainer = Trainer(tmp_path / "run", cfg, output="quiet")
    model, task, cpu = trainer.ema, trainer.task, torch.device("cpu")
    ok, error, first = probe(model, task, cpu, {"input": "what website projects do I have?", "reset": True})
    assert ok and error is None and first["answer"].startswith("<MEM_FACT>") and not first["carried"]
    assert first["z_H_change"] > 0 and first["steps"] == 2
    ok, _, follow = probe(model, task, cpu, {"input": "tell me more"})
    assert ok and follow["carried"]  # the follow-up starts from the first probe's latents
    ok, _, alone = probe(model, task, cpu, {"input": "tell me more", "reset": True})
    assert ok and not alone["carried"] and alone["z_H_change"] != follow["z_H_change"]
    for bad in ("", "x " * 400, 7):
        ok, error, _ = probe(model, task, cpu, {"input": bad})
        assert not ok and error.endswith(".") and "\n" not in error


def test_lab_ctl_probe_sends_text_and_refuses_bad_use_with_exit_2(tmp_path, capsys):
    from lab import cli
    from tests.fake_engine import FakeEngine

    fake = FakeEngine(tmp_path / "fake-run")
    (fake.run_dir / "config.toml").write_text("")  # what makes a folder a run for `lab ctl`
    fake.start()
    try:
        rd = ["--runs-dir", str(tmp_path)]
        assert cli.main(["ctl", "fake-run", "probe", "tell me more", "--reset", *rd]) == 0
        assert "z_H_change" in capsys.readouterr().out and fake.commands[-1].args == {"input": "tell me more",
                                                                                 "reset": True}
        for argv in (["probe"], ["status", "some text"]):
            assert cli.main(["ctl", "fake-run", *argv, *rd]) == 2
            assert capsys.readouterr().err.count("\n") == 1
    finally:
        fake.stop()


def test_held_out_follow_ups_are_graded_with_their_conversations_latents(built, tmp_path):
    from engine.evaluate import carried_predictions, count_right, grade, held_out, predictions, score

    cfg = config.from_dict({"task": {"name": "dexter-memory", "path": str(built), "carry_turns": True}},
                           overrides=TINY)
    trainer = Trainer(tmp_path / "run", cfg, output="quiet")
    model, task = trainer.model.eval(), trainer.task
    n = task.size("test")
    carried = carried_predictions(model, task, "test", range(n), batch_size=3)
    assert sorted(carried) == list(range(n))
    chain = next(c for c in task.chains["test"] if len(c) > 2)
    latents, moved = None, 0
    for example in chain:  # by hand: each turn from the latents the turn before it left
        x = torch.tensor([task.turn_sample("test", example).inputs])
        logits, _, (z_H, z_L, _) = model.recur(x, latents, memory=model.initial_memory(1))
        assert torch.equal(carried[example], logits.argmax(-1)[0])
        fresh = model.recur(x, None, memory=model.initial_memory(1))[0].argmax(-1)[0]
        moved += latents is not None and not torch.equal(fresh, carried[example])
        latents = (z_H, z_L)
    assert moved  # the carry changes a follow-up's answer, so grading it alone would grade something else
    inputs, labels = held_out(task, n)
    preds = torch.stack([carried[i] for i in range(n)])
    assert torch.equal(predictions(model, task, inputs, batch_size=5), preds)
    assert torch.equal(predictions(model, task, inputs[4:9], batch_size=2, first=4), preds[4:9])
    exact, cells, total = count_right(model, task, inputs, labels, batch_size=5)
    assert exact == int(grade(task, "test", list(range(n)), preds, labels).sum())
    assert (cells, total) == (int(score(preds, labels)[1].sum()), int((labels != 0).sum()))
    assert trainer.evaluate()["eval_exact"] == pytest.approx(  # the kept-checkpoint figure is this one
        count_right(trainer.ema, task, *held_out(task, cfg.eval.n_puzzles), 7)[0] / cfg.eval.n_puzzles)
