"""BitNet b1.58: ternary weights, 8-bit activations, straight-through gradients, 2-bit export."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from engine.model.bitlinear import (
    BitLinear,
    TernaryFileError,
    TernaryLinear,
    convert_to_bitnet,
    export_ternary,
    load_ternary,
    pack_ternary,
    quantise_activations,
    unpack_ternary,
)


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(11, 16)
        self.up = nn.Linear(16, 40, bias=True)
        self.down = nn.Linear(40, 16, bias=False)
        self.lm_head = nn.Linear(16, 11, bias=False)
        self.q_head = nn.Linear(16, 2, bias=True)

    def forward(self, tokens):  # (B, L) -> (B, L, 11), (B, 2)
        h = self.embed(tokens)
        h = h + self.down(F.silu(self.up(h)))
        return self.lm_head(h), self.q_head(h[:, 0])


def test_weights_take_exactly_three_values_minus_g_zero_plus_g():
    torch.manual_seed(0)
    layer = BitLinear(64, 48)
    w = layer.quantised_weight()
    gamma = layer.weight.abs().mean()
    values = torch.unique(w)
    assert len(values) == 3
    assert torch.allclose(values, torch.stack([-gamma, torch.zeros(()), gamma]))
    # the forward really uses those weights: it equals a plain linear on the ternary matrix
    x = torch.randn(5, 64)
    xq = quantise_activations(F.rms_norm(x, (64,), eps=1e-5))
    assert torch.equal(layer(x), F.linear(xq, w, layer.bias))


def test_activation_quantisation_error_is_at_most_max_over_254_per_token():
    torch.manual_seed(0)
    x = torch.randn(32, 7, 96) * torch.logspace(-3, 3, 7)[None, :, None]  # tokens of very different scale
    err = (quantise_activations(x) - x).abs().amax(dim=-1)  # (32, 7)
    bound = x.abs().amax(dim=-1) / 254
    assert (err <= bound * (1 + 1e-5)).all()
    assert (err > bound * 0.5).any()  # the bound is tight: the grid really has 255 levels, not more
    levels = (quantise_activations(x) * 127 / x.abs().amax(dim=-1, keepdim=True)).round()
    assert levels.abs().max() <= 127 and len(torch.unique(levels[0, 0])) > 40


def test_gradients_flow_straight_through_to_latent_weights():
    torch.manual_seed(0)
    layer = BitLinear(16, 8)
    x = torch.randn(4, 16, requires_grad=True)
    layer(x).pow(2).sum().backward()
    # the straight-through gradient is the one of a plain linear on the quantised input and weight
    xq = quantise_activations(F.rms_norm(x.detach(), (16,), eps=1e-5))
    y = F.linear(xq, layer.quantised_weight(), layer.bias)
    expected_w = (2 * y).transpose(0, 1) @ xq  # d/dW of sum(y^2)
    assert torch.allclose(layer.weight.grad, expected_w, atol=1e-5)
    assert layer.weight.grad.abs().sum() > 0 and x.grad is not None


def test_convert_swaps_hidden_linears_only_and_keeps_parameters():
    model = TinyNet()
    params_before = dict(model.named_parameters())
    convert_to_bitnet(model)
    assert isinstance(model.up, BitLinear) and isinstance(model.down, BitLinear)
    assert type(model.lm_head) is nn.Linear and type(model.q_head) is nn.Linear
    assert isinstance(model.embed, nn.Embedding)
    after = dict(model.named_parameters())
    assert after.keys() == params_before.keys()
    assert all(after[k] is params_before[k] for k in after)  # same objects: an optimizer keeps working


def test_ste_training_learns():
    torch.manual_seed(0)
    model = convert_to_bitnet(TinyNet())
    tokens = torch.randint(0, 11, (64, 6))
    target = (tokens + 1) % 11
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    first = None
    for _ in range(150):
        loss = F.cross_entropy(model(tokens)[0].flatten(0, 1), target.flatten())
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.25 * first


@pytest.mark.parametrize("n", [1, 3, 4, 5, 64 * 33 + 3])
def test_pack_unpack_roundtrip_four_weights_a_byte(n):
    torch.manual_seed(n)
    w = torch.randn(n)
    packed, gamma = pack_ternary(w)
    assert packed.dtype == torch.uint8 and packed.numel() == -(-n // 4)
    gamma_expected = w.abs().mean()
    expected = (w / gamma_expected).round().clamp(-1, 1) * gamma_expected
    assert torch.equal(unpack_ternary(packed, gamma, (n,)), expected)


def test_export_then_load_gives_the_ste_forward_exactly(tmp_path):
    torch.manual_seed(0)
    model = convert_to_bitnet(TinyNet())
    with torch.no_grad():
        model.up.bias.normal_()
    tokens = torch.randint(0, 11, (8, 5))
    expected = model(tokens)

    path = tmp_path / "ternary.safetensors"
    sizes = export_ternary(model, path)
    assert sizes["ternary_packed_bytes"] == -(-16 * 40 // 4) + -(-40 * 16 // 4)
    assert sizes["ternary_float32_bytes"] == 16 * sizes["ternary_packed_bytes"]

    torch.manual_seed(1)  # a fresh model with other weights, as `lab` would build from the config
    fresh = convert_to_bitnet(TinyNet())
    load_ternary(fresh, path)
    assert isinstance(fresh.up, TernaryLinear) and isinstance(fresh.down, TernaryLinear)
    got = fresh(tokens)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


def test_loading_a_plain_safetensors_file_is_a_clear_error(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(TernaryFileError, match="not a ternary export"):
        load_ternary(TinyNet(), path)
