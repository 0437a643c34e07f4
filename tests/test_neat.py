"""The sleep-wake plan's mechanisms (configs/neat.toml): each key, its default that keeps the old behaviour, and
the figures the console shows."""

from __future__ import annotations

import pytest
import torch

from engine import protocol
from engine.accumulate import MicroBatches
from engine.build import build_model, build_schedule, make_task
from engine.config import ConfigError, SleepConfig, from_dict, load
from engine.model.titans import NeuralMemory, start_stats, take_stats, write_mask
from engine.sleep import EpisodicBuffer
from engine.stages import Phase
from engine.store import RunReader
from tests.test_sleep import config as sleep_config
from tests.test_sleep import make_trainer

torch.set_num_threads(1)


# ---- config ----

@pytest.mark.parametrize("section, values, needle", [
    ("sleep", {"modes": ["distill", "rem"]}, "sleep.modes"),
    ("sleep", {"importance_decay": 1.5}, "sleep.importance_decay"),
    ("sleep", {"consolidation_strength": -0.1}, "sleep.consolidation_strength"),
    ("sleep", {"prune": "daily"}, "sleep.prune"),
    ("sleep", {"prune_every": 0}, "sleep.prune_every"),
    ("sleep", {"warmup_sleep_steps": 200, "sleep_steps": 100}, "sleep.warmup_sleep_steps"),
    ("sleep", {"warmup_sleeps": 0}, "sleep.warmup_sleeps"),
    ("train", {"ram_limit": 0.0}, "train.ram_limit"),
    ("train", {"accumulation": 9, "batch_size": 8}, "train.accumulation"),
    ("model", {"memory_surprise_threshold": -1.0}, "model.memory_surprise_threshold"),
    ("model", {"memory_max_updates": -1}, "model.memory_max_updates"),
])
def test_bad_plan_keys_are_refused_in_one_sentence_naming_the_key(section, values, needle):
    with pytest.raises(ConfigError) as e:
        from_dict({section: values}, where="x.toml")
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_the_plan_keys_default_to_the_old_behaviour_and_the_presets_set_the_plan_values():
    s = SleepConfig()
    assert (s.importance_decay, s.consolidation_threshold, s.consolidation_strength, s.prune, s.modes) == (
        1.0, 0.0, 1.0, "sleep", [])
    assert (s.warmup_steps, s.warmup_sleep_steps) == (0, 0)
    for path in ("configs/neat.toml", "configs/neat-cpu.toml"):
        cfg = load(path)
        s, m, t = cfg.sleep, cfg.model, cfg.train
        assert (s.importance_decay, s.consolidation_threshold, s.consolidation_strength) == (0.95, 0.7, 0.5)
        assert (s.prune, s.prune_usage, s.prune_importance, s.modes) == ("interval", 5, 0.7, ["distill", "dream"])
        assert (m.memory_surprise_threshold, m.memory_max_updates, t.ram_limit, t.accumulation) == (0.5, 10, 0.75, 2)
    assert load("configs/neat.toml").sleep.prune_age == 1000


def test_the_neat_preset_has_the_plans_shape_and_its_parameter_count_is_pinned(monkeypatch):
    cfg = load("configs/neat.toml")
    assert (cfg.model.d_model, cfg.model.n_layers, cfg.model.n_heads, cfg.model.expansion) == (768, 12, 12, 4.0)
    for name in ("trunc_normal_", "normal_", "kaiming_uniform_", "uniform_", "zeros_"):
        # the count does not depend on the values: drawing 118M of them takes minutes on a shared core
        monkeypatch.setattr(torch.nn.init, name, lambda t, *args, **kwargs: t)
    model = build_model(cfg, make_task(cfg))
    assert sum(p.numel() for p in model.parameters()) == 118_585_778  # what `lab config show` prints


# ---- schedule: the sleep warm-up ----

