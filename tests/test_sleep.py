"""Sleep/wake consolidation: the buffer, the scheduler, the consolidation modes and the trainer's use of them."""

from __future__ import annotations

import math

import pytest
import torch

from engine import checkpoint
from engine.config import ModelConfig, SleepConfig, from_dict
from engine.model.trm import TinyRecursiveModel
from engine.sleep import Consolidator, EpisodicBuffer
from engine.stages import Phase, Schedule
from engine.trainer import Trainer

torch.set_num_threads(1)


def config(max_steps=12, mode="replay", memory="titans-mag", wake=6, sleep=4, ckpt_every=0, enabled=True):
    model = {"d_model": 32, "n_layers": 1, "n_heads": 2, "H_cycles": 2, "L_cycles": 1, "halt_max_steps": 2,
             "memory": memory, "window": 4, "d_mem": 16, "memory_chunk": 4, "persistent_tokens": 2}
    return from_dict({
        "model": model, "task": {"name": "sudoku", "size": 4},
        "optim": {"lr": 3e-3, "warmup_steps": 2},
        "train": {"batch_size": 8, "max_steps": max_steps, "threads": 1, "device": "cpu"},
        "eval": {"every": 0}, "checkpoint": {"every": ckpt_every, "keep": 10},
        "log": {"flush_seconds": 0.05, "telemetry_seconds": 100.0, "print_seconds": 100.0},
        "sleep": {"enabled": enabled, "wake_steps": wake, "sleep_steps": sleep, "mode": mode, "probe_size": 8},
    })


def make_trainer(run_dir, cfg, **kw) -> Trainer:
    run_dir.mkdir(parents=True, exist_ok=True)
    return Trainer(run_dir, cfg, output="quiet", **kw)


def run(run_dir, cfg, resume=False):
    events = []
    trainer = make_trainer(run_dir, cfg, emit=events.append)
    if resume:
        trainer.resume()
    assert trainer.run() == 0
    return trainer, events


def ckpt(run_dir, step):
    return checkpoint.load(run_dir / "checkpoints" / f"step-{step:08d}")


# ---- pieces ----

def test_buffer_keeps_the_important_prunes_the_unimportant_unused_old():
    buf = EpisodicBuffer(capacity=3, seq_len=2, prune_importance=0.5, prune_usage=1, prune_age=10)
    x = torch.arange(10).view(5, 2)
    buf.add(x[:3], x[:3], torch.tensor([0.1, 2.0, 1.0]), step=0)
    buf.add(x[3:4], x[3:4], torch.tensor([0.05]), step=1)  # full, nothing prunable, less important: dropped
    assert buf.importance.tolist() == pytest.approx([0.1, 2.0, 1.0])
    buf.add(x[4:5], x[4:5], torch.tensor([0.05]), step=20)  # slot 0 is now unimportant, unused and old
    assert buf.inputs[0].tolist() == [8, 9] and int(buf.born[0]) == 20
    assert buf.prune(step=20) == 0  # the newcomer is young
    buf.usage[:] = 0
    assert buf.prune(step=40) == 1 and len(buf) == 2  # unimportant + unused + old: gone
    g = torch.Generator().manual_seed(0)
    idx = buf.sample(2000, g, by_importance=True)
    share = (idx == 0).float().mean().item()  # importance 2.0 against 1.0
    assert share == pytest.approx(2 / 3, abs=0.04)
    assert int(buf.usage.sum()) == 2000
    uniform = buf.sample(2000, g, by_importance=False)
    assert (uniform == 0).float().mean().item() == pytest.approx(0.5, abs=0.04)


def test_buffer_adds_a_batch_as_it_would_one_sample_at_a_time():
    g = torch.Generator().manual_seed(1)
    whole = EpisodicBuffer(capacity=10, seq_len=3, prune_importance=0.3, prune_usage=1, prune_age=2)
    single = EpisodicBuffer(capacity=10, seq_len=3, prune_importance=0.3, prune_usage=1, prune_age=2)
    for step in range(6):  # batches of 4 fill the buffer mid-batch at step 2, then replace
        x = torch.randint(100, (4, 3), generator=g)
        imp = torch.rand(4, generator=g)
        whole.add(x, x + 1, imp, step)
        for i in range(4):
            single.add(x[i:i + 1], x[i:i + 1] + 1, imp[i:i + 1], step)
    for name, t in whole.state_dict().items():
        assert torch.equal(t, single.state_dict()[name]), name
    assert len(whole) == 10 and int(whole.born.max()) > 2  # later samples did replace kept ones


