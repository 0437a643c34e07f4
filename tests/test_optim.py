"""MuGrokfast: routing, Newton-Schulz, Grokfast, QK-clip, schedule, presets, exact resume."""

import io
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from engine.config import ConfigError, ModelConfig, OptimConfig, from_dict
from engine.model.blocks import Attention, SwiGLU, rms_norm
from engine.model.trm import TinyRecursiveModel
from engine.optim import GrokfastEMA, MuGrokfast, OptimStateError, build_optimizer, resolve, route_parameters


class TinyAttentionModel(nn.Module):
    """embed -> attention -> norm with gain -> SwiGLU -> head with bias, all the parameter kinds we route."""

    def __init__(self, vocab=13, d=32, heads=4, length=6):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.mixer = Attention(d, heads, length, rope_theta=10000.0)
        self.norm = nn.RMSNorm(d)
        self.mlp = SwiGLU(d, 2.0)
        self.lm_head = nn.Linear(d, vocab, bias=True)

    def forward(self, tokens):  # (B, L) -> (B, L, vocab)
        h = self.embed(tokens)
        h = self.norm(h + self.mixer(h))
        h = rms_norm(h + self.mlp(h), 1e-5)
        return self.lm_head(h)


def data(seed=0, batch=16, length=6, vocab=13):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, vocab, (batch, length), generator=g)
    return x, (x * 3 + 1) % vocab


def optim_cfg(**kw) -> OptimConfig:
    return OptimConfig(**{"preset": "muon", "lr": 0.02, "warmup_steps": 0, "grad_clip": 0.0, **kw})


# ---- routing ----

def test_router_sends_hidden_matrices_to_muon_and_the_rest_to_adamw():
    model = TinyRecursiveModel(ModelConfig(d_model=32, n_layers=2, n_heads=2), vocab_size=11, seq_len=16)
    routes = route_parameters(model, use_muon=True)
    for name, route in routes.items():
        if name.startswith("net.blocks."):  # q, k, v, o, gate_up, down of every block
            assert route == "muon", name
    assert sum(r == "muon" for r in routes.values()) == 2 * 6
    assert routes["embed.weight"] == "adamw"
    assert routes["lm_head.weight"] == "adamw"
    assert routes["q_head.weight"] == "adamw"
    assert routes["q_head.bias"] == "adamw_no_decay"
    assert "H_init" not in routes  # buffers are nobody's


def test_router_handles_norms_biases_odd_shapes_and_excludes():
    model = TinyAttentionModel()
    model.conv = nn.Conv1d(4, 4, 3)  # 3-D: torch.optim.Muon refuses it, so it must not get there
    model.free = nn.Parameter(torch.zeros(4, 32))  # a free-standing matrix (persistent tokens, say)
    routes = route_parameters(model, use_muon=True, exclude=("*.o_proj.weight",))
    assert routes["norm.weight"] == "adamw_no_decay"
    assert routes["lm_head.bias"] == "adamw_no_decay"
    assert routes["conv.weight"] == "adamw" and routes["conv.bias"] == "adamw_no_decay"
    assert routes["free"] == "adamw"
    assert routes["mixer.o_proj.weight"] == "adamw"  # excluded by the glob
    assert routes["mixer.q_proj.weight"] == "muon" and routes["mlp.down.weight"] == "muon"
    with pytest.raises(ValueError, match="2D"):
        torch.optim.Muon([model.conv.weight])
    assert set(route_parameters(model, use_muon=False).values()) == {"adamw", "adamw_no_decay"}
    opt = build_optimizer(model, OptimConfig(preset="adamw", weight_decay=0.5, adamw_weight_decay=2.0))
    assert opt.muon is None and sum(len(g["params"]) for g in opt.param_groups) == len(routes)
    assert {g["name"]: g["weight_decay"] for g in opt.param_groups} == {"adamw": 0.5, "adamw_no_decay": 0.0}
    opt = build_optimizer(model, optim_cfg(weight_decay=0.1, adamw_weight_decay=1.0))
    decay = {g["name"]: g["weight_decay"] for g in opt.param_groups}
    assert decay == {"muon": 0.1, "adamw": 1.0, "adamw_no_decay": 0.0}


