"""The wake loss's objectives (engine/objectives.py): each term on the right positions and changing the gradient,
the mix's config, and a short run that records every term's curve; sleep on a signal beside the schedule."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch

from engine.config import OBJECTIVE_TERMS, ConfigError, ModelConfig, ObjectivesConfig, SleepConfig, from_dict, load
from engine.model.trm import PAD, TinyRecursiveModel
from engine.objectives import Objectives, span_mask
from engine.sleep import ConsolidationTrigger
from engine.stages import Phase, Schedule
from engine.store import RunReader
from engine.trainer import Trainer

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
V, S, B = 12, 8, 4


def model(H_cycles=2, memory="titans-mag", seed=0) -> TinyRecursiveModel:
    torch.manual_seed(seed)
    cfg = ModelConfig(d_model=32, n_layers=1, n_heads=2, H_cycles=H_cycles, L_cycles=1, halt_max_steps=2,
                      memory=memory, window=4, d_mem=16, memory_chunk=4, persistent_tokens=2)
    return TinyRecursiveModel(cfg, V, S)


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randint(1, V, (B, S), generator=g), torch.randint(1, V, (B, S), generator=g)
    x[:, -2:] = PAD  # padded input tail: never hidden, never a reconstruction target
    y[:, :3] = PAD  # unscored answer cells
    return x, y


def step(m, objectives, x, y, carry=None, generator_seed=0):
    carry = m.initial_carry(B) if carry is None else carry
    return m(carry, x, y, generator=torch.Generator().manual_seed(generator_seed), objectives=objectives)


def grads(m, objectives, x, y) -> torch.Tensor:
    m.zero_grad(set_to_none=True)
    _, out = step(m, objectives, x, y)
    out.loss.backward()
    return torch.cat([p.grad.flatten() if p.grad is not None else torch.zeros(p.numel()) for p in m.parameters()])


def only(term: str, anchor=None) -> Objectives:
    return Objectives(ObjectivesConfig(**{term: 1.0}), anchor=anchor)


# ---- each term ----

@pytest.mark.parametrize("term", OBJECTIVE_TERMS)
def test_each_term_is_its_own_figure_and_changes_the_gradient(term):
    m = model()
    x, y = batch()
    with torch.no_grad():  # a slow anchor that differs from the model, as a moving average would
        anchor = copy.deepcopy(m).requires_grad_(False)
        for p in anchor.parameters():
            p.add_(0.05 * torch.randn_like(p))
    task_only = grads(m, Objectives(ObjectivesConfig(), anchor), x, y)
    with_term = grads(m, only(term, anchor), x, y)
    _, out = step(m, only(term, anchor), x, y)
    assert [k for k in out.metrics if k.startswith("obj_")] == [f"obj_{term}"]
    assert math.isfinite(out.metrics[f"obj_{term}"]) and out.metrics[f"obj_{term}"] > 0
    assert not torch.allclose(task_only, with_term)
    # the loss is the task's plus the term at weight 1 (no other term, halting as before)
    _, plain = step(m, None, x, y)
    assert out.loss.item() == pytest.approx(plain.loss.item() + out.metrics[f"obj_{term}"], rel=1e-4)


def test_default_mix_is_the_task_loss_alone():
    m = model()
    x, y = batch()
    objectives = Objectives(ObjectivesConfig())
    assert not objectives.active
    _, a = step(m, None, x, y)
    _, b = step(m, objectives, x, y)
    assert a.loss.item() == b.loss.item() and not any(k.startswith("obj_") for k in b.metrics)


def test_spans_are_runs_over_the_real_input_only():
    x = torch.randint(1, V, (64, 40))
    x[:, 30:] = PAD
    hidden = span_mask(x, 0.3, 4, torch.Generator().manual_seed(0))
    assert not hidden[:, 30:].any()
    assert 0.15 < hidden[:, :30].float().mean() < 0.45
    for row in hidden[:, :27].int().tolist():  # a run that ends before the padding is at least a span long
        runs = "".join(map(str, row)).split("0")
        assert all(len(r) >= 4 for r in runs[1:-1] if r)


def test_reconstruction_scores_exactly_the_hidden_input_positions():
    m = model()
    x, y = batch()
    with torch.no_grad():
        m.lm_head.weight.zero_()  # uniform predictions: each hidden position costs log V
    cfg = ObjectivesConfig(reconstruction=1.0, span_fraction=0.5, span_length=2)
    _, out = step(m, Objectives(cfg), x, y, generator_seed=3)
    hidden = span_mask(x, 0.5, 2, torch.Generator().manual_seed(3))  # the step's first draws: the spans
    n_cells = int((y != PAD).sum())
    assert int(hidden.sum()) > 0
    assert out.metrics["obj_reconstruction"] == pytest.approx(int(hidden.sum()) * math.log(V) / n_cells, rel=1e-5)


def test_consistency_slow_and_coherence_ignore_unscored_cells():
    m = model()
    x, _ = batch()
    unscored = torch.full((B, S), PAD)
    unscored[0, 0] = 1  # one scored cell, so the step has something to normalise by
    anchor = copy.deepcopy(m).requires_grad_(False)
    with torch.no_grad():
        for p in anchor.parameters():
            p.add_(0.05 * torch.randn_like(p))
    mix = Objectives(ObjectivesConfig(consistency=1.0, slow=1.0, coherence=1.0), anchor)
    _, one = step(m, mix, x, unscored)
    full = torch.randint(1, V, (B, S))
    _, all_cells = step(m, mix, x, full)
    for term in ("consistency", "slow", "coherence"):  # one scored cell is enough for a term
        assert one.metrics[f"obj_{term}"] > 0 and all_cells.metrics[f"obj_{term}"] > 0
    scored_only = torch.where(torch.arange(S) < 4, full, PAD)
    shifted = scored_only.clone()
    shifted[:, 4:] = torch.randint(1, V, (B, S - 4))  # labels move only at cells that were unscored
    _, a = step(m, mix, x, scored_only)
    _, b = step(m, mix, x, torch.where(torch.arange(S) < 4, shifted, PAD))
    for term in ("consistency", "slow", "coherence"):
        assert a.metrics[f"obj_{term}"] == pytest.approx(b.metrics[f"obj_{term}"], rel=1e-6)


def test_slow_is_zero_at_the_anchor():
    m = model()
    x, y = batch()
    _, out = step(m, Objectives(ObjectivesConfig(slow=1.0), copy.deepcopy(m).requires_grad_(False)), x, y)
    assert out.metrics["obj_slow"] == pytest.approx(0.0, abs=1e-6)


def test_carry_leaves_out_fresh_slots_when_one_cycle_starts_from_the_initial_latents():
    m = model(H_cycles=1)
    x, y = batch()
    carry, out = step(m, only("carry"), x, y)
    assert out.metrics["obj_carry"] == 0.0  # every slot was fresh
    _, out = step(m, only("carry"), x, y, carry=carry)  # the same slots, carried on
    assert out.metrics["obj_carry"] > 0


def test_memory_term_is_the_memorys_relative_miss():
    m = model()
    x, y = batch()
    _, out = step(m, only("memory"), x, y)
    assert 0 < out.metrics["obj_memory"] < 2  # a share of the values' energy


def test_micro_batch_chunks_add_up_to_the_batch():
    m = model()
    x, y = batch()
    anchor = copy.deepcopy(m).requires_grad_(False)
    mix = Objectives(ObjectivesConfig(**{t: 1.0 for t in OBJECTIVE_TERMS}), anchor)
    n = ((y != PAD).sum(), B)
    _, whole = m(m.initial_carry(B), x, y, generator=torch.Generator().manual_seed(0), norm=n, slots=(0, B),
                 objectives=mix)
    parts = [m(m.initial_carry(2), x[sl], y[sl], generator=torch.Generator().manual_seed(0), norm=n,
               slots=(sl.start, B), objectives=mix)[1] for sl in (slice(0, 2), slice(2, 4))]
    for term in OBJECTIVE_TERMS:
        assert sum(p.metrics[f"obj_{term}"] for p in parts) == pytest.approx(whole.metrics[f"obj_{term}"], rel=1e-4)


# ---- config ----

def base(**objectives) -> dict:
    return {"model": {"d_model": 32, "n_heads": 2, "memory": "titans-mag", "H_cycles": 2},
            "objectives": objectives}


@pytest.mark.parametrize("objectives, words", [
    ({"reconstruction": -0.1}, "out of range"),
    ({"coherence": 101.0}, "out of range"),
    ({"slow": "high"}, "expected a number"),
    ({"span_length": 0}, "out of range"),
    ({"span_fraction": 0.95}, "out of range"),
    ({"task": 0.0}, "nothing would be trained"),
    ({"dream": 1.0}, "unknown key"),
])
def test_bad_mix_is_refused_in_one_sentence(objectives, words):
    with pytest.raises(ConfigError, match=words):
        from_dict(base(**objectives), "mix.toml")


def test_terms_that_need_a_memory_or_cycles_say_so():
    for term in ("consistency", "memory"):
        data = base(**{term: 0.2})
        data["model"]["memory"] = "none"
        with pytest.raises(ConfigError, match=f"objectives.{term} = 0.2 needs a neural memory"):
            from_dict(data, "mix.toml")
    data = base(coherence=0.1)
    data["model"]["H_cycles"] = 1
    with pytest.raises(ConfigError, match="model.H_cycles >= 2"):
        from_dict(data, "mix.toml")
    assert from_dict(base(task=0.0, reconstruction=1.0)).objectives.reconstruction == 1.0


def test_the_preset_is_the_documents_70_20_10():
    o = load(ROOT / "configs" / "objectives.toml").objectives
    assert o.task + o.reconstruction == pytest.approx(0.7)
    assert o.consistency + o.memory == pytest.approx(0.2)
    assert o.coherence + o.carry + o.slow == pytest.approx(0.1)


# ---- sleep on a signal ----

def test_trigger_fires_on_a_full_buffer_and_on_a_plateau_never_too_early():
    t = ConsolidationTrigger(SleepConfig(buffer_size=10, trigger_buffer_full=True, trigger_min_wake=3))
    t.observe(6, 6.0)
    t.observe(6, 6.0)
    assert t.due(2) is None and t.due(3) == "buffer-full"
    t.reset()
    assert t.due(5) is None
    p = ConsolidationTrigger(SleepConfig(trigger_plateau=3, plateau_delta=0.01, trigger_min_wake=1))
    for loss in (8.0, 4.0, 2.0, 1.0):  # improving: the average falls by more than 1% a step
        p.observe(2, 2 * loss)
        assert p.due(10) is None
    for loss in (20.0, 20.0):  # a regression: two steps without improvement
        p.observe(2, 2 * loss)
    assert p.due(10) is None
    p.observe(0, 0.0)  # a step with no fresh sample counts too
    assert p.due(10) == "plateau"
    p.reset()
    assert p.due(10) is None
    q = ConsolidationTrigger(SleepConfig())  # both off by default: the schedule alone
    for _ in range(50):
        q.observe(100, 100.0)
    assert q.due(10**6) is None


def test_trigger_state_survives_a_resume():
    cfg = SleepConfig(trigger_plateau=2, trigger_min_wake=1, buffer_size=5, trigger_buffer_full=True)
    t = ConsolidationTrigger(cfg)
    for loss in (3.0, 3.0, 3.0):
        t.observe(1, loss)
    again = ConsolidationTrigger(cfg)
    again.load_state_dict(t.state_dict())
    assert again.state_dict() == t.state_dict() and again.due(5) == t.due(5) == "plateau"


def test_schedule_ends_a_wake_early_when_sleep_asks_and_says_why():
    class Ready:
        def __init__(self):
            self.asked = None

        def ready(self):
            return True

        def done(self):
            return False

    stages = {"wake": Ready(), "sleep": Ready()}
    s = Schedule([Phase("wake", 100), Phase("sleep", 5)])
    s.early["sleep"] = lambda awake: "plateau" if awake >= 7 else None
    assert s.due(6, stages) is None
    assert s.due(7, stages) == 1 and s.trigger == "plateau"
    s.switch(7, 1)
    assert s.due(10, stages) is None and s.trigger is None  # sleep runs its own 5 steps
    assert s.due(12, stages) == 0 and s.trigger is None


def test_trigger_keys_are_validated():
    for key, value, words in (("trigger_plateau", -1, "out of range"), ("plateau_delta", 2.0, "out of range"),
                              ("trigger_min_wake", 0, "out of range"), ("trigger_buffer_full", 1, "true or false")):
        with pytest.raises(ConfigError, match=words):
            from_dict({"sleep": {key: value}}, "sleep.toml")


# ---- a short run ----

def run_config(tmp_path, extra: dict):
    model = {"d_model": 32, "n_layers": 1, "n_heads": 2, "H_cycles": 2, "L_cycles": 1, "halt_max_steps": 2,
             "memory": "titans-mag", "window": 4, "d_mem": 16, "memory_chunk": 4, "persistent_tokens": 2}
    return from_dict({
        "model": model, "task": {"name": "sudoku", "size": 4},
        "optim": {"lr": 3e-3, "warmup_steps": 2},
        "train": {"batch_size": 8, "max_steps": 8, "threads": 1, "device": "cpu"},
        "eval": {"every": 0}, "checkpoint": {"every": 0, "keep": 2},
        "log": {"flush_seconds": 0.05, "telemetry_seconds": 100.0, "print_seconds": 100.0}, **extra,
    })


@pytest.mark.slow
def test_a_short_run_records_every_terms_curve_and_sleeps_on_a_signal(tmp_path):
    mix = load(ROOT / "configs" / "objectives.toml").objectives
    cfg = run_config(tmp_path, {"objectives": {k: getattr(mix, k) for k in ("task", *OBJECTIVE_TERMS)},
                                "sleep": {"enabled": True, "wake_steps": 1000, "sleep_steps": 2, "buffer_size": 16,
                                          "trigger_buffer_full": True, "trigger_min_wake": 2, "probe_size": 8}})
    events = []
    trainer = Trainer(tmp_path / "run", cfg, output="quiet", emit=events.append)
    assert trainer.run() == 0
    store = RunReader(tmp_path / "run")
    for term in OBJECTIVE_TERMS:
        rows = store.metric(f"obj_{term}")
        assert len(rows) >= 4 and all(v is not None and math.isfinite(v) for _, _, v in rows), term
    phases = [e["data"] for e in events if e.get("event") == "phase"]
    assert {"phase": "sleep", "manual": False, "trigger": "buffer-full"} in phases  # long before step 1000
