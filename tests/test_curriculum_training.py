"""The curriculum queue as the trainer's batch source: events, shrinking, resume, and `lab eval --task`."""

import shutil
import subprocess
import sys

import pytest
import torch

from engine import checkpoint
from engine.config import from_dict, to_toml
from engine.evaluate import EvalError, evaluate_task
from engine.store import RunReader
from engine.tasks.tokenizer import SEP, stable_int
from engine.trainer import Trainer
from tests.helpers import ROOT, env

torch.set_num_threads(1)


def config(max_steps=40, questions=20, mastery=2, ckpt_every=0):
    return from_dict({
        "model": {"d_model": 16, "n_layers": 1, "n_heads": 2, "H_cycles": 1, "L_cycles": 1, "halt_max_steps": 2},
        "task": {"name": "arithmetic"},
        "optim": {"lr": 3e-3, "warmup_steps": 2},
        "train": {"batch_size": 8, "max_steps": max_steps, "threads": 1, "device": "cpu"},
        "eval": {"every": 0}, "checkpoint": {"every": ckpt_every, "keep": 10},
        "log": {"flush_seconds": 0.05, "telemetry_seconds": 100.0, "print_seconds": 100.0},
        "curriculum": {"enabled": True, "questions": questions, "levels": 1, "mastery": mastery,
                       "max_epochs": 1000},
    })


def trainer(run_dir, cfg, grade=None):
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.toml").write_text(to_toml(cfg))  # what `lab eval` reads
    events = []
    tr = Trainer(run_dir, cfg, output="quiet", emit=events.append)
    if grade is not None:
        tr.wake.feed.provider.grade = grade
    return tr, events


def curriculum_events(events):
    return [(e["step"], e["data"]) for e in events if e["event"] == "curriculum"]


def always_right(problem, predicted, sample=None):
    return True


def model_dependent(problem, predicted, sample=None):
    """Right or wrong by the model's first answer token and the question: mixed, and only
    reproducible if the resumed model, carry and queue are exactly the interrupted ones."""
    return (predicted[sample.inputs.index(SEP) + 1] + stable_int(problem.prompt)) % 3 == 0


def test_queue_is_the_batch_source_and_shrinks_until_the_run_ends(tmp_path):
    tr, events = trainer(tmp_path / "run", config(max_steps=200), grade=always_right)
    served = []
    fill = tr.wake.feed.fill
    tr.wake.feed.fill = lambda need: served.append(fill(need)) or served[-1]
    assert tr.run() == 0
    # every slot halts within halt_max_steps = 2, so 20 questions x 2 masteries take about 40/8 x 2 steps
    assert tr.wake.feed.done and tr.step < 20
    # the slots were fed the queue's questions, not the task stream
    assert served[0] and all(len(s.inputs) == tr.task.seq_len for s in served[0].values()) and tr.wake.data_index == 0
    assert tr.carry.inputs[0].tolist() in [s.inputs for batch in served for s in batch.values()]

    cur = curriculum_events(events)
    remaining = [d["remaining"] for _, d in cur]
    assert remaining[0] <= 20 and remaining[-1] == 0 and remaining == sorted(remaining, reverse=True)
    assert any("level_end" in d["changes"] for _, d in cur) and cur[-1][1]["done"]
    last = cur[-1][1]["item"]  # what the console's queue table draws
    graded = sum(int(d["item"]["id"].rsplit(" ", 1)[1]) for _, d in cur)  # "L1 batch of 8"
    assert last["pass"] == graded >= 40 and last["fail"] == 0
    assert sum(d["mastered"] for _, d in cur) == 20

    r = RunReader(tmp_path / "run")
    assert r.run()["status"] == "finished"
    rows = r.metric("curriculum/remaining")
    assert rows[0][2] > rows[-1][2] == 0
    assert {row[2] for row in r.metric("curriculum/level")} == {1.0}
    stored = r.events(kinds=["curriculum"])
    assert len(stored) == len(cur) and stored[-1]["data"]["remaining"] == 0

    # the console's curriculum pane draws exactly this queue from the stored events
    from widgets.curriculum import CurriculumHistory

    pane = CurriculumHistory()
    for e in stored:
        pane.add(e["step"], e["data"])
    assert pane.level == 1 and pane.remaining[1].last == 0 and pane.remaining[1].values[0] == remaining[0]
    assert pane.items[-1]["pass"] == graded and pane.items[-1]["fail"] == 0