# ---- Newton-Schulz ----

def test_five_newton_schulz_steps_put_singular_values_in_half_to_three_halves():
    from torch.optim._muon import _zeropower_via_newtonschulz  # torch's own iteration, used by its Muon

    g = torch.randn(128, 512, generator=torch.Generator().manual_seed(0))
    raw = torch.linalg.svdvals(g)
    assert raw.max() / raw.min() > 2.5  # the input is far from orthogonal
    ortho = _zeropower_via_newtonschulz(g, (3.4445, -4.775, 2.0315), 5, 1e-7).float()
    s = torch.linalg.svdvals(ortho)
    assert s.min() >= 0.5 and s.max() <= 1.5
    fewer = torch.linalg.svdvals(_zeropower_via_newtonschulz(g, (3.4445, -4.775, 2.0315), 1, 1e-7).float())
    assert fewer.min() < 0.5  # one step is not enough: the test can tell


def test_muon_group_applies_the_orthogonalised_update():
    layer = nn.Linear(512, 128, bias=False)  # weight (128, 512)
    opt = build_optimizer(layer, optim_cfg(lr=1.0, weight_decay=0.0, momentum=0.0, grokfast_scope="off"))
    assert opt.routes == {"weight": "muon"}
    before = layer.weight.detach().clone()
    layer.weight.grad = torch.randn(128, 512, generator=torch.Generator().manual_seed(1))
    opt.step()
    update = (before - layer.weight.detach())  # lr 1, ratio sqrt(max(1, 128/512)) = 1
    s = torch.linalg.svdvals(update)
    assert s.min() >= 0.5 and s.max() <= 1.5


# ---- Grokfast ----

def test_first_grokfast_call_gives_one_plus_lambda_times_g_then_the_ema():
    p = nn.Parameter(torch.zeros(3, 4))
    g1, g2 = torch.randn(3, 4), torch.randn(3, 4)
    filt = GrokfastEMA([p], alpha=0.9, lamb=2.0)
    p.grad = g1.clone()
    filt.apply()
    assert torch.allclose(p.grad, 3.0 * g1, rtol=1e-6, atol=0)
    p.grad = g2.clone()
    filt.apply()
    ema = 0.9 * g1 + 0.1 * g2
    assert torch.allclose(p.grad, g2 + 2.0 * ema, rtol=1e-6, atol=1e-7)


def test_grokfast_scope_aux_leaves_muon_gradients_alone():
    model = TinyAttentionModel()
    opt = build_optimizer(model, optim_cfg(grokfast_lambda=2.0, grokfast_alpha=0.9))  # scope "aux" by default
    filtered = {id(p) for p in opt.grokfast.params}
    for name, p in model.named_parameters():
        assert (id(p) in filtered) == (opt.routes[name] != "muon"), name
    everything = build_optimizer(model, optim_cfg(grokfast_lambda=2.0, grokfast_scope="all"))
    assert len(everything.grokfast.params) == len(list(model.parameters()))


# ---- QK-clip ----

def test_qk_clip_brings_the_same_batch_largest_logit_down_to_tau():
    torch.manual_seed(0)
    model = TinyAttentionModel()
    with torch.no_grad():  # make heads 0 and 2 spiky, leave 1 and 3 small
        for h in (0, 2):
            model.mixer.q_proj.weight[h * 8:(h + 1) * 8] *= 12.0
            model.mixer.k_proj.weight[h * 8:(h + 1) * 8] *= 12.0
    tau = 5.0
    opt = build_optimizer(model, optim_cfg(lr=0.0, adamw_lr=0.0, qk_clip_tau=tau))  # only the clip moves weights
    x, y = data()
    F.cross_entropy(model(x).flatten(0, 1), y.flatten()).backward()
    before = model.mixer.max_logit.clone()
    assert before[0] > tau and before[2] > tau and before[1] < tau and before[3] < tau
    opt.step()
    assert opt.stats()["qk_clipped_heads"] == 2.0
    assert opt.stats()["attn_logit_max"] == pytest.approx(float(before.max()))
    model(x)
    after = model.mixer.max_logit
    assert after.max().item() == pytest.approx(tau, rel=1e-5)
    assert after[0].item() == pytest.approx(tau, rel=1e-5) and after[2].item() == pytest.approx(tau, rel=1e-5)
    assert torch.allclose(after[[1, 3]], before[[1, 3]], rtol=1e-6)  # heads under tau untouched