class _Ready:
    def __init__(self, ready=True):
        self.is_ready = ready

    def ready(self):
        return self.is_ready

    def done(self):
        return False


def test_schedule_wakes_sleeps_and_takes_requests():
    stages = {"wake": _Ready(), "sleep": _Ready()}
    s = Schedule([Phase("wake", 3), Phase("sleep", 2)])
    phases = []
    for step in range(8):
        target = s.due(step, stages)
        if target is not None:
            s.switch(step, target)
        phases.append(s.current if target is not None else None)
    assert phases == [None, None, None, "sleep", None, "wake", None, None]
    s.request("sleep")
    assert s.due(8, stages) == 1
    s.switch(8, 1)
    assert s.manual and s.begun == {"sleep": 2, "wake": 1}
    s2 = Schedule([Phase("wake", 3), Phase("sleep", 2)])
    s2.load_state_dict(s.state_dict())
    assert s2.state_dict() == s.state_dict()
    stages["sleep"].is_ready = False  # nothing to consolidate: wake goes on past its steps
    s3 = Schedule([Phase("wake", 3), Phase("sleep", 2)])
    assert s3.due(5, stages) is None and s3.current == "wake"


def test_lr_safeguard_halves_on_spike_and_raises_when_tiny():
    c = Consolidator(SleepConfig(lr_scale=1.0, spike_factor=2.0, tiny_loss=0.01), batch_size=4)
    c.adapt(1.0)
    assert c.lr == 1.0
    c.adapt(5.0)  # a spike
    assert c.lr == 0.5
    c.adapt(0.001)
    assert c.lr == pytest.approx(0.6)


def test_distill_teaches_the_memory_free_path_the_memory_assisted_answer():
    torch.manual_seed(0)
    cfg = ModelConfig(d_model=32, n_layers=1, n_heads=2, H_cycles=2, L_cycles=1, halt_max_steps=2,
                      memory="titans-mag", window=4, d_mem=16, memory_chunk=4, persistent_tokens=2,
                      memory_theta_max=2.0)
    model = TinyRecursiveModel(cfg, vocab_size=6, seq_len=12)
    buffer = EpisodicBuffer(64, 12, prune_importance=0.0, prune_usage=0, prune_age=0)
    consolidator = Consolidator(SleepConfig(mode="distill", buffer_size=64, tiny_loss=0.0), batch_size=32)
    x = torch.randint(1, 6, (64, 12), generator=torch.Generator().manual_seed(1))
    buffer.add(x, x, torch.ones(64), step=0)
    consolidator.begin(model)
    teacher = consolidator.teacher
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(2)

    def consolidation_step() -> float:
        model.train()
        loss = consolidator.loss(model, consolidator.next_batch(buffer, g, "cpu"))
        loss.backward()
        opt.step()
        opt.zero_grad()
        return float(loss.detach())

    def gap():  # KL from the memory-assisted teacher to the memory-free student
        t, _ = teacher.predict_logits(x, n_steps=1)
        s, _ = model.predict_logits(x, n_steps=1, memory_free=True)
        return torch.nn.functional.kl_div(s.log_softmax(-1), t.log_softmax(-1), log_target=True,
                                          reduction="batchmean").item()

    model.eval()
    before = gap()
    assert before > 1e-4  # the memory does change the answer
    losses = [consolidation_step() for _ in range(50)]
    model.eval()
    assert gap() < 0.25 * before and losses[-1] < 0.5 * losses[0]
    assert all(not p.requires_grad for p in teacher.parameters())


# ---- in the trainer ----

