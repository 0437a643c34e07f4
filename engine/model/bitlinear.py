"""BitNet b1.58: ternary weights and 8-bit activations, trained with a straight-through estimator.

    BitLinear(x) = linear(q8(rms_norm(x)), gamma * ternary(W / gamma)),   gamma = mean |W|   (per tensor)
    q8(x)        = round(x * 127 / max|x|) * max|x| / 127                 (per token, absmax)

The forward sees the quantised values exactly; the backward passes gradients straight through both
quantisers to the full-precision latent weights, which the optimizer keeps updating.

Export packs each ternary matrix 2 bits a weight (4 per byte) with its scale; `load_ternary` puts
`TernaryLinear` layers in their place, whose outputs equal the STE forward's bit for bit.
"""

from __future__ import annotations

import fnmatch
import json
import math
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

# Linears that stay full precision: the output and halting heads (and anything called an embedding).
FULL_PRECISION_MODULES = ("*emb*", "*lm_head", "*q_head")

EPS = 1e-5
FORMAT = "trm-lab-ternary"
FORMAT_VERSION = "1"


class TernaryFileError(ValueError):
    """A ternary export that cannot be loaded into this model; its message is one sentence."""


def straight_through(real: torch.Tensor, quantised: torch.Tensor) -> torch.Tensor:
    """Forward value exactly `quantised`, gradient exactly that of `real` (real - real.detach() is 0)."""
    return quantised.detach() + (real - real.detach())


@torch.no_grad()
def ternary_scale(w: torch.Tensor) -> torch.Tensor:
    """Per-tensor absmean scale gamma, shape ()."""
    return w.abs().mean().clamp(min=EPS)


