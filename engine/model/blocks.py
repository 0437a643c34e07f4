"""The pieces of the shared reasoning network f (assembled into Block and ReasoningNet in engine/model/trm.py).

    mixer: Attention (RoPE, non-causal, optional sliding window), SequenceMLP (SwiGLU across positions),
           or the Titans MAGMixer (engine/model/titans.py, built on this module's Attention)
    mlp:   SwiGLU across channels

No Linear here has a bias. Weights are initialised by the model that owns the network.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def rms_norm(x: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last axis without a weight; computed in float32 so bfloat16 stays stable."""
    return F.rms_norm(x.float(), (x.size(-1),), eps=eps).to(x.dtype)


def swiglu_hidden(d_in: int, expansion: float) -> int:
    """2/3 x expansion x d_in, rounded up to a multiple of 256 (the TRM / Llama sizing)."""
    width = math.ceil(round(2 / 3 * expansion * d_in, 6))  # round() first: 2/3 is inexact in floating point
    return 256 * math.ceil(width / 256)


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)) with gate and up fused into one Linear."""

    def __init__(self, d_in: int, expansion: float):
        super().__init__()
        self.hidden = swiglu_hidden(d_in, expansion)
        self.gate_up = nn.Linear(d_in, 2 * self.hidden, bias=False)
        self.down = nn.Linear(self.hidden, d_in, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)  # (..., hidden) each
        return self.down(F.silu(gate) * up)


class SequenceMLP(SwiGLU):
    """Token mixing by a SwiGLU across the sequence axis: positions L -> hidden -> L, shared over channels."""

    def __init__(self, seq_len: int, expansion: float):
        super().__init__(seq_len, expansion)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, L, D)
        return super().forward(x.transpose(1, 2)).transpose(1, 2)  # mix along L, back to (B, L, D)


class Rotary(nn.Module):
    """Rotary position embedding (rotate-half form); cos/sin tables are non-persistent buffers."""

    def __init__(self, d_head: int, max_len: int, theta: float):
        super().__init__()
        inv_freq = 1.0 / (theta ** (torch.arange(0, d_head, 2, dtype=torch.float32) / d_head))  # (d_head/2,)
        angles = torch.outer(torch.arange(max_len, dtype=torch.float32), inv_freq)  # (max_len, d_head/2)
        angles = torch.cat([angles, angles], dim=-1)  # (max_len, d_head)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, H, L, d_head)
        L = x.size(-2)
        cos, sin = self.cos[:L].to(x.dtype), self.sin[:L].to(x.dtype)
        x1, x2 = x.chunk(2, dim=-1)
        return x * cos + torch.cat([-x2, x1], dim=-1) * sin


def attention_mask(length: int, window: int, causal: bool) -> torch.Tensor | None:
    """Boolean (L, L) mask, True = may attend. A query sees keys at distance < window (0 = any distance)."""
    if window <= 0 and not causal:
        return None
    i = torch.arange(length)[:, None]
    j = torch.arange(length)[None, :]
    allowed = torch.ones(length, length, dtype=torch.bool)
    if window > 0:
        allowed &= (i - j).abs() < window
    if causal:
        allowed &= j <= i
    return allowed


class Attention(nn.Module):
    """Multi-head self-attention with RoPE; non-causal unless `causal`, full unless `window` > 0.

    `attend(x)` returns the per-head output before `o_proj`, so a gate (the Titans MAG branch) can act on it;
    `forward(x)` = `o_proj(attend(x))`.

    QK-clip support: with `record_max_logit = True`, each forward also stores `self.max_logit`, a detached
    (n_heads,) tensor of the largest pre-softmax logit q.k/sqrt(d_head) per head over the batch.
    """

    def __init__(self, d_model: int, n_heads: int, max_len: int, rope_theta: float,
                 window: int = 0, causal: bool = False):
        super().__init__()
        assert d_model % n_heads == 0, "d_model must be divisible by n_heads"
        self.n_heads = n_heads
        self.d_head = d_model // n_heads
        self.window = window
        self.causal = causal
        self.q_proj = nn.Linear(d_model, d_model, bias=False)
        self.k_proj = nn.Linear(d_model, d_model, bias=False)
        self.v_proj = nn.Linear(d_model, d_model, bias=False)
        self.o_proj = nn.Linear(d_model, d_model, bias=False)
        self.rotary = Rotary(self.d_head, max_len, rope_theta)
        # the mask depends only on i - j, so one built for max_len serves every shorter length by slicing
        self.register_buffer("mask", attention_mask(max_len, window, causal), persistent=False)
        self.record_max_logit = False
        self.max_logit: torch.Tensor | None = None

    def attend(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, L, D) -> per-head attention output (B, L, n_heads, d_head), before o_proj."""
        B, L, _ = x.shape
        q = self.q_proj(x).view(B, L, self.n_heads, self.d_head).transpose(1, 2)  # (B, H, L, d_head)
        k = self.k_proj(x).view(B, L, self.n_heads, self.d_head).transpose(1, 2)
        v = self.v_proj(x).view(B, L, self.n_heads, self.d_head).transpose(1, 2)
        q, k = self.rotary(q), self.rotary(k)
        mask = None if self.mask is None else self.mask[:L, :L]
        if self.record_max_logit:  # a running max: the recursion calls this layer many times per step
            latest = self._max_logit(q, k, mask)
            self.max_logit = latest if self.max_logit is None else torch.maximum(self.max_logit, latest)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, H, L, d_head)
        return out.transpose(1, 2)  # (B, L, H, d_head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, L, D) -> (B, L, D)
        heads = self.attend(x)
        return self.o_proj(heads.flatten(2))

    @torch.no_grad()
    def _max_logit(self, q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        logits = (q.float() @ k.float().transpose(-2, -1)) / math.sqrt(self.d_head)  # (B, H, L, L)
        if mask is not None:
            logits = logits.masked_fill(~mask, float("-inf"))
        return logits.amax(dim=(0, 2, 3)).detach()  # (H,)