def test_a_sleep_phase_consolidates_into_the_slow_weights(tmp_path):
    cfg = config(max_steps=12, ckpt_every=1)
    trainer, events = run(tmp_path / "a", cfg)
    phases = [(e["step"], e["data"]) for e in events if e["event"] == "phase"]
    assert phases == [(6, {"phase": "sleep", "manual": False}), (10, {"phase": "wake", "manual": False})]
    [consolidation] = [e["data"] for e in events if e["event"] == "consolidation"]
    for key in ("memory_change", "weights_change", "importance_change", "consolidation_loss", "retention_before",
                "retention_after"):
        assert math.isfinite(consolidation[key]), key
    asleep, awake = ckpt(tmp_path / "a", 6), ckpt(tmp_path / "a", 10)  # just before the sleep, at its last step
    assert asleep.state["schedule"]["stage"] == "wake" and awake.state["schedule"]["stage"] == "sleep"
    # only sleep steps lie between the two: the task stream stood still, the slow weights moved
    assert asleep.state["wake"]["data_index"] == awake.state["wake"]["data_index"]
    moved = {k for k in asleep.tensors if k.startswith("model.") and not torch.equal(asleep.tensors[k], awake.tensors[k])}
    assert moved
    # the event's figures are the change between those two checkpoints
    names = trainer.stages["sleep"].memory_names
    memory_sq = sum(float((awake.tensors[f"model.{n}"] - asleep.tensors[f"model.{n}"]).square().sum()) for n in names)
    slow_sq = sum(float((awake.tensors[k] - asleep.tensors[k]).square().sum()) for k in asleep.tensors
                  if k.startswith("model.") and k[6:] not in names and asleep.tensors[k].is_floating_point()
                  and not k.endswith(("H_init", "L_init")))
    assert consolidation["memory_change"] == pytest.approx(math.sqrt(memory_sq), rel=1e-4)
    assert consolidation["weights_change"] == pytest.approx(math.sqrt(slow_sq), rel=1e-4)
    assert consolidation["memory_change"] > 0 and consolidation["weights_change"] > 0
    assert len(trainer.stages["sleep"].buffer) > 0


def test_sleep_leaves_the_stream_and_carry_alone(tmp_path):
    cfg = config(max_steps=10, wake=6, sleep=4, ckpt_every=1)
    run(tmp_path / "a", cfg)
    s6, s10 = ckpt(tmp_path / "a", 6), ckpt(tmp_path / "a", 10)
    assert s6.state["wake"]["data_index"] == s10.state["wake"]["data_index"]  # no task samples drawn while asleep
    assert all(torch.equal(v, s10.state["wake"]["carry"][k]) for k, v in s6.state["wake"]["carry"].items())
    assert any(not torch.equal(s6.tensors[k], s10.tensors[k]) for k in s6.tensors if k.startswith("model."))


@pytest.mark.parametrize("mode", ["replay-surprise", "distill", "dream"])
def test_resume_mid_sleep_continues_identically(tmp_path, mode):
    straight, _ = run(tmp_path / "a", config(max_steps=12, mode=mode))
    run(tmp_path / "b", config(max_steps=8, mode=mode))  # stops (and checkpoints) at step 8, asleep
    assert ckpt(tmp_path / "b", 8).state["schedule"]["stage"] == "sleep"
    resumed, events = run(tmp_path / "b", config(max_steps=12, mode=mode), resume=True)
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [e["data"]["phase"] for e in events if e["event"] == "phase"] == ["wake"]
    assert torch.equal(straight.stages["sleep"].buffer.importance, resumed.stages["sleep"].buffer.importance)


def test_bad_sleep_commands_are_refused_and_change_nothing(tmp_path):
    def sleep(trainer):
        return trainer.commands.handlers["sleep"]({})

    off = make_trainer(tmp_path / "off", config(enabled=False))
    ok, error, _ = sleep(off)
    assert not ok and "not available" in error

    no_memory = make_trainer(tmp_path / "none", config(memory="none"))
    no_memory.wake.step(1)
    ok, error, _ = sleep(no_memory)
    assert not ok and "model.memory" in error and no_memory.schedule.requested is None

    t = make_trainer(tmp_path / "t", config())
    before = t.schedule.state_dict()
    ok, error, _ = sleep(t)  # nothing seen yet
    assert not ok and "buffer is empty" in error
    assert t.schedule.state_dict() == before

    t.wake.step(1)
    t.step = 1
    ok, error, _ = sleep(t)
    assert ok and error is None
    ok, error, _ = sleep(t)
    assert not ok and "already requested" in error
    events = []
    t.recorder.extra_emit = events.append
    t._advance_schedule()
    assert [(e["event"], e["data"]) for e in events] == [("phase", {"phase": "sleep", "manual": True})]
    state = t.schedule.state_dict()
    ok, error, _ = sleep(t)
    assert not ok and "already asleep" in error and t.schedule.state_dict() == state
