"""The recursive model: sizes, gradient flow, carry semantics, equivalences and a small learning check."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
import torch.nn.functional as F

from engine.config import ModelConfig
from engine.model.blocks import Attention, Rotary, SequenceMLP, SwiGLU, swiglu_hidden
from engine.model.titans import MemoryState
from engine.model.trm import Carry, TinyRecursiveModel, halt_logit

torch.set_num_threads(1)


def tiny(mixer="attention", **kw) -> TinyRecursiveModel:
    torch.manual_seed(0)
    base = dict(d_model=32, n_layers=1, n_heads=2, H_cycles=3, L_cycles=2, halt_max_steps=4,
                puzzle_prefix=2, mixer=mixer)
    base.update(kw)
    return TinyRecursiveModel(ModelConfig(**base), vocab_size=7, seq_len=6)


def data(batch: int, seed: int = 1, vocab: int = 7, seq: int = 6):
    g = torch.Generator().manual_seed(seed)
    inputs = torch.randint(1, vocab, (batch, seq), generator=g)
    labels = torch.randint(2, vocab, (batch, seq), generator=g)
    return inputs, labels


# ---- sizes and names ----

@pytest.mark.parametrize("mixer, expected", [("mlp", 5_028_866), ("attention", 6_828_034)])
def test_paper_sudoku_parameter_count(mixer, expected):
    cfg = ModelConfig(d_model=512, n_layers=2, expansion=4, n_heads=8, puzzle_prefix=16, mixer=mixer)
    model = TinyRecursiveModel(cfg, vocab_size=11, seq_len=81)
    assert model.length == 97
    assert sum(p.numel() for p in model.parameters()) == expected


def test_swiglu_width_rounds_up_to_256():
    assert swiglu_hidden(512, 4) == 1536  # 1365.3 -> 1536
    assert swiglu_hidden(97, 4) == 512  # 258.7 -> 512
    assert swiglu_hidden(96, 4) == 256  # exactly 256 stays 256
    assert swiglu_hidden(16, 4) == 256
    mlp = SwiGLU(512, 4)
    assert mlp.gate_up.weight.shape == (2 * 1536, 512) and mlp.down.weight.shape == (512, 1536)
    assert mlp.gate_up.bias is None and mlp.down.bias is None


def test_initial_latents_are_buffers_and_names_are_clear():
    model = tiny()
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    assert "H_init" in buffers and "L_init" in buffers
    assert not any("init" in n for n in params)
    assert "H_init" in model.state_dict() and "L_init" in model.state_dict()  # saved in checkpoints
    assert not any("rotary" in n for n in model.state_dict())  # cos/sin are recomputed, not saved
    for name in ("embed.weight", "lm_head.weight", "q_head.weight", "q_head.bias",
                 "net.blocks.0.mixer.q_proj.weight", "net.blocks.0.mixer.k_proj.weight",
                 "net.blocks.0.mixer.v_proj.weight", "net.blocks.0.mixer.o_proj.weight",
                 "net.blocks.0.mlp.gate_up.weight", "net.blocks.0.mlp.down.weight"):
        assert name in params, name
    assert [n for n in params if n.endswith("bias")] == ["q_head.bias"]
    # halting head starts far from halting; embedding and lm_head are untied
    assert torch.all(model.q_head.weight == 0) and torch.all(model.q_head.bias == -5)
    assert model.embed.weight.data_ptr() != model.lm_head.weight.data_ptr()


def test_init_is_lecun_normal():
    torch.manual_seed(0)
    model = TinyRecursiveModel(ModelConfig(d_model=256, n_layers=1, n_heads=4), vocab_size=11, seq_len=16)
    w = model.net.blocks[0].mlp.down.weight  # fan_in = 768
    assert w.std().item() == pytest.approx(1 / math.sqrt(768), rel=0.05)
    assert w.abs().max().item() <= 2 / math.sqrt(768) / 0.8796 + 1e-6  # truncated at 2 sigma
    assert (model.embed.weight.std() * model.embed_scale).item() == pytest.approx(1.0, rel=0.1)


# ---- gradient flow ----

def graph_membership(model, run):
    """For every call of the shared network f, whether its output is part of the autograd graph."""
    seen = []
    handle = model.net.register_forward_hook(lambda mod, args, out: seen.append(out[0].grad_fn is not None))
    try:
        run()
    finally:
        handle.remove()
    return seen


def test_gradients_reach_only_the_last_cycle():
    model = tiny(H_cycles=3, L_cycles=2)
    inputs, labels = data(3)
    carry = model.initial_carry(3)
    seen = graph_membership(model, lambda: model(carry, inputs, labels))
    per_cycle = 2 + 1  # n updates of z_L, one of z_H
    assert seen == [False] * (2 * per_cycle) + [True] * per_cycle


def test_cognate_weights_give_every_cycle_gradient_and_weighted_loss():
    weights = [0.1, 0.2, 0.3, 1.0]
    model = tiny(H_cycles=3, L_cycles=2, step_loss_weights=weights)
    inputs, labels = data(3)
    carry = model.initial_carry(3)
    out = {}
    seen = graph_membership(model, lambda: out.setdefault("o", model(carry, inputs, labels)[1]))
    o = out["o"]
    assert seen == [True] * 9
    assert len(o.all_logits) == 4 and torch.equal(o.all_logits[-1], o.logits)
    ce = [F.cross_entropy(lg.flatten(0, 1), labels.flatten()) for lg in o.all_logits]
    lm = sum(w * c for w, c in zip(weights, ce))
    assert o.metrics["lm_loss"] == pytest.approx(lm.item(), rel=1e-5)
    # y0 is read from the initial answer latent, before any cycle
    y0 = model.lm_head(model.H_init).expand(3, 6, -1)
    assert torch.allclose(o.all_logits[0], y0, atol=1e-5)


def test_backward_trains_every_parameter_and_carry_is_detached():
    model = tiny()
    inputs, labels = data(4)
    carry, out = model(model.initial_carry(4), inputs, labels)
    out.loss.backward()
    for name, p in model.named_parameters():
        if name.startswith("q_head"):
            continue  # halting head: weight starts at 0, bias gets a gradient
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert model.q_head.bias.grad[0] != 0
    assert carry.z_H.grad_fn is None and carry.z_L.grad_fn is None


# ---- carry semantics ----

def test_halted_slots_reset_and_others_keep_their_carry():
    model = tiny()
    model.eval()
    old_inputs, old_labels = data(3, seed=1)
    carry, _ = model(model.initial_carry(3), old_inputs, old_labels)
    carry, _ = model(carry, old_inputs, old_labels)  # slots now hold a non-initial state, steps = 2
    carry = dataclasses.replace(carry, halted=torch.tensor([True, False, True]))
    new_inputs, new_labels = data(3, seed=2)

    first_call = []
    handle = model.net.register_forward_pre_hook(
        lambda mod, args: first_call.append([a.clone() for a in args[:2]]) if not first_call else None)
    new_carry, _ = model(carry, new_inputs, new_labels)
    handle.remove()
    z_L_in, injection = first_call[0]  # f(z_L, z_H + x)
    x_new = model.input_embedding(new_inputs)
    x_old = model.input_embedding(old_inputs)
    for slot in (0, 2):  # halted: initial latents and the new sample
        assert torch.equal(z_L_in[slot], model.L_init.expand(model.length, -1))
        assert torch.allclose(injection[slot], model.H_init + x_new[slot])
        assert torch.equal(new_carry.inputs[slot], new_inputs[slot])
        assert torch.equal(new_carry.labels[slot], new_labels[slot])
        assert new_carry.steps[slot] == 1
    # not halted: its own latents and its own sample; the new rows are ignored
    assert torch.equal(z_L_in[1], carry.z_L[1])
    assert torch.allclose(injection[1], carry.z_H[1] + x_old[1])
    assert torch.equal(new_carry.inputs[1], old_inputs[1])
    assert new_carry.steps[1] == 3


def test_carry_state_round_trip():
    model = tiny()
    inputs, labels = data(2)
    carry, _ = model(model.initial_carry(2), inputs, labels)
    class MemoryState(dict):
        pass

    carry.memory = MemoryState(w=torch.randn(2, 3, 3, requires_grad=True) * 2)
    detached = carry.detach()
    assert type(detached.memory) is MemoryState and detached.memory["w"].grad_fn is None
    state = carry.to_state()
    assert all(isinstance(v, torch.Tensor) and v.is_contiguous() for v in state.values())
    back = Carry.from_state(state)
    for name in ("z_H", "z_L", "steps", "halted", "inputs", "labels"):
        assert torch.equal(getattr(back, name), getattr(carry, name))
    assert torch.equal(back.memory["w"], carry.memory["w"])
    assert Carry.from_state(model.initial_carry(2).to_state()).memory is None


def test_eval_halts_exactly_at_n_sup_and_training_halting_follows_q():
    model = tiny(halt_max_steps=3, halt_exploration=0.0)
    inputs, labels = data(4)
    with torch.no_grad():
        model.q_head.bias.fill_(5.0)  # the head says "halt" everywhere
    model.eval()
    carry = model.initial_carry(4)
    history = []
    for _ in range(3):
        carry, _ = model(carry, inputs, labels)
        history.append(carry.halted.tolist())
    assert history == [[False] * 4, [False] * 4, [True] * 4]  # eval ignores q
    model.train()
    carry, _ = model(model.initial_carry(4), inputs, labels)
    assert carry.halted.all()  # training follows q_halt > 0


def test_exploration_forces_a_minimum_and_is_deterministic():
    model = tiny(halt_max_steps=6, halt_exploration=1.0)
    inputs, labels = data(64)
    with torch.no_grad():
        model.q_head.bias.fill_(5.0)
    carry, _ = model(model.initial_carry(64), inputs, labels, generator=torch.Generator().manual_seed(0))
    assert not carry.halted.any()  # every slot must take at least 2 steps

    def halted_after_two(seed):
        g = torch.Generator().manual_seed(seed)
        c, _ = model(model.initial_carry(64), inputs, labels, generator=g)
        c, _ = model(c, inputs, labels, generator=g)
        return c.halted.clone()

    a, b, c = halted_after_two(3), halted_after_two(3), halted_after_two(4)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert 0 < a.sum() < 64  # minimum drawn from [2, 6]: some may halt at 2, some not


def test_stateful_inference_keeps_the_carry_until_reset():
    model = tiny(halt_max_steps=4)
    model.eval()
    inputs, _ = data(2)
    model.infer(inputs)
    model.infer(inputs)
    assert model.infer_carry.steps.tolist() == [2, 2]
    # two calls = two supervision steps from a fresh start
    ref = model.initial_carry(2)
    for _ in range(2):
        ref, _ = model(ref, inputs, inputs)
    assert torch.allclose(model.infer_carry.z_H, ref.z_H, atol=1e-6)
    # a slot given new inputs restarts; the other goes on
    changed = inputs.clone()
    changed[1] = torch.flip(changed[1], [0]) % 6 + 1
    model.infer(changed)
    assert model.infer_carry.steps.tolist() == [3, 1]
    # after N_sup steps the answer is final
    for _ in range(3):
        preds = model.infer(changed)
    assert model.infer_carry.steps.tolist() == [4, 4]
    assert torch.equal(preds, model.predict(changed, n_steps=4)[0])
    frozen = model.infer_carry.z_H.clone()
    model.infer(changed)
    assert torch.equal(model.infer_carry.z_H, frozen)
    model.reset_carry()
    assert model.infer_carry is None
    model.infer(changed)
    assert model.infer_carry.steps.tolist() == [1, 1]


def test_predict_equals_eval_forward_steps():
    model = tiny(halt_max_steps=3)
    model.eval()
    inputs, labels = data(3)
    carry = model.initial_carry(3)
    for _ in range(3):
        carry, out = model(carry, inputs, labels)
    preds, q = model.predict(inputs)
    assert torch.equal(preds, out.logits.argmax(-1))
    assert torch.allclose(q, out.q_halt_logits, atol=1e-6)


@pytest.mark.parametrize("mixer", ["attention", "mlp"])
def test_rows_are_independent(mixer):
    model = tiny(mixer)
    inputs, labels = data(2)
    together = model.initial_carry(2)
    alone = [model.initial_carry(1), model.initial_carry(1)]
    for _ in range(2):
        together, out = model(together, inputs, labels)
        outs = []
        for i in range(2):
            alone[i], o = model(alone[i], inputs[i:i + 1], labels[i:i + 1])
            outs.append(o)
        for i in range(2):
            assert torch.allclose(out.logits[i], outs[i].logits[0], atol=1e-5)
            assert torch.allclose(together.z_L[i], alone[i].z_L[0], atol=1e-5)
            assert torch.allclose(out.q_halt_logits[i], outs[i].q_halt_logits[0], atol=1e-5)


# ---- loss and metrics ----

def test_loss_ignores_pad_and_metrics_add_up():
    model = tiny()
    inputs, labels = data(4)
    labels[:, :2] = 0  # pad
    labels[0] = 0
    _, out = model(model.initial_carry(4), inputs, labels)
    logits = out.logits
    mask = labels != 0
    ce = F.cross_entropy(logits[mask], labels[mask])
    correct = (logits.argmax(-1) == labels) & mask
    seq_ok = correct.sum(-1) == mask.sum(-1)  # an all-pad row counts as correct
    bce = F.binary_cross_entropy_with_logits(out.q_halt_logits, seq_ok.float())
    assert out.metrics["lm_loss"] == pytest.approx(ce.item(), rel=1e-5)
    assert out.metrics["halt_loss"] == pytest.approx(bce.item(), rel=1e-5)
    assert out.loss.item() == pytest.approx(ce.item() + 0.5 * bce.item(), rel=1e-5)
    assert out.metrics["cell_acc"] == pytest.approx(correct.sum().item() / mask.sum().item())
    assert out.metrics["exact_acc"] == pytest.approx(seq_ok.float().mean().item())
    assert out.metrics["n_halted"] == 0 and math.isnan(out.metrics["halted_exact_acc"])


# ---- blocks ----

def test_rotary_makes_scores_depend_on_relative_position():
    rot = Rotary(8, 32, 10000.0)
    torch.manual_seed(0)
    q, k = torch.randn(8), torch.randn(8)
    seq = torch.zeros(1, 1, 32, 8)

    def score(i, j):
        qs, ks = seq.clone(), seq.clone()
        qs[0, 0, i], ks[0, 0, j] = q, k
        return (rot(qs)[0, 0, i] @ rot(ks)[0, 0, j]).item()

    assert score(3, 7) == pytest.approx(score(13, 17), abs=1e-4)
    assert score(3, 7) != pytest.approx(score(3, 8), abs=1e-3)


def test_sliding_window_limits_what_a_position_sees():
    torch.manual_seed(0)
    attn = Attention(16, 2, max_len=12, rope_theta=10000.0, window=3)
    x = torch.randn(1, 12, 16)
    y = attn(x)
    x2 = x.clone()
    x2[0, 8] += 1.0
    y2 = attn(x2)
    changed = (y2 - y).abs().amax(-1)[0] > 1e-6
    assert changed.tolist() == [abs(i - 8) < 3 for i in range(12)]
    causal = Attention(16, 2, max_len=12, rope_theta=10000.0, causal=True)
    changed = (causal(x2) - causal(x)).abs().amax(-1)[0] > 1e-6
    assert changed.tolist() == [i >= 8 for i in range(12)]


def test_attention_matches_explicit_softmax_and_records_max_logit():
    torch.manual_seed(0)
    attn = Attention(16, 2, max_len=10, rope_theta=100.0, window=4)
    x = torch.randn(3, 10, 16)
    attn.record_max_logit = True
    heads = attn.attend(x)  # (B, L, H, d_head)
    q = attn.rotary(attn.q_proj(x).view(3, 10, 2, 8).transpose(1, 2))
    k = attn.rotary(attn.k_proj(x).view(3, 10, 2, 8).transpose(1, 2))
    v = attn.v_proj(x).view(3, 10, 2, 8).transpose(1, 2)
    logits = q @ k.transpose(-2, -1) / math.sqrt(8)
    logits = logits.masked_fill(~attn.mask, float("-inf"))
    ref = (logits.softmax(-1) @ v).transpose(1, 2)
    assert torch.allclose(heads, ref, atol=1e-5)
    assert torch.allclose(attn.max_logit, logits.amax(dim=(0, 2, 3)), atol=1e-5)
    assert attn.max_logit.shape == (2,) and attn.max_logit.grad_fn is None
    assert torch.allclose(attn(x), attn.o_proj(heads.flatten(2)), atol=1e-6)


def test_sequence_mlp_mixes_positions_not_channels():
    torch.manual_seed(0)
    mix = SequenceMLP(seq_len=10, expansion=4)
    assert mix.gate_up.in_features == 10
    x = torch.randn(2, 10, 5)
    x2 = x.clone()
    x2[:, 3, 1] += 1.0  # one channel at one position
    delta = (mix(x2) - mix(x)).abs()
    assert (delta[:, :, 1] > 1e-6).all()  # that channel changes at every position
    assert torch.all(delta[:, :, [0, 2, 3, 4]] == 0)  # other channels untouched


def test_block_is_post_norm_without_weight():
    model = tiny(n_layers=2)
    block = model.net.blocks[0]
    h = torch.randn(3, 8, 32) * 5
    mid = h + block.mixer(h)
    mid = mid / mid.pow(2).mean(-1, keepdim=True).add(model.cfg.norm_eps).sqrt()
    out = mid + block.mlp(mid)
    out = out / out.pow(2).mean(-1, keepdim=True).add(model.cfg.norm_eps).sqrt()
    assert torch.allclose(block(h)[0], out, atol=1e-5)
    inj = torch.randn(3, 8, 32)
    assert torch.allclose(model.net(h, inj)[0], model.net.blocks[1](block(h + inj)[0])[0], atol=1e-5)
    assert block(h)[1] is None and model.net(h, inj)[1] is None  # no memory: nothing carried


def test_input_embedding_and_readout_positions():
    model = tiny(puzzle_prefix=2)
    inputs, _ = data(2)
    x = model.input_embedding(inputs)  # (B, 2 + 6, D)
    assert torch.all(x[:, :2] == 0)  # the prefix gets a zero embedding
    assert torch.allclose(x[:, 2:], model.embed.weight[inputs] * math.sqrt(32))
    z = torch.randn(2, 8, 32)
    logits, q = model.readout(z)
    assert torch.allclose(logits, model.lm_head(z[:, 2:]))  # the answer is read after the prefix
    assert torch.allclose(q, model.q_head(z[:, 0])[:, 0])  # halting is read from position 0


# ---- inspection ----

def test_inspect_snapshot_is_json_and_leaves_the_carry():
    model = tiny(H_cycles=3)
    inputs, labels = data(3)
    carry, _ = model(model.initial_carry(3), inputs, labels)
    carry = dataclasses.replace(carry, halted=torch.tensor([False, True, False]))
    before = carry.to_state()
    snap = json.loads(json.dumps(model.inspect(carry, 0)))
    assert all(torch.equal(before[k], v) for k, v in carry.to_state().items())
    assert snap["steps"] == 1 and snap["halted"] is False and snap["shapes"]["z_H"] == [3, 8, 32]
    assert len(snap["z_H_norms"]) == 4 and len(snap["z_H_norms"][0]) == 8 and len(snap["z_L_change"]) == 3
    assert snap["z_H_norms"][0] == pytest.approx(carry.z_H[0].norm(dim=-1).tolist(), abs=1e-4)
    assert snap["q_halt"] == pytest.approx(model.q_head(carry.z_H[0, 0])[0].item(), abs=1e-5)
    halted = model.inspect(carry, 1)  # a halted slot is replayed from the initial latents
    assert halted["z_H_norms"][0] == pytest.approx([model.H_init.norm().item()] * 8, abs=1e-4)
    with pytest.raises(IndexError):
        model.inspect(carry, 3)


def test_bfloat16_autocast_keeps_float32_carry():
    model = tiny()
    inputs, labels = data(2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        carry, out = model(model.initial_carry(2), inputs, labels)
    out.loss.backward()
    assert carry.z_H.dtype == torch.float32 and out.logits.dtype == torch.float32
    assert math.isfinite(out.loss.item())


def test_the_neural_memory_trains_under_bfloat16_autocast_with_float32_state():
    # train.dtype = auto is bfloat16 on a CUDA card, and the Phase-5 preset has the memory in every block
    inputs, labels = data(2)
    losses, grads = {}, {}
    for bf16 in (False, True):
        model = tiny(memory="titans-mag", d_mem=16, memory_chunk=4)
        carry = model.initial_carry(2)
        for _ in range(2):  # the second step starts from a written memory
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                carry, out = model(carry, inputs, labels)
            model.zero_grad()
            out.loss.backward()
        assert all(v.dtype == torch.float32 for v in carry.memory.values())
        losses[bf16] = out.loss.item()
        grads[bf16] = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    assert losses[True] == pytest.approx(losses[False], rel=0.02)
    assert torch.isfinite(grads[True]).all()
    assert F.cosine_similarity(grads[True], grads[False], dim=0) > 0.95


# ---- it learns ----

# Attention learns a shift by one position (a fixed relative offset, natural for RoPE); the sequence MLP
# learns a reversal (a fixed permutation of positions). Chance exact accuracy is 1e-7.
@pytest.mark.parametrize("mixer, task, d_model, batch_size, steps",
                         [("attention", "shift", 64, 64, 100), ("mlp", "reverse", 32, 32, 300)])
def test_tiny_model_learns(mixer, task, d_model, batch_size, steps):
    torch.manual_seed(0)
    seq = 8
    cfg = ModelConfig(d_model=d_model, n_layers=1, n_heads=4, H_cycles=2, L_cycles=2, halt_max_steps=2,
                      mixer=mixer)
    model = TinyRecursiveModel(cfg, vocab_size=12, seq_len=seq)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01, betas=(0.9, 0.95))
    g = torch.Generator().manual_seed(0)

    def sample(n):
        x = torch.randint(2, 12, (n, seq), generator=g)
        if task == "reverse":
            return x, x.flip(-1)
        y = torch.roll(x, 1, -1)
        y[:, 0] = 0  # nothing to predict at position 0
        return x, y

    carry = model.initial_carry(batch_size)
    for _ in range(steps):
        carry, out = model(carry, *sample(batch_size), generator=g)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    model.eval()
    x, y = sample(256)
    preds, _ = model.predict(x)
    exact = ((preds == y) | (y == 0)).all(-1).float().mean().item()
    assert exact > 0.5


# ---- the Titans-MAG memory in the model ----

def tiny_mag(**kw) -> TinyRecursiveModel:
    return tiny(memory="titans-mag", window=4, d_mem=16, memory_chunk=4, persistent_tokens=2, **kw)


def test_memory_carry_changes_is_detached_and_resets_with_its_slot():
    model = tiny_mag()
    inputs, labels = data(3)
    start = model.initial_carry(3)
    assert all(v.abs().sum() == 0 for v in start.memory.values())  # empty memory
    assert len(start.memory) == 4  # one block, depth 2: dW1, S1, dW2, S2
    carry, out = model(start, inputs, labels)
    out.loss.backward()
    assert all(v.grad_fn is None for v in carry.memory.values())
    moved = carry.memory.change_norm()
    assert (moved > 1e-4).all()  # the memory wrote during the step
    # the next step: slot 1 takes a fresh sample and an empty memory, the others keep theirs
    carry = dataclasses.replace(carry, halted=torch.tensor([False, True, False]))
    reset = model.reset_halted(carry, *data(3, seed=2))
    assert reset.memory.change_norm()[1] == 0
    assert torch.equal(reset.memory.change_norm()[[0, 2]], moved[[0, 2]])


def test_memory_changes_the_answer_and_the_memory_free_path_is_unchanged():
    model = tiny_mag()
    inputs, labels = data(2)
    carry, _ = model(model.initial_carry(2), inputs, labels)
    _, with_memory = model(dataclasses.replace(carry, halted=torch.zeros(2, dtype=torch.bool)), inputs, labels)
    emptied = dataclasses.replace(carry, halted=torch.zeros(2, dtype=torch.bool),
                                  memory=carry.memory.reset(torch.ones(2, dtype=torch.bool)))
    _, without = model(emptied, inputs, labels)
    assert (with_memory.logits - without.logits).abs().max() > 1e-4  # what it wrote is read back
    plain = tiny()
    assert plain.initial_carry(2).memory is None
    assert not any("memory" in name for name, _ in plain.named_parameters())


def test_memory_carry_checkpoint_round_trip_continues_identically():
    model = tiny_mag()
    inputs, labels = data(3)
    carry, _ = model(model.initial_carry(3), inputs, labels)
    back = Carry.from_state(carry.to_state())
    assert type(back.memory).__name__ == "MemoryState" and back.memory.keys() == carry.memory.keys()
    a, out_a = model(carry, inputs, labels)
    b, out_b = model(back, inputs, labels)
    assert torch.equal(out_a.logits, out_b.logits)
    assert all(torch.equal(a.memory[k], b.memory[k]) for k in a.memory)


def test_memory_gates_survive_the_model_init_and_inspect_reports_the_memory():
    model = tiny_mag(memory_theta_max=1.0)
    theta, eta, alpha = model.net.blocks[0].mixer.memory.gates(torch.zeros(1, 1, 32))
    assert theta.mean().item() == pytest.approx(0.5)  # theta_init 0.5 of theta_max, not sigmoid(0) * ...
    assert alpha.mean().item() == pytest.approx(0.01)  # retention = memory_decay
    inputs, labels = data(2)
    carry, _ = model(model.initial_carry(2), inputs, labels)
    carry = dataclasses.replace(carry, halted=torch.zeros(2, dtype=torch.bool))  # the replay keeps slot 1's memory
    snap = json.loads(json.dumps(model.inspect(carry, 1)))
    # the replayed step cycle by cycle: per cycle (one block here), the fast weights' move and the surprise after it
    z_H, z_L, memory = carry.z_H[1:2], carry.z_L[1:2], MemoryState({k: v[1:2] for k, v in carry.memory.items()})
    x = model.input_embedding(inputs[1:2])
    moves, surprises = [], []
    for _ in range(model.cfg.H_cycles):
        before = memory
        with torch.no_grad():
            z_H, z_L, memory = model.latent_recursion(z_H, z_L, x, memory)
        moves.append([math.sqrt(sum(float((memory[k] - before[k]).pow(2).sum()) for k in memory if ".dW" in k))])
        surprises.append([math.sqrt(sum(float(v.pow(2).sum()) for k, v in memory.items() if ".S" in k))])
    assert snap["memory_change"] == [[pytest.approx(v, abs=1e-4)] for [v] in moves]
    assert snap["memory_surprise"] == [[pytest.approx(v, abs=1e-4)] for [v] in surprises]
    assert all(v > 1e-4 for [v] in moves)  # every cycle writes


def test_tiny_titans_mag_model_learns_without_nan():
    torch.manual_seed(0)
    seq = 8
    cfg = ModelConfig(d_model=32, n_layers=1, n_heads=2, H_cycles=2, L_cycles=2, halt_max_steps=2,
                      memory="titans-mag", window=3, d_mem=16, memory_chunk=4, persistent_tokens=2)
    model = TinyRecursiveModel(cfg, vocab_size=12, seq_len=seq)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01, betas=(0.9, 0.95))
    g = torch.Generator().manual_seed(0)

    def sample(n):
        x = torch.randint(2, 12, (n, seq), generator=g)
        y = torch.roll(x, 1, -1)
        y[:, 0] = 0
        return x, y

    carry = model.initial_carry(32)
    losses = []
    for _ in range(60):
        carry, out = model(carry, *sample(32), generator=g)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.metrics["lm_loss"])
        assert all(torch.isfinite(v).all() for v in carry.memory.values())
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-10:]) / 10 < 0.5 * sum(losses[:10]) / 10


def test_deep_recursion_with_the_sequence_mlp_learns_instead_of_collapsing():
    # T=3, n=3 on 6x6 Sudoku: with the sequence MLP at LeCun scale the gradient through the recursion was
    # ~14x that of one pass and the answers collapsed to uniform (loss ln 6 = 1.79); the mixer starts silent
    from engine.tasks.base import batch
    from engine.tasks.sudoku import SudokuTask

    torch.manual_seed(0)
    task = SudokuTask(size=6, difficulty=1, seed=0)
    cfg = ModelConfig(d_model=64, n_layers=2, H_cycles=3, L_cycles=3, halt_max_steps=4, mixer="mlp")
    model = TinyRecursiveModel(cfg, vocab_size=task.vocab_size, seq_len=task.seq_len)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01, betas=(0.9, 0.95))
    carry = model.initial_carry(32)
    losses, index = [], 0
    for _ in range(40):
        k = int(carry.halted.sum())
        inputs, labels = carry.inputs.clone(), carry.labels.clone()
        if k:
            new_in, new_lab = batch(task, "train", list(range(index, index + k)))
            inputs[carry.halted], labels[carry.halted] = new_in, new_lab
            index += k
        carry, out = model(carry, inputs, labels)
        opt.zero_grad()
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(out.metrics["lm_loss"])
    assert sum(losses[-8:]) / 8 < 1.3, losses[-8:]


def test_halt_threshold_generalises_q_halt_above_zero():
    inputs, labels = data(4)
    for threshold, halts in ((0.5, True), (0.99, False), (0.9, True)):
        model = tiny(halt_max_steps=3, halt_exploration=0.0, halt_threshold=threshold)
        with torch.no_grad():
            model.q_head.bias.fill_(3.0)  # sigmoid(3) = 0.953
        model.train()
        carry, _ = model(model.initial_carry(4), inputs, labels)
        assert bool(carry.halted.all()) is halts, threshold
    assert halt_logit(0.5) == 0.0 and halt_logit(0.0) == -math.inf and halt_logit(1.0) == math.inf


def test_detached_cycles_train_each_cycle_from_its_own_answer_only():
    # scoring only the last answer with detached cycles is exactly TRM's "last cycle with gradient"
    inputs, labels = data(3)
    grads = []
    for kw in (dict(step_loss_weights=[0.0, 0.0, 0.0, 1.0], detach_cycles=True), {}):
        model = tiny(H_cycles=3, L_cycles=2, **kw)
        _, out = model(model.initial_carry(3), inputs, labels)
        out.loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    assert all(torch.allclose(grads[0][n], grads[1][n], atol=1e-6) for n in grads[0])


# ---- activation checkpointing ----

@pytest.mark.parametrize("kw", [dict(mixer="attention"), dict(mixer="mlp"),
                                dict(mixer="attention", memory="titans-mag", d_mem=16, memory_chunk=4),
                                dict(mixer="attention", step_loss_weights=[0.2, 0.3, 0.5, 1.0])])
def test_checkpointing_gives_the_plain_gradients_and_keeps_fewer_tensors(kw):
    inputs, labels = data(3)
    grads, saved = {}, {}
    for on in (False, True):
        m = tiny(n_layers=2, checkpointing=on, **kw).train()
        carry = m.initial_carry(3)
        carry, _ = m(carry, inputs, labels)  # a second step, so the carried latents and memory are not fresh
        count = [0]

        def pack(t, count=count):
            count[0] += t.numel()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            _, out = m(carry, inputs, labels)
        out.loss.backward()
        grads[on] = {n: p.grad for n, p in m.named_parameters() if p.grad is not None}
        saved[on] = count[0]
    assert grads[True].keys() == grads[False].keys()
    for name, g in grads[False].items():
        torch.testing.assert_close(grads[True][name], g, rtol=1e-5, atol=1e-6, msg=name)
    assert saved[True] < saved[False]  # what autograd holds outside the recomputed blocks


@pytest.mark.slow  # torch.compile on a CPU: about a minute and a half on 2 shared cores
def test_checkpointing_composes_with_compile_and_the_memory():
    grads = {}
    for compiled in (False, True):
        m = tiny(n_layers=2, H_cycles=2, L_cycles=1, memory="titans-mag", d_mem=16, memory_chunk=4,
                 checkpointing=True).train()
        if compiled:
            m.net.compile()
        inputs, labels = data(2)
        _, out = m(m.initial_carry(2), inputs, labels)
        out.loss.backward()
        grads[compiled] = torch.cat([p.grad.flatten() for p in m.parameters() if p.grad is not None])
    torch.testing.assert_close(grads[True], grads[False], rtol=1e-4, atol=1e-5)