def test_warm_up_keeps_the_first_wake_long_and_grows_the_sleeps():
    assert [Phase("sleep", 100, 20, 4).length(n) for n in range(1, 7)] == [20, 40, 60, 80, 100, 100]
    assert Phase("sleep", 100).length(1) == 100  # no warm-up: full length from the start
    cfg = sleep_config(wake=3, sleep=4)
    cfg.sleep.warmup_steps, cfg.sleep.warmup_sleep_steps, cfg.sleep.warmup_sleeps = 7, 2, 2
    schedule = build_schedule(cfg)
    ready = type("Ready", (), {"ready": lambda self: True, "done": lambda self: False})()
    switches = []
    for step in range(30):
        target = schedule.due(step, {"wake": ready, "sleep": ready})
        if target is not None:
            schedule.switch(step, target)
            switches.append((step, schedule.current))
    # no sleep in the first 7 steps; sleeps of 2, then 3, then 4 steps; wakes of 3 after the first
    assert switches[:6] == [(7, "sleep"), (9, "wake"), (12, "sleep"), (15, "wake"), (18, "sleep"), (22, "wake")]


# ---- the episodic buffer: decay, threshold, the plan's pruning ----

def test_importance_decays_and_sleep_draws_only_samples_above_the_threshold():
    buf = EpisodicBuffer(capacity=4, seq_len=2, prune_importance=0.7, prune_usage=5, prune_age=10)
    x = torch.arange(8).view(4, 2)
    buf.add(x, x, torch.tensor([2.0, 0.9, 0.5, 1.0]), step=0)
    buf.decay(0.95)
    assert buf.importance.tolist() == pytest.approx([1.9, 0.855, 0.475, 0.95])
    assert buf.important(0.9).tolist() == [True, False, False, True]
    g = torch.Generator().manual_seed(0)
    for by_importance in (False, True):
        idx = buf.sample(400, g, by_importance, above=0.9)
        assert set(idx.tolist()) == {0, 3}
    assert buf.prune(step=11) == 1 and len(buf) == 3  # the plan's rule: below 0.7, used < 5 times, older than 10


def test_memory_write_mask_applies_the_threshold_then_the_cap_most_surprising_first():
    surprise = torch.tensor([[0.2, 0.9, 0.6, 0.7], [0.1, 0.1, 0.8, 0.3]])
    assert write_mask(surprise, 0.5, None).tolist() == [[False, True, True, True], [False, False, True, False]]
    capped = write_mask(surprise, 0.5, torch.tensor([2, 0]))
    assert capped.tolist() == [[False, True, False, True], [False, False, False, False]]


def test_a_memory_above_every_surprise_writes_nothing_and_the_cap_bounds_the_writes():
    torch.manual_seed(0)
    x = torch.randn(2, 32, 16)
    plain = NeuralMemory(16, d_mem=8, chunk_size=4, n_heads=2)
    for threshold, cap, written in ((0.0, 0, 2 * 2 * 32), (1e6, 0, 0), (0.0, 5, 2 * 2 * 5)):
        mem = NeuralMemory(16, d_mem=8, chunk_size=4, n_heads=2, surprise_threshold=threshold, max_updates=cap)
        mem.load_state_dict(plain.state_dict())
        start_stats(mem)
        out, state = mem(x)
        rates = take_stats(mem)
        assert rates["memory_update_rate"] * 2 * 2 * 32 == pytest.approx(written)
        if written == 0:  # momentum and decay alone, from an empty memory: nothing memorised
            assert all(float(t.detach().abs().max()) == 0 for t in state.values())
    out_plain, _ = plain(x)
    mem = NeuralMemory(16, d_mem=8, chunk_size=4, n_heads=2)
    mem.load_state_dict(plain.state_dict())
    start_stats(mem)  # counting changes nothing in what the memory computes
    assert torch.equal(mem(x)[0], out_plain)


# ---- micro-batches: accumulation and the RAM limit ----

def test_accumulation_is_a_floor_of_the_chunks_and_ram_pressure_backs_off():
    micro = MicroBatches(16, least=4)
    assert micro.chunks == 4 and micro.size() == 4
    change = micro.under_pressure(5, 0.9, 0.75, "RAM")
    assert change is not None and "RAM at 90% of the machine (limit 75%)" in change.reason and micro.chunks == 8
    assert micro.under_pressure(6, 0.9, 0.75, "RAM") is None  # cooling down
    assert micro.grow(500, None, 0.85, ram=0.7, ram_limit=0.75) is None  # RAM still near its limit
    assert micro.grow(500, None, 0.85, ram=0.3, ram_limit=0.75) is not None and micro.chunks == 4
    assert not micro.grow_due(10_000)  # never below the user's accumulation