# ---- schedule, stats, presets ----

def test_warmup_then_cosine_schedule():
    model = TinyAttentionModel()
    opt = build_optimizer(model, optim_cfg(warmup_steps=10, schedule="cosine", min_lr_ratio=0.1), total_steps=110)
    assert opt.lr_factor(0) == pytest.approx(0.1)
    assert opt.lr_factor(9) == pytest.approx(1.0)
    assert opt.lr_factor(60) == pytest.approx(0.55)
    assert opt.lr_factor(110) == pytest.approx(0.1)
    assert opt.lr_factor(500) == pytest.approx(0.1)
    opt.schedule(60)
    assert opt.muon.param_groups[0]["lr"] == pytest.approx(0.02 * 0.55)
    assert opt.adamw.param_groups[0]["lr"] == pytest.approx(1e-3 * 0.55)
    constant = build_optimizer(model, optim_cfg(warmup_steps=4))
    assert [constant.lr_factor(s) for s in (0, 3, 4, 10_000)] == [0.25, 1.0, 1.0, 1.0]


def test_stats_report_the_step_that_ran():
    torch.manual_seed(0)
    model = TinyAttentionModel()
    opt = build_optimizer(model, optim_cfg(warmup_steps=4, grokfast_lambda=2.0))
    x, y = data()
    F.cross_entropy(model(x).flatten(0, 1), y.flatten()).backward()
    recorded = float(model.mixer.max_logit.max())
    before = model.mixer.q_proj.weight.detach().clone()
    opt.step()
    s = opt.stats()
    assert s["lr_muon"] == pytest.approx(0.02 / 4) and s["lr_adamw"] == pytest.approx(1e-3 / 4)
    assert s["attn_logit_max"] == pytest.approx(recorded)
    assert s["grokfast_norm"] > 0 and s["grad_norm"] > 0
    assert s["update_rms_muon"] > 0 and s["update_rms_adamw"] > 0
    # Muon's update of a square matrix has RMS lr * 1/sqrt(n) (orthogonal, singular values ~1)
    q_rms = (model.mixer.q_proj.weight.detach() - before).pow(2).mean().sqrt().item()
    assert 0.5 * (0.02 / 4) / math.sqrt(32) < q_rms < 1.5 * (0.02 / 4) / math.sqrt(32)


def test_presets_fill_unset_fields_and_explicit_fields_win():
    p5 = resolve(OptimConfig(preset="phase5"))
    assert (p5.use_muon, p5.lr, p5.adamw_lr, p5.grokfast_lambda, p5.qk_clip_tau) == (True, 5e-4, 1e-4, 2.0, 25.0)
    assert (p5.momentum, p5.nesterov, p5.ns_steps, p5.grokfast_scope) == (0.95, True, 5, "aux")
    p1 = resolve(OptimConfig(preset="phase1"))
    assert (p1.lr, p1.grokfast_lambda) == (1e-3, 0.3)
    cfg = from_dict({"optim": {"preset": "phase5", "lr": 0.01, "grokfast_lambda": 0.0}})
    mine = resolve(cfg.optim)
    assert (mine.lr, mine.adamw_lr, mine.grokfast_lambda) == (0.01, 1e-4, 0.0)
    plain = resolve(OptimConfig())
    assert (plain.preset, plain.use_muon, plain.lr, plain.grokfast_lambda) == ("adamw", False, 1e-3, 0.0)


