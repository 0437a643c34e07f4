"""One chunk of the Titans memory recurrence as a single autograd.Function with a hand-written backward.

For a chunk of L tokens and a memory MLP of layers i = 0..depth-1 (fast weights W_i (BH, d_in, d_out), momentum
S_i, learned initial weights M0_i (H, d_in, d_out), output scale s_i):

    h_0 = [k; q]                 z_i = (h_i @ W_i) s_i          h_{i+1} = silu(z_i)      o = z_last
    read = o[queries]            r_last = o[keys] - v           (half the gradient of ||M(k) - v||^2)
    d_i = s_i r_i                r_{i-1} = (d_i @ W_i^T) silu'(z_{i-1}[keys])          x_i = h_i[keys]
    c_i = min(1, clip / (2 |x_i| |d_i|))      per token (c = 1 without a clip)
    W_i' = a W_i + (1 - a) M0_i + m S_i + (w c_i x_i)^T d_i          S_i' = e S_i + (u c_i x_i)^T d_i

w, u (BH, L, 1): each token's weight in the weight and momentum sums (the descent sign and factor 2 included);
a, e, m (BH, 1, 1): the chunk's decay, momentum decay and momentum-to-weights gates. Autograd over these lines
would keep a weight-sized tensor per product, add three weight-sized gradients per W_i and run some forty small
kernels per layer; here the backward reads each state tensor a few times and writes its gradient once, and
saves only the chunk's inputs and its token-sized activations. torch.autograd.gradcheck holds it to the autograd
path (tests/test_memory_kernel.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _dot(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(BH, d_in, d_out) x2 -> (BH, 1, 1) Frobenius inner products (vecdot: a bmm of 1 x n by n x 1 is 6x slower)."""
    return torch.linalg.vecdot(x.flatten(1), y.flatten(1)).view(-1, 1, 1)


