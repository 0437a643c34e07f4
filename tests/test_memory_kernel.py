"""The memory's per-chunk kernel against autograd: torch.autograd.gradcheck in float64 (its hand-written backward
against finite differences), and its outputs and gradients against the same chunk written as plain autograd ops."""

import pytest
import torch
import torch.nn.functional as F

from engine.model.memory_kernel import MemoryChunk

torch.set_num_threads(1)

BH, H, L, HEAD, D_MEM = 4, 2, 3, 3, 4


def chunk_by_autograd(k, v, q, w, u, a, e, m, scales, clip, *state):
    """The chunk in plain differentiable ops: reads, per-token inner gradients (clipped), the update."""
    depth = len(scales)
    weights, momenta, initials = state[:depth], state[depth:2 * depth], state[2 * depth:]
    hs, zs = [torch.cat([k, q], 1)], []
    for i, (W, scale) in enumerate(zip(weights, scales)):
        zs.append((hs[-1] @ W) * scale)
        if i < depth - 1:
            hs.append(F.silu(zs[-1]))
    read, r = zs[-1][:, L:], zs[-1][:, :L] - v
    new_weights, new_momenta = [None] * depth, [None] * depth
    for i in reversed(range(depth)):
        d, x = r * scales[i], hs[i][:, :L]
        c = torch.ones_like(x[..., :1])
        if clip > 0:
            c = (clip / (2.0 * x.norm(dim=-1, keepdim=True) * d.norm(dim=-1, keepdim=True)).clamp_min(1e-12)).clamp(max=1.0)
        if i > 0:
            sig = torch.sigmoid(zs[i - 1][:, :L])
            r = (d @ weights[i].transpose(1, 2)) * (sig + hs[i][:, :L] * (1 - sig))
        W0 = initials[i].repeat(BH // H, 1, 1)
        new_weights[i] = a * weights[i] + (1 - a) * W0 + m * momenta[i] + (w * c * x).transpose(1, 2) @ d
        new_momenta[i] = e * momenta[i] + (u * c * x).transpose(1, 2) @ d
    return (read, *new_weights, *new_momenta)


def inputs(depth: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0):
        return (scale * torch.randn(*shape, generator=g, dtype=torch.float64)).requires_grad_()

    widths = [HEAD] + [D_MEM] * (depth - 1) + [HEAD]
    k, v, q = rand(BH, L, HEAD), rand(BH, L, HEAD), rand(BH, L, HEAD)
    w, u = rand(BH, L, 1, scale=0.3), rand(BH, L, 1, scale=0.3)
    gates = [torch.rand(BH, 1, 1, generator=g, dtype=torch.float64).requires_grad_() for _ in range(3)]
    weights = [rand(BH, i, o) for i, o in zip(widths[:-1], widths[1:])]
    momenta = [rand(BH, i, o, scale=0.1) for i, o in zip(widths[:-1], widths[1:])]
    initials = [rand(H, i, o) for i, o in zip(widths[:-1], widths[1:])]
    scales = tuple([1.0] + [0.5] * (depth - 1))
    return (k, v, q, w, u, *gates), scales, (*weights, *momenta, *initials)


@pytest.mark.parametrize("depth,clip", [(1, 0.0), (2, 0.0), (2, 1.5), (3, 1.5)])
def test_kernel_backward_passes_gradcheck(depth, clip):
    tensors, scales, state = inputs(depth)
    if clip:  # the clip binds on some tokens and not on others, so both branches of its gradient are checked
        _, norms = clip_factors(tensors, scales, state, clip)
        assert (norms < 1).any() and (norms >= 1).any()
    assert torch.autograd.gradcheck(lambda *t: MemoryChunk.apply(*t[:8], scales, clip, *t[8:]),
                                    (*tensors, *state), eps=1e-6, atol=1e-6)


def clip_factors(tensors, scales, state, clip):
    """The raw clip factors clip / (2 |x| |d|) of every layer's tokens, from the autograd chunk's own pieces."""
    k, v, q = tensors[:3]
    depth = len(scales)
    weights = state[:depth]
    hs, zs = [torch.cat([k, q], 1)], []
    for i, (W, scale) in enumerate(zip(weights, scales)):
        zs.append((hs[-1] @ W) * scale)
        if i < depth - 1:
            hs.append(F.silu(zs[-1]))
    r, factors = zs[-1][:, :L] - v, []
    for i in reversed(range(depth)):
        d, x = r * scales[i], hs[i][:, :L]
        factors.append(clip / (2 * x.norm(dim=-1) * d.norm(dim=-1)))
        if i > 0:
            sig = torch.sigmoid(zs[i - 1][:, :L])
            r = (d @ weights[i].transpose(1, 2)) * (sig + hs[i][:, :L] * (1 - sig))
    return factors, torch.cat([f.flatten() for f in factors]).detach()


@pytest.mark.parametrize("depth,clip", [(2, 0.0), (2, 1.5), (3, 1.5)])
def test_kernel_matches_the_autograd_chunk(depth, clip):
    tensors, scales, state = inputs(depth, seed=1)
    ours = MemoryChunk.apply(*tensors, scales, clip, *state)
    reference = chunk_by_autograd(*tensors, scales, clip, *state)
    cotangents = [torch.randn_like(t) for t in ours]
    leaves = (*tensors, *state)
    for a, b in zip(ours, reference):
        torch.testing.assert_close(a, b)
    for a, b in zip(torch.autograd.grad(ours, leaves, cotangents), torch.autograd.grad(reference, leaves, cotangents)):
        torch.testing.assert_close(a, b)