# ---- a run with every mechanism on ----

def test_a_run_with_the_plan_mechanisms_records_the_memory_and_sleep_figures(tmp_path):
    cfg = sleep_config(max_steps=11, wake=3, sleep=2)
    cfg.model.memory_surprise_threshold, cfg.model.memory_max_updates = 0.5, 6
    s = cfg.sleep
    s.importance_decay, s.consolidation_threshold, s.consolidation_strength = 0.95, 0.7, 0.5
    s.prune, s.prune_every, s.prune_age, s.prune_usage, s.prune_importance = "interval", 3, 2, 5, 0.7
    s.modes, s.warmup_steps, s.warmup_sleep_steps, s.warmup_sleeps = ["distill", "dream"], 4, 1, 1
    cfg.train.ram_limit, cfg.train.accumulation = 0.75, 2
    events = []
    trainer = make_trainer(tmp_path / "run", cfg, emit=events.append)
    trainer.ram_fraction = lambda: 0.5
    assert trainer.run() == 0
    sleeps = [e["data"] for e in events if e.get("event") == "consolidation"]
    assert [d["mode"] for d in sleeps] == ["distill", "dream"]
    assert [d["steps"] for d in sleeps] == [1, 2]  # the warm-up's growing sleeps
    for d in sleeps:
        assert not protocol.check_data("consolidation", d)
        assert d["efficiency"] == pytest.approx((d["retention_after"] - d["retention_before"]) / d["steps"])
        assert d["eligible"] >= 1 and d["weights_change"] > 0
    reader = RunReader(tmp_path / "run")
    try:
        for key in ("memory_surprise_rate", "memory_update_rate", "memory_utilisation"):
            values = [row[2] for row in reader.metric(key)]
            assert values and all(0 <= v for v in values), key
        cap = 6 / trainer.task.seq_len  # at most 6 writing tokens of a sequence in one memory pass
        assert max(row[2] for row in reader.metric("memory_update_rate")) <= cap + 1e-9
    finally:
        reader.close()
    assert trainer.micro.chunks == 2


def test_consolidation_strength_keeps_that_share_of_the_sleeps_change(tmp_path):
    changes = {}
    for strength in (1.0, 0.5):
        cfg = sleep_config(max_steps=8, wake=5, sleep=2)
        cfg.sleep.consolidation_strength = strength
        events = []
        trainer = make_trainer(tmp_path / str(strength), cfg, emit=events.append)
        assert trainer.run() == 0
        changes[strength] = next(e["data"] for e in events if e.get("event") == "consolidation")["weights_change"]
    assert changes[0.5] == pytest.approx(changes[1.0] / 2, rel=1e-3)


# ---- the console's consolidation pane ----

def test_the_consolidation_pane_shows_the_memory_figures_and_each_sleeps_efficiency():
    from tests.fake_engine import consolidation, metrics_at
    from tests.test_console_units import plain
    from widgets.consolidation import MEMORY, render_consolidation
    from widgets.curves import Series

    memory = {key: Series(range(1, 301), [metrics_at(s)[key] for s in range(1, 301)]) for key, _, _ in MEMORY}
    sleeps = [{"step": 100 * n, **consolidation(n, 100 * n)} for n in (1, 2)]
    tall = plain(render_consolidation(sleeps, 60, 50, memory), 60)
    last = metrics_at(300)
    assert (f"mem ━ surprise {last['memory_surprise_rate']:.2g} ━ updates 0.08 "
            f"━ used {last['memory_utilisation']:.2g}") in tall
    assert "┤" in tall.split("retention per sleep")[0]  # the memory's curves, above the sleeps' own plot
    row = next(line for line in tall.splitlines() if line.split()[:1] == ["200"])
    assert row.split()[3] == f"{sleeps[1]['efficiency']:.3g}"
    short = plain(render_consolidation(sleeps, 60, 20, memory), 60)
    assert "mem ━ surprise" in short and "┤" not in short.split("retention per sleep")[0]  # sleeps keep their room
    narrow = plain(render_consolidation(sleeps, 48, 12), 48)
    assert "ret/step" in narrow.split("sleep at")[1].splitlines()[0]
    assert plain(render_consolidation([], 60, 20), 60).startswith("no sleep yet")  # no memory figures: as before
