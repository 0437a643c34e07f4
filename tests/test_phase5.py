"""Phase 5: the design's TRM x Titans-MAG preset, and its CPU-sized sibling."""

from __future__ import annotations

import json

import torch

from engine import config
from engine.optim import resolve
from lab.cli import main as lab_main
from tests.helpers import ROOT

torch.set_num_threads(1)

PHASE5 = ROOT / "configs" / "phase5.toml"
DESIGN_PARAMETERS = 26_974_561  # the design's count, with a 32,768-token vocabulary tied to the output head
DESIGN_VOCABULARY = 32_768 * 320


def show(capsys, path) -> dict:
    assert lab_main(["config", "show", str(path), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_phase5_preset_is_the_designs_model_and_its_count_is_pinned(capsys):
    shown = show(capsys, PHASE5)
    m = shown["config"]["model"]
    assert (m["d_model"], m["n_layers"], m["n_heads"], m["d_mem"], m["memory_decay"]) == (320, 8, 5, 160, 0.99)
    assert (m["H_cycles"], m["L_cycles"], m["halt_threshold"], m["memory"]) == (3, 2, 0.5, "titans-mag")
    assert len(m["step_loss_weights"]) == 4 and m["detach_cycles"] and m["bitnet"]
    cfg = config.load(PHASE5)
    from engine.build import build_model, make_task

    model = build_model(cfg, make_task(cfg))
    assert {b.mlp.hidden for b in model.net.blocks} == {1280}  # the design's d_ff
    o = resolve(cfg.optim)
    assert (o.use_muon, o.lr, o.adamw_lr, o.grokfast_lambda, o.qk_clip_tau) == (True, 5e-4, 1e-4, 2.0, 25.0)
    assert (o.momentum, o.nesterov, o.ns_steps) == (0.95, True, 5)

    parts = shown["parameters_by_part"]
    assert shown["parameters"] == 17_310_842 == sum(parts.values())
    assert parts["vocabulary"] == 2 * 91 * 320 and shown["task"]["vocab_size"] == 91
    # the vocabulary accounts for the difference: without it the design has 16.49M, this preset 17.25M
    assert DESIGN_PARAMETERS - DESIGN_VOCABULARY == 16_488_801
    assert shown["parameters"] - parts["vocabulary"] == 17_252_602


def test_both_presets_run_the_pipeline_and_the_cpu_one_keeps_the_designs_kind_of_model(capsys):
    full, cpu = config.load(PHASE5), config.load(ROOT / "configs" / "phase5-cpu.toml")
    for cfg in (full, cpu):
        assert cfg.pipeline.enabled and cfg.task.name == "levels" and cfg.curriculum.levels == 10
        assert cfg.pipeline.stages == ["curriculum", "bake", "selfmodel", "dream"]
        assert cfg.pipeline.bake == ["eudaimonia", "ooda", "identity", "reverse", "letters"]
        m = cfg.model
        assert (m.memory, m.bitnet, m.detach_cycles, m.halt_threshold) == ("titans-mag", True, True, 0.5)
        assert len(m.step_loss_weights) == m.H_cycles + 1 and cfg.optim.preset == "phase5"
    assert full.curriculum.questions == 20_000 and full.curriculum.threshold * 20_000 == 50  # fewer than 50 left
    shown = show(capsys, ROOT / "configs" / "phase5-cpu.toml")
    assert shown["parameters"] < show(capsys, PHASE5)["parameters"] / 50
    assert shown["task"]["seq_len"] == 24 + 2 + 15  # the prompt's room, then question, SEP, answer, EOS