def _silu_grad(z: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """silu'(z) from z and h = silu(z): sig + h (1 - sig)."""
    sig = torch.sigmoid(z)
    return torch.addcmul(sig, h, 1.0 - sig)


def _silu_second(z: torch.Tensor) -> torch.Tensor:
    """silu''(z) = sig (1 - sig) (2 + z (1 - 2 sig))."""
    sig = torch.sigmoid(z)
    return sig * (1.0 - sig) * (2.0 + z * (1.0 - 2.0 * sig))


class MemoryChunk(torch.autograd.Function):
    """apply(k, v, q, w, u, a, e, m, scales, clip, *W, *S, *M0) -> (read, *W', *S'); see the module docstring.

    k, v, q (BH, L, hd); scales: the layers' output scales (floats); clip: the per-token gradient norm cap (0: none).
    """

    @staticmethod
    def forward(ctx, k, v, q, w, u, a, e, m, scales, clip, *state):
        depth = len(scales)
        weights, momenta, initials = state[:depth], state[depth:2 * depth], state[2 * depth:]
        L, H = k.shape[1], initials[0].shape[0]
        hs, zs = [torch.cat([k, q], 1)], []  # (BH, 2L, .) per layer: inputs and pre-activations
        for i, (W, scale) in enumerate(zip(weights, scales)):
            z = hs[-1] @ W
            if scale != 1.0:
                z = z * scale
            zs.append(z)
            if i < depth - 1:
                hs.append(F.silu(z))
        read = zs[-1][:, L:]
        r = zs[-1][:, :L] - v
        ds, clips, new_weights, new_momenta = [None] * depth, [None] * depth, [None] * depth, [None] * depth
        back = [None] * depth  # back[i] = d_i W_i^T (BH, L, d_in), the inner gradient's step down through layer i
        for i in reversed(range(depth)):
            d = r * scales[i] if scales[i] != 1.0 else r
            x = hs[i][:, :L]
            c = None
            if clip > 0:  # the per-token gradient 2 x^T d has norm 2 |x| |d|
                c = (clip / (2.0 * x.norm(dim=-1, keepdim=True) * d.norm(dim=-1, keepdim=True)).clamp_min(1e-12))
                c = c.clamp(max=1.0)
            if i > 0:
                back[i] = d @ weights[i].transpose(1, 2)
                r = back[i] * _silu_grad(zs[i - 1][:, :L], hs[i][:, :L])
            cx = x * c if c is not None else x
            W = weights[i]
            base = torch.lerp(initials[i], W.view(-1, *initials[i].shape), a.view(-1, H, 1, 1)).view_as(W)
            new_weights[i] = base.addcmul_(m, momenta[i]).baddbmm_((w * cx).transpose(1, 2), d)
            new_momenta[i] = (momenta[i] * e).baddbmm_((u * cx).transpose(1, 2), d)
            ds[i], clips[i] = d, c
        ctx.scales, ctx.clip = scales, clip
        ctx.save_for_backward(k, v, q, w, u, a, e, m, *weights, *momenta, *initials, *hs, *zs, *ds, *back[1:],
                              *[c for c in clips if c is not None])
        return (read, *new_weights, *new_momenta)

    @staticmethod
    def backward(ctx, g_read, *g_state):
        scales, clip = ctx.scales, ctx.clip
        depth = len(scales)
        saved = ctx.saved_tensors
        k, v, q, w, u, a, e, m = saved[:8]
        weights, momenta, initials, hs, zs, ds = (saved[8 + j * depth: 8 + (j + 1) * depth] for j in range(6))
        back = (None, *saved[8 + 6 * depth: 7 + 7 * depth])
        clips = saved[7 + 7 * depth:] or [None] * depth
        g_weights_out, g_momenta_out = g_state[:depth], g_state[depth:]
        L, BH, H = k.shape[1], k.shape[0], initials[0].shape[0]

        # the update: what flows to the state, the gates, the token weights and each layer's (x_i, d_i)
        g_w, g_u = torch.zeros_like(w), torch.zeros_like(u)
        g_a, g_e, g_m = torch.zeros_like(a), torch.zeros_like(e), torch.zeros_like(m)
        g_weights, g_momenta, g_initials, g_xs, g_ds = [], [], [], [], []
        for i in range(depth):
            gW, gS, W, S, x, d, c = g_weights_out[i], g_momenta_out[i], weights[i], momenta[i], hs[i][:, :L], ds[i], clips[i]
            cx = x * c if c is not None else x
            g_wx = torch.bmm(d, gW.transpose(1, 2))  # (BH, L, d_in): gradient of w c x
            g_ux = torch.bmm(d, gS.transpose(1, 2))
            g_d = torch.baddbmm(torch.bmm(w * cx, gW), u * cx, gS)  # (BH, L, d_out)
            g_w += (g_wx * cx).sum(-1, keepdim=True)
            g_u += (g_ux * cx).sum(-1, keepdim=True)
            g_cx = w * g_wx + u * g_ux
            g_x = g_cx * c if c is not None else g_cx
            if c is not None:  # where the clip binds, c = clip / (2 |x| |d|): dc = -c (dx.x / |x|^2 + dd.d / |d|^2)
                binds = (c < 1.0).to(c.dtype)
                g_c = (g_cx * x).sum(-1, keepdim=True) * binds * c
                g_x = g_x - g_c / x.pow(2).sum(-1, keepdim=True).clamp_min(1e-30) * x
                g_d = g_d - g_c / d.pow(2).sum(-1, keepdim=True).clamp_min(1e-30) * d
            g_a += _dot(gW, W) - torch.linalg.vecdot(gW.view(-1, H, initials[i][0].numel()),
                                                     initials[i].view(1, H, -1)).view(BH, 1, 1)
            g_e += _dot(gS, S)
            g_m += _dot(gW, S)
            g_initials.append(torch.einsum("bh,bhio->hio", (1.0 - a).view(-1, H), gW.view(-1, *initials[i].shape)))
            g_weights.append(gW * a)
            g_momenta.append(torch.addcmul(gS * e, m, gW))
            g_xs.append(g_x)
            g_ds.append(g_d)

        # the inner gradient chain d_last -> r -> d_i, in reverse: layer i's d feeds r_{i-1} = (d_i W_i^T) silu'
        g_z_keys = [None] * depth  # extra gradient on z_i[keys] through silu'
        g_r = g_ds[0] * scales[0] if scales[0] != 1.0 else g_ds[0]
        for i in range(1, depth):
            z_prev, h_i = zs[i - 1][:, :L], hs[i][:, :L]
            slope = _silu_grad(z_prev, h_i)
            g_A = g_r * slope  # A = d_i W_i^T
            g_z_keys[i - 1] = g_r * back[i] * _silu_second(z_prev)
            g_d = g_ds[i].baddbmm(g_A, weights[i])
            g_weights[i].baddbmm_(g_A.transpose(1, 2), ds[i])
            g_r = g_d * scales[i] if scales[i] != 1.0 else g_d
        g_v = -g_r

        # the read path and the keys' forward pass, top layer down
        g_z = torch.cat([g_r, g_read if g_read is not None else torch.zeros_like(q)], 1)  # (BH, 2L, hd)
        for i in reversed(range(depth)):
            g_y = g_z * scales[i] if scales[i] != 1.0 else g_z
            g_weights[i].baddbmm_(hs[i].transpose(1, 2), g_y)
            g_h = torch.bmm(g_y, weights[i].transpose(1, 2))  # (BH, 2L, d_in)
            g_h[:, :L] += g_xs[i]
            if i > 0:
                g_z = g_h * _silu_grad(zs[i - 1], hs[i])
                g_z[:, :L] += g_z_keys[i - 1]
        g_k, g_q = g_h[:, :L], g_h[:, L:]
        return (g_k, g_v, g_q, g_w, g_u, g_a, g_e, g_m, None, None, *g_weights, *g_momenta, *g_initials)
