"""One query at a time through a trained TRM, with fewer operations than the training forward.

    fast = FastRecursion.of(model)          # None when the model has a part this path does not cover
    logits, q_halt, (z_H, z_L, steps) = fast.recur(inputs, latents, halt_early=True, rows=start)

It computes what TinyRecursiveModel.recur computes for a batch of one, on the same values up to float rounding: a
small model on a CPU spends its time dispatching operations rather than multiplying (at width 64 a block's
matrices are 48 x 64), so the work is laid out to dispatch fewer. One matrix product gives the queries, keys and
values and the rotated halves of the queries and keys, so the rotary embedding is two products and a sum with
tables cut to the length once; the residual sums ride on the output products (addmm); every tensor is 2-D (no
batch axis to view and flatten); z_H + x is added once per cycle rather than on each of the L_cycles passes; and
the output head reads only the rows from `rows` on (the API reads nothing before the answer). Weights are read
from the model when the path is built: build it again after they change.

Covered: attention mixers (full or windowed), no neural memory, plain nn.Linear layers in float32. A model with
Titans memory, the sequence-MLP mixer or BitNet/ternary linears returns None from `of` and keeps its own recur.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from engine.model.blocks import Attention, SwiGLU
from engine.model.trm import TinyRecursiveModel, halt_logit


class _Block:
    """One post-norm block's weights, transposed once so each product is a plain (L, in) @ (in, out)."""

    def __init__(self, block: nn.Module, length: int):
        att: Attention = block.mixer
        self.heads, self.d_head, self.eps = att.n_heads, att.d_head, block.eps
        self.d = D = att.n_heads * att.d_head
        half = self.d_head // 2

        def rotated(w: torch.Tensor) -> torch.Tensor:
            # the rows that give rotate-half of each head's output, cat(-x2, x1): RoPE's second term becomes
            # columns of the one product instead of slices, a negation and a concatenation per block call
            w = w.view(self.heads, self.d_head, -1)
            return torch.cat([-w[:, half:], w[:, :half]], dim=1).reshape(D, -1)

        q, k, v = att.q_proj.weight, att.k_proj.weight, att.v_proj.weight
        self.w_qkv = torch.cat([q, k, v, rotated(q), rotated(k)]).t().contiguous()  # (D, 5D)
        self.w_o = att.o_proj.weight.t().contiguous()
        self.w_gate_up = block.mlp.gate_up.weight.t().contiguous()
        self.w_down = block.mlp.down.weight.t().contiguous()
        # (L, 2D): every query and key head's columns side by side
        self.cos = att.rotary.cos[:length].repeat(1, 2 * self.heads).contiguous()
        self.sin = att.rotary.sin[:length].repeat(1, 2 * self.heads).contiguous()
        self.mask = None if att.mask is None else att.mask[:length, :length]
        self.hidden = block.mlp.hidden

    def __call__(self, h: torch.Tensor) -> torch.Tensor:  # (L, D) -> (L, D)
        L, D, H = h.shape[0], self.d, self.heads
        qkv = h @ self.w_qkv  # (L, 5D): q, k, v, then rotate-half of q and of k
        # RoPE as Rotary.forward computes it, x * cos + rotate_half(x) * sin, for q and k at once
        qk = torch.addcmul(qkv[:, :2 * D] * self.cos, qkv[:, 3 * D:], self.sin).view(L, 2 * H, self.d_head)
        # (1, H, L, d_head) each: with a batch axis torch takes its fused CPU kernel, as the plain forward does
        qk = qk.transpose(0, 1)[None]
        v = qkv[:, 2 * D:3 * D].view(L, H, self.d_head).transpose(0, 1)[None]
        out = F.scaled_dot_product_attention(qk[:, :H], qk[:, H:], v, attn_mask=self.mask)[0]  # (H, L, d_head)
        h = F.rms_norm(torch.addmm(h, out.transpose(0, 1).reshape(L, D), self.w_o), (D,), eps=self.eps)
        gate, up = (h @ self.w_gate_up).split(self.hidden, dim=-1)
        return F.rms_norm(torch.addmm(h, F.silu(gate) * up, self.w_down), (D,), eps=self.eps)