@torch.no_grad()
def ternarise(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """w -> (int8 codes in {-1, 0, 1}, gamma); the quantised weight is codes * gamma."""
    gamma = ternary_scale(w)
    return (w / gamma).round().clamp(-1, 1).to(torch.int8), gamma


@torch.no_grad()
def quantise_activations(x: torch.Tensor) -> torch.Tensor:
    """8-bit absmax per token (last axis): round to 255 levels; error <= max|x| / 254 per token."""
    scale = 127.0 / x.abs().amax(dim=-1, keepdim=True).clamp(min=EPS)  # (..., 1)
    return (x * scale).round().clamp(-128, 127) / scale


def _quantised_input(x: torch.Tensor) -> torch.Tensor:
    x = F.rms_norm(x, (x.size(-1),), eps=EPS)  # normalise first so the 8-bit grid spans the useful range
    return straight_through(x, quantise_activations(x))


class BitLinear(nn.Linear):
    """nn.Linear trained as b1.58: same parameters (latent full-precision weight), quantised forward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., in) -> (..., out)
        codes, gamma = ternarise(self.weight)
        w = straight_through(self.weight, codes.to(self.weight.dtype) * gamma)  # values in {-g, 0, +g}
        return F.linear(_quantised_input(x), w, self.bias)

    @torch.no_grad()
    def quantised_weight(self) -> torch.Tensor:
        codes, gamma = ternarise(self.weight)
        return codes.to(self.weight.dtype) * gamma


class TernaryLinear(nn.Module):
    """The inference form of a trained BitLinear: int8 codes and a scale in buffers, no latent weight."""

    def __init__(self, codes: torch.Tensor, gamma: torch.Tensor, bias: torch.Tensor | None = None):
        super().__init__()
        self.out_features, self.in_features = codes.shape
        self.register_buffer("codes", codes.to(torch.int8))
        self.register_buffer("gamma", gamma.reshape(()).float())
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.codes.to(x.dtype) * self.gamma.to(x.dtype)
        return F.linear(_quantised_input(x), w, self.bias)


def convert_to_bitnet(model: nn.Module, keep: tuple[str, ...] = FULL_PRECISION_MODULES) -> nn.Module:
    """Swap every hidden nn.Linear for a BitLinear sharing its parameters (so parameter names, optimizer
    routing and checkpoints are unchanged); heads matched by `keep`, embeddings and norms stay as they are."""
    for name, module in list(model.named_modules()):
        if type(module) is not nn.Linear or any(fnmatch.fnmatchcase(name, pat) for pat in keep):
            continue
        bit = BitLinear(module.in_features, module.out_features, bias=False, device="meta")
        bit.weight = module.weight  # the same Parameter object: an optimizer built before still holds it
        bit.bias = module.bias
        _set_submodule(model, name, bit)
    return model


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, leaf, module)


# ---- 2-bit packing ----

def pack_ternary(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Ternarise w and pack it 4 weights a byte (code + 1 in {0, 1, 2}, 2 bits each, low bits first).
    Returns (uint8 tensor of ceil(numel / 4) bytes, gamma as a float32 tensor of shape ())."""
    codes, gamma = ternarise(w)
    flat = (codes.flatten().to(torch.uint8) + 1)  # int8 -1 wraps to 255; +1 brings it to 0
    pad = (-flat.numel()) % 4
    flat = torch.cat([flat, flat.new_ones(pad)]).view(-1, 4)  # pad with code 0 (stored as 1)
    packed = flat[:, 0] | (flat[:, 1] << 2) | (flat[:, 2] << 4) | (flat[:, 3] << 6)
    return packed.cpu(), gamma.float().cpu()


def unpack_codes(packed: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """uint8 bytes -> int8 codes in {-1, 0, 1} of `shape`."""
    fields = torch.stack([(packed >> shift) & 3 for shift in (0, 2, 4, 6)], dim=1).flatten()
    return (fields[: math.prod(shape)].to(torch.int8) - 1).view(shape)


def unpack_ternary(packed: torch.Tensor, gamma: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """The inverse of pack_ternary: the quantised float32 weight codes * gamma."""
    return unpack_codes(packed, shape).float() * gamma.float()


# ---- export / import ----

def export_ternary(model: nn.Module, path: str | Path) -> dict[str, int]:
    """Write one safetensors file: every BitLinear as `<name>.codes` (packed uint8), `<name>.gamma`,
    `<name>.shape`, plus the full-precision rest of the state dict under its own names.
    Returns byte counts: ternary weights packed, and what they would take in float32."""
    bit_layers = {name: m for name, m in model.named_modules() if isinstance(m, BitLinear)}
    if not bit_layers:
        raise TernaryFileError("the model has no BitLinear layers; train it with model.bitnet = true first.")
    tensors: dict[str, torch.Tensor] = {}
    packed_bytes = float_bytes = 0
    for name, layer in bit_layers.items():
        packed, gamma = pack_ternary(layer.weight.detach().float())
        tensors[f"{name}.codes"] = packed
        tensors[f"{name}.gamma"] = gamma.reshape(1)
        tensors[f"{name}.shape"] = torch.tensor(layer.weight.shape, dtype=torch.int64)
        packed_bytes += packed.numel()
        float_bytes += layer.weight.numel() * 4
    ternary_weights = {f"{name}.weight" for name in bit_layers}
    for key, value in model.state_dict().items():
        if key not in ternary_weights:
            tensors[key] = value.detach().cpu().contiguous()
    metadata = {"format": FORMAT, "version": FORMAT_VERSION, "ternary": json.dumps(sorted(bit_layers))}
    save_file(tensors, str(path), metadata=metadata)
    return {"ternary_packed_bytes": packed_bytes, "ternary_float32_bytes": float_bytes}


def load_ternary(model: nn.Module, path: str | Path) -> nn.Module:
    """Load an export into a model of the same config: each exported layer becomes a TernaryLinear,
    everything else is loaded as saved. The model is changed in place and returned."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
    if metadata.get("format") != FORMAT:
        raise TernaryFileError(f"{path} is not a ternary export; make one with `lab export RUN --ternary`.")
    tensors = load_file(str(path))
    device = next(model.parameters()).device
    for name in json.loads(metadata["ternary"]):
        try:
            layer = model.get_submodule(name)
        except AttributeError:
            raise TernaryFileError(f"{path} holds layer {name!r}, which this model does not have.") from None
        shape = tuple(int(n) for n in tensors.pop(f"{name}.shape"))
        if not isinstance(layer, nn.Linear) or tuple(layer.weight.shape) != shape:
            raise TernaryFileError(f"{path}: layer {name!r} has shape {shape}, which does not match this model.")
        codes = unpack_codes(tensors.pop(f"{name}.codes"), shape)
        gamma = tensors.pop(f"{name}.gamma")
        bias = tensors.get(f"{name}.bias")  # left in `tensors`: load_state_dict below fills it too
        _set_submodule(model, name, TernaryLinear(codes, gamma, bias).to(device))
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    missing = [k for k in missing if not k.endswith((".codes", ".gamma"))]
    if missing or unexpected:
        raise TernaryFileError(
            f"{path} does not match this model (missing {missing[:3]}, unexpected {unexpected[:3]})."
        )
    return model