def test_wrong_answers_get_hints_and_keep_the_queue_full(tmp_path):
    # always wrong: an untrained model, given practice, not hints
    tr, events = trainer(tmp_path / "run", config(max_steps=12), grade=lambda *a, **k: False)
    assert tr.run() == 0
    cur = curriculum_events(events)
    assert cur and all(d["remaining"] == 20 for _, d in cur)
    assert cur[-1][1]["item"]["fail"] > 0 and cur[-1][1]["item"]["pass"] == 0
    assert cur[-1][1]["item"]["hint"] == 0 and cur[-1][1]["by_hint"] == {"0": 20}

    # right on most questions, wrong on a quarter of them every time: those get hints and stay
    def stubborn(problem, predicted, sample=None):
        return stable_int(problem.prompt) % 4 != 0

    tr, events = trainer(tmp_path / "run2", config(max_steps=24, mastery=1), grade=stubborn)
    assert tr.run() == 0
    last = curriculum_events(events)[-1][1]
    assert 0 < last["remaining"] <= 10 and last["item"]["hint"] > 0 and any(k != "0" for k in last["by_hint"])


def test_resume_continues_the_queue_exactly(tmp_path):
    cfg = config(max_steps=12, questions=12, mastery=1, ckpt_every=6)
    full, full_events = trainer(tmp_path / "full", cfg, grade=model_dependent)
    assert full.run() == 0
    state = full.wake.feed.state_dict()
    assert 0 < state["queue"]["remaining"] < 12 or state["queue"]["level"] > 1 or state["queue"]["done"]

    # the same run killed after its step-6 checkpoint, then resumed
    shutil.copytree(tmp_path / "full", tmp_path / "resumed")
    shutil.rmtree(tmp_path / "resumed" / "checkpoints" / "step-00000012")
    (tmp_path / "resumed" / "engine.sock").unlink(missing_ok=True)
    saved = checkpoint.load(tmp_path / "resumed" / "checkpoints" / "step-00000006")
    assert saved.state["wake"]["curriculum"]["queue"]["cursor"] >= 0  # the queue is in the checkpoint (weights_only load)
    resumed, resumed_events = trainer(tmp_path / "resumed", cfg, grade=model_dependent)
    resumed.resume()
    assert resumed.step == 6
    assert resumed.run() == 0
    assert resumed.wake.feed.state_dict() == state
    after = [(s, d) for s, d in curriculum_events(full_events) if s > 6]
    assert after and curriculum_events(resumed_events) == after


def test_eval_task_reports_per_difficulty_and_level_and_is_stored(tmp_path):
    run = tmp_path / "run"
    tr, _ = trainer(run, config(max_steps=4))
    assert tr.run() == 0
    result = evaluate_task(run, "arithmetic", n=12)
    assert set(result["by_difficulty"]) == {"1", "2", "3"} and set(result["by_level"]) == {"1"}
    assert result["exact"] == pytest.approx(sum(result["by_difficulty"].values()) / 3)
    assert result["by_level"]["1"] == result["by_difficulty"]["1"]  # one level: all difficulty 1
    only = evaluate_task(run, "arithmetic", n=12, difficulty=2, store=False)
    assert only["by_difficulty"] == {"2": result["by_difficulty"]["2"]} and "by_level" not in only
    r = RunReader(run)
    assert [e["data"]["task"] for e in r.events(kinds=["eval"])] == ["arithmetic"]
    assert r.metric("eval/arithmetic/d3")[0][2] == result["by_difficulty"]["3"]

    with pytest.raises(EvalError, match="no task 'nope'"):
        evaluate_task(run, "nope", n=5)
    with pytest.raises(EvalError, match="out of range"):
        evaluate_task(run, "arithmetic", n=5, difficulty=4)
    with pytest.raises(EvalError, match="cannot read it"):
        evaluate_task(run, "sudoku", n=5)


def test_cli_eval_task_bad_input_is_one_sentence_and_exit_2(tmp_path):
    run = tmp_path / "runs" / "r1"
    tr, _ = trainer(run, config(max_steps=2))
    assert tr.run() == 0
    lab = [sys.executable, "-m", "lab.cli", "eval", "r1", "--runs-dir", str(tmp_path / "runs")]
    for extra, words in ((["--task", "nope"], "no task"), (["--task", "arithmetic", "--difficulty", "7"], "out of range"),
                         ([], "exactly one of")):
        out = subprocess.run(lab + extra, capture_output=True, text=True, env=env(), cwd=ROOT, timeout=120)
        assert out.returncode == 2 and words in out.stderr and "Traceback" not in out.stderr, out.stderr
    out = subprocess.run(lab + ["--task", "arithmetic", "--n", "5", "--json"], capture_output=True, text=True,
                         env=env(), cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert '"by_difficulty"' in out.stdout
