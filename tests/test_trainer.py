"""The trainer in this process: the loop over stages, its one evaluator, mixed precision, the learning-rate
writer and the command table."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from engine import config, protocol
from engine.evaluate import evaluate_task
from engine.stages import Phase, StepResult
from engine.trainer import Trainer
from tests.helpers import ROOT, env, tiny_config


def trainer(tmp_path, max_steps=12, overrides=(), emit=None, ckpt_every=0) -> Trainer:
    tmp_path.mkdir(parents=True, exist_ok=True)
    cfg = config.load(tiny_config(tmp_path, max_steps=max_steps, ckpt_every=ckpt_every),
                      ["train.device=cpu", *overrides])
    return Trainer(tmp_path / "run", cfg, output="quiet", emit=emit)


def losses(events) -> list[float]:
    return [e["data"]["loss"] for e in events if e["event"] == "metrics"]


class CountingStage:
    """A stage the loop has never heard of: it counts its steps and is done after three."""

    name = "count"

    def __init__(self):
        self.steps = []

    def ready(self):
        return True

    def begin(self, step):
        pass

    def step(self, step):
        self.steps.append(step)
        return StepResult({"count": float(len(self.steps)), "step_time": 0.0}, True, [("alert", {"level": "warning",
                                                                                             "message": "counted"})])

    def end(self, step):
        return []

    def done(self):
        return len(self.steps) >= 3

    def state_dict(self):
        return {"steps": list(self.steps)}

    def load_state_dict(self, state):
        self.steps = list(state["steps"])


def test_a_new_stage_plugs_into_the_schedule_without_touching_the_loop(tmp_path):
    events = []
    tr = trainer(tmp_path, max_steps=20, emit=events.append)
    counting = CountingStage()
    tr.stages["count"] = counting
    tr.state.components["count"] = counting
    tr.schedule.__init__([Phase("wake", 2), Phase("count", 0), Phase("wake", 0)], repeat=False)
    assert tr.run() == 0
    assert counting.steps == [3, 4, 5]  # wake 1-2, then the new stage until it is done, then wake to the end
    phases = [(e["step"], e["data"]["phase"]) for e in events if e["event"] == "phase"]
    assert phases == [(2, "count"), (5, "wake")]
    assert tr.step == 20 and tr.schedule.current == "wake"
    assert [e["data"]["message"] for e in events if e["event"] == "alert"] == ["counted"] * 3


def test_a_schedule_that_runs_out_finishes_the_run(tmp_path):
    tr = trainer(tmp_path, max_steps=50)
    tr.schedule.__init__([Phase("wake", 4)], repeat=False)
    assert tr.run() == 0 and tr.step == 4 and tr.status == "finished"


def test_the_training_curve_and_lab_eval_grade_alike(tmp_path):
    events = []
    tr = trainer(tmp_path, max_steps=40, overrides=["eval.every=20", "eval.n_puzzles=32"], emit=events.append)
    assert tr.run() == 0
    curve = [e["data"]["eval_exact"] for e in events if e["event"] == "eval"]
    result = evaluate_task(tmp_path / "run", "sudoku", n=32, difficulty=tr.cfg.task.difficulty, store=False)
    assert len(curve) == 2 and result["by_difficulty"][str(tr.cfg.task.difficulty)] == curve[-1]


def test_a_run_on_a_mix_of_difficulties_is_graded_per_difficulty_by_lab_eval(tmp_path, monkeypatch):
    from engine.tasks import registry

    tr = trainer(tmp_path, max_steps=4, overrides=["task.difficulty=[1, 2, 3]"])
    assert tr.run() == 0
    asked, get_task = [], registry.get_task
    monkeypatch.setattr(registry, "get_task", lambda name, **params: asked.append(params) or get_task(name, **params))
    result = evaluate_task(tmp_path / "run", "sudoku", n=16, store=False)
    # the run's own task (for its layout), then one task per difficulty, each graded alone
    assert [p["difficulty"] for p in asked] == [[1, 2, 3], 1, 2, 3]
    assert list(result["by_difficulty"]) == ["1", "2", "3"]


def test_bfloat16_is_in_effect_and_stays_near_float32(tmp_path):
    curves, dtypes = {}, {}
    for dtype in ("float32", "bfloat16"):
        events, seen = [], set()
        tr = trainer(tmp_path / dtype, max_steps=30, overrides=[f"train.dtype={dtype}"], emit=events.append)
        tr.model.lm_head.register_forward_hook(lambda m, i, o: seen.add(o.dtype))
        assert tr.run() == 0
        curves[dtype], dtypes[dtype] = losses(events), seen
        assert all(p.dtype == torch.float32 for p in tr.model.parameters())  # master weights stay float32
    assert dtypes == {"float32": {torch.float32}, "bfloat16": {torch.bfloat16}}
    tail = {k: sum(v[-10:]) / 10 for k, v in curves.items()}
    # stated tolerance: the mean loss of the last 10 of 30 steps within 5% of float32's
    assert abs(tail["bfloat16"] - tail["float32"]) <= 0.05 * tail["float32"], tail


def test_float16_is_refused_off_cuda_with_one_sentence(tmp_path, runs_dir):
    with pytest.raises(config.ConfigError, match="float16.*train.device = 'cuda'"):
        config.load(tiny_config(tmp_path), ["train.dtype=float16"])
    out = subprocess.run([sys.executable, "-m", "lab.cli", "run", str(tiny_config(tmp_path)), "--headless",
                          "--set", "train.dtype=float16", "--runs-dir", str(runs_dir)],
                         capture_output=True, text=True, env=env(), cwd=ROOT, timeout=120)
    assert out.returncode == 2 and "float16" in out.stderr and "Traceback" not in out.stderr
    assert not any(runs_dir.iterdir())  # nothing written


@pytest.mark.parametrize("device, bf16, expected", [("cuda", True, "bfloat16"), ("cuda", False, "float32"),
                                                    ("cpu", True, "float32")])
def test_auto_dtype_is_bfloat16_only_on_a_cuda_device_that_supports_it(monkeypatch, device, bf16, expected):
    from engine.precision import resolve_dtype

    asked = []
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda **kw: asked.append(kw) or bf16)
    assert resolve_dtype("auto", torch.device(device)) == expected
    assert asked == ([{"including_emulation": False}] if device == "cuda" else [])  # emulated bf16 is slow
    for name in ("float32", "bfloat16"):
        assert resolve_dtype(name, torch.device(device)) == name  # an explicit choice is kept


def test_auto_is_the_default_and_the_run_says_what_it_resolved_to(tmp_path):
    events = []
    tr = trainer(tmp_path, max_steps=2, emit=events.append)
    assert tr.cfg.train.dtype == "auto" and tr.precision.name == "float32"  # CPU
    assert tr.run() == 0
    world = next(e["data"] for e in events if e["event"] == "world")
    assert (world["device"], world["dtype"]) == ("cpu", "float32")
    assert protocol.check_data("world", world) == []
    with pytest.raises(config.ConfigError, match="train.dtype.*auto"):
        config.load(tiny_config(tmp_path), ["train.dtype=half"])


def test_the_optimizer_alone_writes_learning_rates(tmp_path):
    sleepy = ["model.memory=titans-mag", "sleep.enabled=true", "sleep.wake_steps=3", "sleep.sleep_steps=3",
              "sleep.lr_scale=0.25", "optim.warmup_steps=0"]
    tr = trainer(tmp_path, max_steps=6, overrides=sleepy)
    base = [g["base_lr"] for g in tr.optimizer.param_groups]
    seen = []
    step = tr.optimizer.step

    def watched(lr_scale=1.0):
        step(lr_scale)
        seen.append((tr.schedule.current, [g["lr"] / g["base_lr"] for g in tr.optimizer.param_groups]))

    tr.optimizer.step = watched
    assert tr.run() == 0
    assert [g["base_lr"] for g in tr.optimizer.param_groups] == base  # nobody rewrote the base rates
    wake = [r for stage, rs in seen if stage == "wake" for r in rs]
    sleep = [r for stage, rs in seen if stage == "sleep" for r in rs]
    assert wake and sleep and all(r == pytest.approx(1.0) for r in wake)
    assert sleep[0] == pytest.approx(0.25)  # the consolidation rate, for that step only


def test_every_protocol_command_has_a_handler(tmp_path):
    tr = trainer(tmp_path)
    assert set(tr.commands.handlers) == set(protocol.COMMANDS)
    ok, error, _ = tr.commands.handlers["inspect"]({"slot": 99})
    assert not ok and "slot must be an integer from 0 to 15" in error
    ok, _, status = tr.commands.handlers["status"]({})
    assert ok and status["stage"] == "wake" and status["step"] == 0


@pytest.mark.slow
def test_compiled_and_eager_steps_agree_and_the_console_sees_compiling(tmp_path):
    # stated tolerance: each of 3 steps' loss within 1e-5 relative (inductor reorders float32 sums; the first
    # step is the same batch from the same weights in both runs)
    curves, statuses = {}, {}
    for compiled in (False, True):
        events = []
        tr = trainer(tmp_path / str(compiled), max_steps=3, overrides=[f"model.compile={str(compiled).lower()}"],
                     emit=events.append)
        assert tr.run() == 0
        curves[compiled] = losses(events)
        statuses[compiled] = [e["data"]["status"] for e in events if e["event"] == "status"]
        compile_seconds = [e["data"]["compile_seconds"] for e in events
                           if e["event"] == "metrics" and "compile_seconds" in e["data"]]
        assert len(compile_seconds) == (1 if compiled else 0)
    assert curves[True] == pytest.approx(curves[False], rel=1e-5)
    assert statuses[True][:3] == ["running", "compiling", "running"] and "compiling" not in statuses[False]