class FastRecursion:
    def __init__(self, model: TinyRecursiveModel):
        self.model, self.cfg = model, model.cfg
        self.blocks = [_Block(b, model.length) for b in model.net.blocks]
        self.bar = halt_logit(model.cfg.halt_threshold)

    @classmethod
    def of(cls, model: TinyRecursiveModel) -> FastRecursion | None:
        """The fast path for `model`, or None when it has a part this path does not compute the same way."""
        if model.has_memory or model.cfg.mixer != "attention":
            return None
        for block in model.net.blocks:
            att, mlp = block.mixer, block.mlp
            if type(att) is not Attention or type(mlp) is not SwiGLU:
                return None
            linears = [att.q_proj, att.k_proj, att.v_proj, att.o_proj, mlp.gate_up, mlp.down]
            if any(type(m) is not nn.Linear or m.bias is not None for m in linears):
                return None  # BitLinear quantises its inputs, TernaryLinear holds codes: computed otherwise
        if type(model.lm_head) is not nn.Linear or type(model.q_head) is not nn.Linear:
            return None
        if any(p.dtype != torch.float32 for p in model.parameters()):
            return None  # rms_norm's float32 round trip is skipped here, exact only in float32
        return cls(model)

    def net(self, hidden: torch.Tensor, injection: torch.Tensor) -> torch.Tensor:
        h = hidden + injection
        for block in self.blocks:
            h = block(h)
        return h

    @torch.inference_mode()
    def recur(self, inputs: torch.Tensor, latents: tuple[torch.Tensor, torch.Tensor] | None = None,
              n_steps: int | None = None, halt_early: bool = False) -> tuple[torch.Tensor, torch.Tensor, int]:
        """TinyRecursiveModel.recur's recursion for one query: inputs (S,) or (1, S); latents (1, L, D) each or
        None for the initial ones. Returns (z_H, z_L, steps), the latents (1, L, D); read them with rows()."""
        model, cfg = self.model, self.cfg
        x = model.input_embedding(inputs.reshape(1, -1))[0]  # (L, D)
        if latents is None:
            z_H = model.H_init.expand(model.length, -1)
            z_L = model.L_init.expand(model.length, -1)
        else:
            z_H, z_L = latents[0][0], latents[1][0]
        n_steps = cfg.halt_max_steps if n_steps is None else n_steps
        done = 0
        for done in range(1, n_steps + 1):
            for _ in range(cfg.H_cycles):
                injection = z_H + x  # the same sum on every L pass of the cycle
                for _ in range(cfg.L_cycles):
                    z_L = self.net(z_L, injection)
                z_H = self.net(z_H, z_L)
            if halt_early and done < n_steps and bool(model.q_head(z_H[:1])[0, 0] > self.bar):
                break
        return z_H[None], z_L[None], done

    @torch.inference_mode()
    def rows(self, z_H: torch.Tensor, start: int, stop: tuple[int, ...] = (), first: int = 4) -> torch.Tensor:
        """softmax(readout logits) of answer positions start, start + 1, ...: (n, V). With `stop`, the rows end at
        the first one after `start` whose most likely token is in `stop` (that row included), read `first` rows
        at a time and twice as many each time after, so a two-token answer pays for a few rows of the output
        head rather than all of them; without, every row to the end."""
        z = z_H[0, self.model.prefix + start:]
        if not stop:
            return self.model.lm_head(z).float().softmax(-1)
        out, at, n = [], 0, first
        while at < len(z):
            probs = self.model.lm_head(z[at:at + n]).float().softmax(-1)
            out.append(probs)
            best = probs.max(-1).indices  # the first largest, as argmax, but at ~0.6x its CPU time
            ends = [i for i, t in enumerate(best.tolist()) if t in stop and at + i > 0]
            if ends:
                out[-1] = probs[:ends[0] + 1]
                break
            at, n = at + n, 2 * n
        return torch.cat(out)