def test_model_bitnet_alone_makes_the_weights_ternary_whatever_the_preset():
    from engine.model.bitlinear import BitLinear
    from engine.build import build_model, make_task

    def ternary_layers(overrides):
        cfg = from_dict({"model": {"d_model": 32, "n_layers": 1, "n_heads": 2}, "task": {"size": 4}}, overrides=overrides)
        return sum(isinstance(m, BitLinear) for m in build_model(cfg, make_task(cfg)).modules())

    assert ternary_layers(["optim.preset=phase5"]) == 0
    assert ternary_layers(["model.bitnet=true"]) == ternary_layers(["model.bitnet=true", "optim.preset=phase5"]) > 0


@pytest.mark.parametrize("optim, key", [
    ({"preset": "phase9"}, "optim.preset"),
    ({"lr": -1e-3}, "optim.lr"),
    ({"grokfast_alpha": 1.0}, "optim.grokfast_alpha"),
    ({"grokfast_alpha": -0.1}, "optim.grokfast_alpha"),
    ({"muon_exclude": "lm_head"}, "optim.muon_exclude"),
])
def test_bad_optimizer_settings_are_config_errors_naming_the_key(optim, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        from_dict({"optim": optim})


# ---- resume ----

def _train(model, opt, steps, first_step=0) -> float:
    """Train on a fixed stream; returns how many head-steps QK-clip touched."""
    clipped = 0.0
    for step in range(first_step, first_step + steps):
        x, y = data(seed=step)
        F.cross_entropy(model(x).flatten(0, 1), y.flatten()).backward()
        opt.step()
        opt.zero_grad()
        clipped += opt.stats()["qk_clipped_heads"]
    return clipped


def test_save_and_load_mid_training_continues_bit_identically():
    cfg = optim_cfg(warmup_steps=3, schedule="cosine", grad_clip=1.0, grokfast_lambda=2.0,
                    grokfast_alpha=0.9, grokfast_scope="all", qk_clip_tau=1.6)

    torch.manual_seed(0)
    straight = TinyAttentionModel()
    opt = build_optimizer(straight, cfg, total_steps=12)
    assert _train(straight, opt, 12) >= 6  # QK-clip acted throughout: every part of the state is exercised

    torch.manual_seed(0)
    first = TinyAttentionModel()
    opt1 = build_optimizer(first, cfg, total_steps=12)
    _train(first, opt1, 6)
    buffer = io.BytesIO()
    torch.save({"model": first.state_dict(), "optim": opt1.state_dict()}, buffer)

    torch.manual_seed(123)  # a fresh process would build other initial weights; the load must overwrite them
    resumed = TinyAttentionModel()
    opt2 = build_optimizer(resumed, cfg, total_steps=12)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed.load_state_dict(saved["model"])
    opt2.load_state_dict(saved["optim"])
    _train(resumed, opt2, 6, first_step=6)

    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


def test_resume_without_the_grokfast_state_would_diverge():
    """The control for the test above: dropping the filter's EMA changes the continuation."""
    cfg = optim_cfg(grokfast_lambda=2.0, grokfast_alpha=0.9, grokfast_scope="all")
    torch.manual_seed(0)
    a = TinyAttentionModel()
    opt_a = build_optimizer(a, cfg)
    _train(a, opt_a, 4)
    state = opt_a.state_dict()
    state["grokfast"] = {"ema": {}}
    torch.manual_seed(0)
    b = TinyAttentionModel()
    b.load_state_dict(a.state_dict())
    opt_b = build_optimizer(b, cfg)
    opt_b.load_state_dict(state)
    _train(a, opt_a, 2, first_step=4)
    _train(b, opt_b, 2, first_step=4)
    assert not torch.equal(a.lm_head.weight, b.lm_head.weight)


def test_loading_state_from_another_routing_is_a_clear_error():
    model = TinyAttentionModel()
    muon_state = build_optimizer(model, optim_cfg()).state_dict()
    adamw = build_optimizer(model, OptimConfig(preset="adamw"))
    with pytest.raises(OptimStateError, match="routes parameters differently"):
        adamw.load_state_dict(muon_state)
    assert isinstance(adamw, MuGrokfast)
