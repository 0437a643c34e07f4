"""Model FLOPs of a training step, counted from the model's shapes: the figure model FLOP utilisation divides by.

Only matrix products count (a multiply-add is 2 FLOPs); norms, activations and the gates' elementwise work are
left out, as in the usual MFU convention. One pass of the shared network f over a sample of L positions:

    per block, attention mixer:  8 L D^2 (q, k, v, o)  +  4 L^2 D (q k^T and the weighted sum of v)
    per block, sequence MLP:     6 L D h_L            (SwiGLU across positions, hidden h_L = swiglu_hidden(L))
    per block, Titans-MAG:       attention over P + L positions (P persistent tokens):
                                 6 (P + L) D^2 + 4 (P + L)^2 D + 2 L D^2 (o_proj on the L gated outputs)
                                 + memory: 6 L D^2 (to_qkv) + 2 L D^2 (out_proj) + 6 D H N (gates, N chunks)
                                 + H sum_i [4 L a_i b_i (keys and queries through layer i, a_i x b_i)
                                            + 4 L a_i b_i (the two weighted gradient sums of MemoryStep)
                                            + 2 L a_i b_i for i > 1 (the error sent back through layer i)]
    per block, SwiGLU:           6 L D h   (h = swiglu_hidden(D))

A supervision step runs T = H_cycles cycles of n + 1 passes (n = L_cycles). Backward costs twice the forward,
so a pass with gradient counts 3 x and a pass without (the first T - 1 cycles outside the Cognate form) 1 x:

    step FLOPs per sample = F_pass (3 g + (T (n + 1) - g)) + 3 R,   g = passes with gradient
    R = readout: 2 S D V per answer read (lm_head; T + 1 answers in the Cognate form, else 1) + 4 D (q_head)

tests/test_flops.py holds these against torch.utils.flop_counter.FlopCounterMode for small configs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from engine.config import ModelConfig
from engine.model.blocks import swiglu_hidden


def _attention(D: int, positions: int) -> int:
    """q, k, v projections and attention itself over `positions` positions (o_proj apart)."""
    return 6 * positions * D * D + 4 * positions * positions * D


def _memory(cfg: ModelConfig, L: int) -> int:
    """The Titans neural memory reading and writing a sequence of L positions (engine/model/titans.py)."""
    D, H = cfg.d_model, cfg.n_heads
    widths = [D // H, cfg.d_mem, D // H]  # depth-2 memory MLP per head
    chunks = math.ceil(L / cfg.memory_chunk)
    flops = 6 * L * D * D + 2 * L * D * D + 6 * D * H * chunks
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        flops += H * (8 * L * a * b + (2 * L * a * b if i > 0 else 0))
    return flops


def block_flops(cfg: ModelConfig, L: int) -> int:
    """One block of f over one sample of L positions."""
    D = cfg.d_model
    swiglu = 6 * L * D * swiglu_hidden(D, cfg.expansion)
    if cfg.memory == "titans-mag":
        P = cfg.persistent_tokens
        mixer = _attention(D, P + L) + 2 * L * D * D + _memory(cfg, L)
    elif cfg.mixer == "attention":
        mixer = _attention(D, L) + 2 * L * D * D
    else:
        mixer = 6 * L * D * swiglu_hidden(L, cfg.expansion)
    return mixer + swiglu


def pass_flops(cfg: ModelConfig, L: int) -> int:
    """One pass of the shared network f (every block) over one sample of L positions."""
    return cfg.n_layers * block_flops(cfg, L)


@dataclass(frozen=True)
class StepFlops:
    """A training step's model FLOPs per sample, and how they were made up."""

    per_pass: int  # F_pass: one pass of f over one sample
    passes: int  # T (n + 1)
    grad_passes: int  # g: passes that are backpropagated
    readout: int  # R: lm_head and q_head per sample
    positions: int  # L: positions f sees per sample (the tokens of tokens/s)

    @property
    def per_sample(self) -> int:
        return self.per_pass * (3 * self.grad_passes + self.passes - self.grad_passes) + 3 * self.readout

    @property
    def per_token(self) -> float:
        return self.per_sample / self.positions

    def describe(self) -> dict:
        return {"per_pass_per_sample": self.per_pass, "passes": self.passes, "grad_passes": self.grad_passes,
                "readout_per_sample": self.readout, "positions": self.positions, "per_sample": self.per_sample,
                "per_token": self.per_token,
                "formula": "per_pass x (3 grad_passes + (passes - grad_passes)) + 3 readout"}


def step_flops(cfg: ModelConfig, seq_len: int, vocab_size: int) -> StepFlops:
    """Model FLOPs of one training step (forward and backward) per sample of a model built from `cfg`."""
    L = cfg.puzzle_prefix + seq_len
    T, n = cfg.H_cycles, cfg.L_cycles
    passes = T * (n + 1)
    cognate = len(cfg.step_loss_weights) > 0
    grad_passes = passes if cognate else n + 1
    answers = T + 1 if cognate else 1
    readout = answers * 2 * seq_len * cfg.d_model * vocab_size + 4 * cfg.d_model
    return StepFlops(pass_flops(cfg, L), passes, grad_passes, readout, L)
