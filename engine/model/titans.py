"""Titans neural long-term memory and the MAG (memory-as-gate) mixer.

After "Titans: Learning to Memorize at Test Time" (Behrouz, Zhong, Mirrokni). The memory is a small MLP
M(k) = W_depth(... silu(k W_1) ...) per head whose weights are state, learned while the sequence is read:

    k, v, q = l2norm(silu(x W_k)), silu(x W_v), l2norm(silu(x W_q))   per head
    loss_t  = || M(k_t) - v_t ||^2                                     associative memory loss
    S_t     = eta S_{t-1} - (1 - eta) theta / L grad loss_t(M_c)       surprise with momentum, at the weights
                                                                       M_c of the start of t's chunk
    M_t     = M_0 + (1 - alpha) (M_{t-1} - M_0) + S_t                  forgetting: decay towards the learned
                                                                       initial weights M_0
    y_t     = M_c(q_t)                                                 retrieval reads the state after the
                                                                       last complete chunk: causal

theta = theta_max sigmoid(.), eta = sigmoid(.), alpha = sigmoid(.) come per chunk from the chunk's mean input.
Two rescalings of the paper's data-dependent theta_t keep the inner step bounded whatever the gates learn:
theta is the rate of the chunk's mean gradient (each of its L tokens steps by theta / L), so a chunk of alike
tokens, whose gradients point the same way, does not overshoot; and momentum is a moving average of surprise
(the 1 - eta), so a token's total push on the weights is theta / L G whatever eta (undampened, a learned eta
near 1 multiplies it by 1 / (1 - eta) and the memory diverges on repeated inputs). A per-token gradient clip
(max_grad_norm) bounds every step; without it a depth-2 memory can still diverge, since the second layer's
curvature grows with the first layer's weights.

Every gradient of a chunk is taken at the chunk-start weights (the paper's chunk-parallel form), so the
momentum and decay recurrences over the chunk's tokens are linear in the gradients and their result is one
weighted sum. With G_s the gradient of token s, r = (1 - eta) theta / L, beta = 1 - alpha and
a_m = sum_{j=0..m} beta^(m-j) eta^j:

    dW_end = beta^L dW + eta a_{L-1} S - r sum_s a_{L-s}   G_s        (dW = M - M_0)
    S_end  = eta^L S                   - r sum_s eta^(L-s) G_s

and for a layer with input X (L, d_in) and output gradient D (L, d_out) the weighted sum of per-token
gradients sum_s w_s X_s^T D_s is the single matmul (w * X)^T D: no per-token weight copies are made.
The per-token gradients are written in closed form (backprop through the MLP by hand, at the chunk-start
weights), but everything stays differentiable, so the outer loss trains the projections, the gates and M_0
through the memory updates; one small autograd.Function (MemoryStep) has a hand-written backward for speed.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from engine.config import ModelConfig
from engine.model import memory_kernel
from engine.model.blocks import Attention, attention_mask, rms_norm


class MemoryState(dict):
    """The memory's recurrent state, one entry per memory layer i = 1..depth, each (B, H, d_in, d_out):

    `dW{i}`: the fast weights' deviation from the learned initial weights (zero = nothing memorised);
    `S{i}`:  the momentum of past surprise.
    """

    def detach(self) -> "MemoryState":
        return MemoryState({name: t.detach() for name, t in self.items()})

    def reset(self, slots: torch.Tensor) -> "MemoryState":
        """Forget everything in the batch elements where `slots` (B,) is True."""
        return MemoryState({name: t.masked_fill(slots.view(-1, 1, 1, 1), 0.0) for name, t in self.items()})

    @staticmethod
    def join(states: list["MemoryState"]) -> "MemoryState":
        """One flat state for a carry: layer j's entries keyed `{j}.{name}`."""
        return MemoryState({f"{j}.{name}": t for j, state in enumerate(states) for name, t in state.items()})

    def split(self, n_layers: int) -> list["MemoryState"]:
        """The inverse of join."""
        layers = [MemoryState() for _ in range(n_layers)]
        for key, t in self.items():
            j, name = key.split(".", 1)
            layers[int(j)][name] = t
        return layers

    def change_norm(self) -> torch.Tensor:
        """(B,) Frobenius norm of all fast weights: how far the memory has moved from its initial weights."""
        squares = [t.pow(2).flatten(1).sum(1) for name, t in self.items() if name.split(".")[-1].startswith("dW")]
        return torch.stack(squares).sum(0).sqrt()


def chunk_update_coefficients(theta: torch.Tensor, eta: torch.Tensor, beta: torch.Tensor, length: int):
    """Coefficients of the closed-form update over a chunk of `length` tokens with constant gates.

    theta (each token's step), eta, beta: (...) per chunk. Returns
      grad_to_weights  (..., length): w_s = theta * a_{L-s}    weight of token s's gradient in dW_end
      grad_to_momentum (..., length): u_s = theta * eta^(L-s)  weight of token s's gradient in S_end
      weights_decay    (...): beta^L,   momentum_to_weights (...): eta * a_{L-1},   momentum_decay (...): eta^L
    """
    exponents = torch.arange(length + 1, device=theta.device, dtype=theta.dtype)  # 0..L
    eta_pow = eta.unsqueeze(-1) ** exponents  # (..., L+1); pow handles 0^0 = 1 (alpha = 1 means beta = 0)
    beta_pow = beta.unsqueeze(-1) ** exponents
    # a_m = sum_{j<=m} beta^(m-j) eta^j as a lower-triangular Toeplitz product, m, j in 0..L
    lag = exponents.long()[:, None] - exponents.long()[None, :]  # (L+1, L+1): m - j
    toeplitz = beta_pow[..., lag.clamp(min=0)] * (lag >= 0)  # (..., L+1, L+1)
    a = (toeplitz * eta_pow.unsqueeze(-2)).sum(-1)  # (..., L+1)
    theta = theta.unsqueeze(-1)
    grad_to_weights = theta * a[..., :length].flip(-1)  # token s = 1..L uses a_{L-s}
    grad_to_momentum = theta * eta_pow[..., :length].flip(-1)
    return grad_to_weights, grad_to_momentum, beta_pow[..., length], eta * a[..., length - 1], eta_pow[..., length]


def _unit(x: torch.Tensor) -> torch.Tensor:
    """F.normalize(x, dim=-1) (x / max(|x|, 1e-12)) as a product with rsqrt: its backward multiplies where
    normalize's divides and masks, on the largest token-sized tensors of the memory."""
    return x * x.square().sum(-1, keepdim=True).clamp_min(1e-24).rsqrt()


def _dots(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(BH,) inner products of x and y (BH, ...) row by row, as a (1, n) by (n, 1) product per row: on the CPU
    this reads both once, where linalg.vecdot writes and re-reads their product (about 1.7x the time)."""
    return torch.bmm(x.reshape(x.shape[0], 1, -1), y.reshape(y.shape[0], 1, -1).transpose(1, 2)).view(-1)


class MemoryStep(torch.autograd.Function):
    """One chunk of the recurrence for one memory layer, the gradient sums fused in: with W = M_0 + dW the full
    fast weights (BH, d_in, d_out), so that W itself is what the next chunk multiplies with,

        W' = a W + (1 - a) M_0 + m S + (w X)^T D,   S' = e S + (u X)^T D        (that is, dW' = a dW + m S + Gw)

    X (BH, L, d_in): the layer's inputs; w, u (BH, L, 1): each token's weight in the weights' and the momentum's
    sums; D (BH, L, d_out): the per-token output gradients; a, e, m (BH,); initial = M_0 (H, d_in, d_out).
    Written by hand because autograd would keep the weight-sized gradient sums Gw, Gu alive and materialise a
    weight-sized product per gate to get each gate's gradient; here every weight-sized tensor is read or
    written a few times per chunk (once, in memory_kernel's loops), which is what bounds the speed at large d_mem.
    """

    @staticmethod
    def forward(ctx, weights, momentum, X, w, u, D, a, e, m, initial):
        ctx.set_materialize_grads(False)
        # the fast weights are float32 state; under bfloat16 autocast the token terms and gates arrive in bfloat16,
        # and in-place ops do not autocast, so the update is done in the state's precision
        X, w, u, D, a, e, m = (t.to(weights.dtype) for t in (X, w, u, D, a, e, m))
        BH, L, H = X.shape[0], X.shape[1], initial.shape[0]
        w, u = w.reshape(BH, L).contiguous(), u.reshape(BH, L).contiguous()
        if memory_kernel.usable(weights, momentum, initial, w, u, D, tokens=L):  # the whole update in one pass
            new_weights, new_momentum = memory_kernel.step_forward(weights, momentum, initial, X, w, u, D,
                                                                   *(g.contiguous() for g in (a, e, m)))
        else:  # the same in five passes over the weights
            new_weights = torch.lerp(initial, weights.view(-1, *initial.shape), a.view(-1, H, 1, 1)).view_as(weights)
            new_weights.addcmul_(m.view(-1, 1, 1), momentum)
            new_momentum = momentum * e.view(-1, 1, 1)
            # in place: an out-of-place baddbmm copies its input
            new_weights.baddbmm_((w.unsqueeze(-1) * X).transpose(1, 2), D)
            new_momentum.baddbmm_((u.unsqueeze(-1) * X).transpose(1, 2), D)
        ctx.save_for_backward(weights, momentum, X, w, u, D, a, e, m, initial)
        return new_weights, new_momentum

    @staticmethod
    def backward(ctx, g_weights, g_momentum):
        weights, momentum, X, w, u, D, a, e, m, initial = ctx.saved_tensors
        BH, H = weights.shape[0], initial.shape[0]
        if g_weights is None:
            g_weights = torch.zeros_like(weights)
        if g_momentum is None:
            g_momentum = torch.zeros_like(momentum)
        if memory_kernel.usable(g_weights, g_momentum, weights, momentum, initial, w, u, D, tokens=D.shape[1]):
            g_W, g_S, dots, g_initial, g_X, g_w, g_u, g_D = memory_kernel.step_backward(
                g_weights, g_momentum, weights, momentum, initial, X, w, u, D, *(g.contiguous() for g in (a, e, m)))
            g_a, g_e, g_m = dots.unbind(1)
        else:
            g_Xw = torch.bmm(D, g_weights.transpose(1, 2))  # (BH, L, d_in)
            g_Xu = torch.bmm(D, g_momentum.transpose(1, 2))
            w, u = w.unsqueeze(-1), u.unsqueeze(-1)
            g_D = torch.baddbmm(torch.bmm(w * X, g_weights), u * X, g_momentum)  # (BH, L, d_out)
            g_X = torch.addcmul(w * g_Xw, u, g_Xu)
            g_w, g_u = (X * g_Xw).sum(-1), (X * g_Xu).sum(-1)
            # the state and gate gradients; the gates': <g_W', W - M_0>, <g_S', S>, <g_W', S>
            g_W = g_weights * a.view(-1, 1, 1)
            g_S = torch.mul(g_momentum, e.view(-1, 1, 1)).addcmul_(m.view(-1, 1, 1), g_weights)
            flat_gw = g_weights.view(BH // H, H, -1)  # (B, H, d_in d_out)
            g_against_initial = torch.bmm(initial.view(H, 1, -1), flat_gw.transpose(0, 1).transpose(1, 2))  # (H, 1, B)
            g_a = _dots(g_weights, weights) - g_against_initial.view(H, -1).t().reshape(BH)
            g_e = _dots(g_momentum, momentum)
            g_m = _dots(g_weights, momentum)
            one_minus_a = (1.0 - a).view(BH // H, H)
            g_initial = (one_minus_a.t().unsqueeze(1) @ flat_gw.transpose(0, 1)).view_as(initial)
        return (g_W, g_S, g_X, g_w.unsqueeze(-1), g_u.unsqueeze(-1), g_D, g_a.view_as(a), g_e.view_as(e),
                g_m.view_as(m), g_initial)


STATS = ("memory_tokens", "memory_surprising", "memory_written")  # the sums NeuralMemory.stats keeps


def write_mask(surprise: torch.Tensor, threshold: float, remaining: torch.Tensor | None) -> torch.Tensor:
    """Which tokens of a chunk write: surprise (BH, L) at least `threshold`, and of those at most `remaining`
    (BH,) per sequence and head, the most surprising first. -> (BH, L) bool."""
    write = surprise >= threshold
    if remaining is not None:
        rank = surprise.masked_fill(~write, -1.0).argsort(1, descending=True).argsort(1)  # 0 = most surprising
        write &= rank < remaining[:, None]
    return write


def start_stats(model: nn.Module) -> None:
    """Every neural memory in `model` starts counting its tokens, surprising tokens and writes from zero."""
    for m in model.modules():
        if isinstance(m, NeuralMemory):
            m.stats = torch.zeros(len(STATS))


def take_stats(model: nn.Module) -> dict[str, float]:
    """The counts since start_stats, summed over the memories, as rates: surprise frequency (share of tokens
    whose surprise reached the threshold) and update rate (share that wrote); counting stops."""
    total = torch.zeros(len(STATS))
    for m in model.modules():
        if isinstance(m, NeuralMemory) and m.stats is not None:
            total += m.stats.cpu()
            m.stats = None
    tokens, surprising, written = total.tolist()
    if not tokens:
        return {}
    return {"memory_surprise_rate": surprising / tokens, "memory_update_rate": written / tokens}


@torch.no_grad()
def utilisation(model: nn.Module, state: MemoryState) -> float:
    """How much of the memory is in use: the fast weights' distance from the learned initial weights relative
    to those weights' own norm, ||dW|| / ||M_0|| over every memory layer, averaged over the batch."""
    initial = sum(float(w.detach().float().square().sum()) for m in model.modules() if isinstance(m, NeuralMemory)
                  for w in m.initial_weights)
    return float(state.change_norm().float().mean()) / max(math.sqrt(initial), 1e-12)


def _logit(p: float) -> float:
    p = min(max(p, 1e-6), 1 - 1e-6)
    return math.log(p / (1 - p))


class NeuralMemory(nn.Module):
    """Titans neural long-term memory over a sequence: forward(x, state) -> (retrieved (B, T, dim), new state).

    dim: model width; d_mem: hidden width of the memory MLP; chunk_size: tokens sharing one set of gates and
    one gradient point; n_heads: independent memories of width head_dim (default dim // n_heads); depth: MLP
    layers (>= 1); theta_max: cap of the inner learning rate (per chunk mean gradient); memory_decay: default
    retention 1 - alpha per token;
    momentum: default eta; theta_init: default theta as a fraction of theta_max; persistent_tokens: learned
    tokens (persistent memory) for the attention branch of a MAG block to prepend; max_grad_norm: each token's
    gradient of each memory layer is scaled down to at most this Frobenius norm before it enters the momentum
    (0: no clipping, the plain rule). The clip is what keeps a deep memory bounded: the second layer's input
    grows with the first layer's weights, so its curvature, and with it the step that overshoots, is not
    bounded by theta alone (docs/decisions.md, "memory gradient clip").
    surprise_threshold, max_updates: a token writes only when its surprise, the relative inner loss
    ||M(k) - v||^2 / ||v||^2, reaches the threshold, and at most max_updates tokens per sequence and head write
    in one pass, the most surprising of each chunk first (0, 0: every token writes, the plain rule).
    """

    def __init__(self, dim: int, d_mem: int = 64, chunk_size: int = 16, n_heads: int = 1, depth: int = 2,
                 head_dim: int | None = None, theta_max: float = 0.1, memory_decay: float = 0.99,
                 momentum: float = 0.9, theta_init: float = 0.5, persistent_tokens: int = 0,
                 max_grad_norm: float = 0.0, surprise_threshold: float = 0.0, max_updates: int = 0):
        super().__init__()
        self.max_grad_norm = max_grad_norm
        self.surprise_threshold, self.max_updates = surprise_threshold, max_updates
        self.stats: torch.Tensor | None = None  # STATS' running sums while counting (start_stats), else None
        assert depth >= 1 and chunk_size >= 1 and n_heads >= 1
        self.dim, self.d_mem, self.chunk_size, self.n_heads, self.depth = dim, d_mem, chunk_size, n_heads, depth
        self.head_dim = head_dim or dim // n_heads
        self.theta_max = theta_max
        inner = n_heads * self.head_dim
        self.theta_init, self.momentum, self.memory_decay = theta_init, momentum, memory_decay
        self.to_qkv = nn.Linear(dim, 3 * inner, bias=False)
        self.to_gates = nn.Linear(dim, 3 * n_heads)  # (theta, eta, alpha) logits per head, from chunk means
        # the memory MLP's initial weights M_0, per head: head_dim -> d_mem -> ... -> head_dim
        widths = [self.head_dim] + [d_mem] * (depth - 1) + [self.head_dim]
        self.initial_weights = nn.ParameterList(
            nn.Parameter(torch.empty(n_heads, d_in, d_out)) for d_in, d_out in zip(widths[:-1], widths[1:]))
        # layer i computes (h @ W_i) * scale_i: unit-variance weights and inputs of norm ~1 give every layer an
        # O(1) curvature of the inner loss, so one theta suits any d_mem (keys are unit vectors: scale 1 first)
        self.layer_scales = [1.0] + [1.0 / math.sqrt(d_mem)] * (depth - 1)
        self.out_proj = nn.Linear(inner, dim, bias=False)
        self.persistent_tokens = nn.Parameter(torch.empty(persistent_tokens, dim))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The memory's own initialisation (gates, M_0, persistent tokens); call it again after a model-wide
        re-initialisation of Linear layers, which would otherwise zero the gate biases."""
        nn.init.zeros_(self.to_gates.weight)  # gates start at the configured defaults
        bias = self.to_gates.bias.view(3, self.n_heads)
        bias[0] = _logit(self.theta_init)
        bias[1] = _logit(self.momentum)
        bias[2] = _logit(1.0 - self.memory_decay)
        for i, w in enumerate(self.initial_weights):
            # the last layer starts small: an almost empty memory, so first writes do not undo a random map
            nn.init.normal_(w, std=0.1 if i == self.depth - 1 else 1.0)
        nn.init.normal_(self.persistent_tokens, std=0.02)

    # -- state -------------------------------------------------------------------------------------------
    def init_state(self, batch: int, device=None, dtype=None) -> MemoryState:
        """An empty memory: fast weights at the initial weights, no momentum."""
        state = MemoryState()
        for i, w in enumerate(self.initial_weights, start=1):
            shape = (batch, *w.shape)  # (B, H, d_in, d_out)
            state[f"dW{i}"] = torch.zeros(shape, device=device or w.device, dtype=dtype or w.dtype)
            state[f"S{i}"] = torch.zeros(shape, device=device or w.device, dtype=dtype or w.dtype)
        return state

    # -- pieces, exposed for inspection and tests ------------------------------------------------------------
    def project(self, x: torch.Tensor):
        """x (B, T, dim) -> queries, keys, values, each (B, H, T, head_dim)."""
        B, T, _ = x.shape
        qkv = F.silu(self.to_qkv(x)).view(B, T, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        return _unit(q), _unit(k), v

    def gates(self, chunk_means: torch.Tensor):
        """chunk_means (B, N, dim) -> theta, eta, alpha, each (B, H, N)."""
        logits = self.to_gates(chunk_means).view(*chunk_means.shape[:2], 3, self.n_heads).permute(2, 0, 3, 1)
        return self.theta_max * torch.sigmoid(logits[0]), torch.sigmoid(logits[1]), torch.sigmoid(logits[2])

    def recall(self, state: MemoryState, queries: torch.Tensor) -> torch.Tensor:
        """Read the memory without writing: queries (B, H, T, head_dim) -> M(queries) (B, H, T, head_dim)."""
        h = queries
        for i, (w0, scale) in enumerate(zip(self.initial_weights, self.layer_scales), start=1):
            h = (h @ (w0 + state[f"dW{i}"])) * scale
            if i < self.depth:
                h = F.silu(h)
        return h

    def _gate(self, delta, values, token_wu, remaining):
        """The write rule for one chunk: token weights (2, BH, L, 1) zeroed where a token does not write; the
        gradient still reaches the weights of the tokens that do. -> (token_wu, remaining)."""
        with torch.no_grad():
            surprise = delta.square().sum(-1) / values.square().sum(-1).clamp_min(1e-12)  # (BH, L)
            write = write_mask(surprise, self.surprise_threshold, remaining)
            if remaining is not None:
                remaining = remaining - write.sum(1)
            if self.stats is not None:  # kept on the device: read once a step, not once a chunk
                counts = torch.stack([torch.tensor(surprise.numel(), device=surprise.device),
                                      (surprise >= self.surprise_threshold).sum(), write.sum()]).float()
                self.stats = self.stats.to(surprise.device) + counts
        keep = write.unsqueeze(-1).to(token_wu.dtype)
        return token_wu * keep, remaining

    # -- the sequence ---------------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, state: MemoryState | None = None):
        """x (B, T, dim) -> (retrieved (B, T, dim), state after the last token).

        Feeding a sequence in segments whose lengths are multiples of chunk_size, passing the state along,
        gives the same outputs as feeding it whole.
        """
        B, T, _ = x.shape
        H, C = self.n_heads, self.chunk_size
        if state is None:
            state = self.init_state(B, x.device, x.dtype)
        q, k, v = (t.reshape(B * H, T, self.head_dim) for t in self.project(x))  # (BH, T, hd)

        # chunks: full ones, then a shorter tail if T is not a multiple of C
        n_full, tail = divmod(T, C)
        means = [x[:, : n_full * C].reshape(B, n_full, C, -1).mean(2)] if n_full else []
        if tail:
            means.append(x[:, n_full * C:].mean(1, keepdim=True))
        theta, eta, alpha = (g.reshape(B * H, -1) for g in self.gates(torch.cat(means, 1)))  # (BH, N)
        beta = 1.0 - alpha
        # per chunk: -2 (w, u) as one (2, BH, L, 1) tensor; (a, e, m) as one (3, BH), each contiguous, so the loops
        # read their rows in place
        coefficients = []
        groups = ([(0, n_full, C)] if n_full else []) + ([(n_full, n_full + 1, tail)] if tail else [])
        for first, last, length in groups:
            rate = (1.0 - eta[:, first:last]) * theta[:, first:last] / length  # each token's step
            w, u, a, m, e = chunk_update_coefficients(rate, eta[:, first:last], beta[:, first:last], length)
            token_weights = (-2.0 * torch.stack([w, u], 0)).movedim(2, 0).unsqueeze(-1).contiguous()  # (n, 2, BH, L, 1)
            gates = torch.stack([a, e, m], 0).movedim(2, 0).contiguous()  # (n, 3, BH)
            coefficients += zip(token_weights.unbind(0), gates.unbind(0))

        # per layer: the fast weights W = M_0 + dW of the chunk start and the momentum S, each (BH, d_in, d_out)
        weights = [(state[f"dW{i}"] + w0).view(B * H, *w0.shape[1:])
                   for i, w0 in enumerate(self.initial_weights, start=1)]
        momenta = [state[f"S{i}"].reshape(B * H, *w0.shape[1:]) for i, w0 in enumerate(self.initial_weights, start=1)]

        retrieved = []
        gated = self.surprise_threshold > 0 or self.max_updates > 0
        remaining = torch.full((B * H,), self.max_updates, device=x.device) if self.max_updates else None
        for (keys, values, queries), (token_wu, (a, e, m)) in zip(
                zip(k.split(C, 1), v.split(C, 1), q.split(C, 1)), coefficients):
            L = keys.shape[1]
            # keys and queries go through the chunk-start memory together; keep what the gradient needs
            inputs, pre_activations, activations = [], [], []
            h = torch.cat([keys, queries], 1)  # (BH, 2L, hd)
            for i, (W, scale) in enumerate(zip(weights, self.layer_scales)):
                inputs.append(h[:, :L])
                h = h @ W
                if scale != 1.0:
                    h = h * scale
                if i < self.depth - 1:
                    pre_activations.append(h[:, :L])
                    h = F.silu(h)
                    activations.append(h[:, :L])
            predicted, read = h.split(L, 1)
            retrieved.append(read)  # queries read the memory as of the chunk start

            # closed-form per-token gradients of ||M(k) - v||^2, weighted and summed per layer as (w * X)^T delta
            # inside MemoryStep; the factor 2 and the minus sign of the descent step sit in the token weights
            delta = predicted - values  # (BH, L, hd): half of d loss / d output
            if gated:
                token_wu, remaining = self._gate(delta, values, token_wu, remaining)
            elif self.stats is not None:  # no gate: every token is surprising enough and writes; count without a mask
                self.stats = self.stats + torch.tensor([float(delta.shape[0] * delta.shape[1])] * 3)
            for i in reversed(range(self.depth)):
                if self.layer_scales[i] != 1.0:
                    delta = delta * self.layer_scales[i]  # now relative to (h @ W_i)
                layer_delta = delta
                token_scale = token_wu
                if self.max_grad_norm > 0:  # clip each token's gradient 2 x^T delta, whose norm is 2 |x| |delta|
                    # min(1, c / max(2 |x| |delta|, 1e-12)) from the squared norms: their backward is two products,
                    # where a norm's divides and masks
                    squares = inputs[i].square().sum(-1, keepdim=True) * layer_delta.square().sum(-1, keepdim=True)
                    clip = (0.5 * self.max_grad_norm * squares.clamp_min(2.5e-25).rsqrt()).clamp(max=1.0)
                    token_scale = token_wu * clip
                if i > 0:  # back through silu, at the chunk-start weights: silu'(z) = sig + silu(z) (1 - sig)
                    sig = torch.sigmoid(pre_activations[i - 1])
                    silu_grad = torch.addcmul(sig, activations[i - 1], 1.0 - sig)
                    delta = (delta @ weights[i].transpose(1, 2)) * silu_grad
                weights[i], momenta[i] = MemoryStep.apply(weights[i], momenta[i], inputs[i], *token_scale, layer_delta,
                                                          a, e, m, self.initial_weights[i])

        out = torch.cat(retrieved, 1).view(B, H, T, self.head_dim).transpose(1, 2).reshape(B, T, -1)
        new_state = MemoryState()
        for i, (W, S, w0) in enumerate(zip(weights, momenta, self.initial_weights), start=1):
            new_state[f"dW{i}"] = W.view(B, H, *w0.shape[1:]) - w0
            new_state[f"S{i}"] = S.view(B, H, *w0.shape[1:])
        return self.out_proj(out), new_state


def mag_combine(attn_out: torch.Tensor, mem_out: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """The MAG gate: norm(attention) * sigmoid(norm(memory)), both (B, T, D)."""
    return rms_norm(attn_out, eps) * torch.sigmoid(rms_norm(mem_out, eps))


class MAGMixer(nn.Module):
    """Memory as a gate: sliding-window attention (persistent tokens prepended) and the neural memory read the
    same input in parallel; mag_combine gates one by the other; the attention's o_proj projects the result.

    forward(x (B, L, D), state) -> (out (B, L, D), new state); the caller adds `out` to its residual stream.
    """

    def __init__(self, d_model: int, n_heads: int, seq_len: int, rope_theta: float = 10000.0, window: int = 0,
                 d_mem: int = 64, chunk_size: int = 16, memory_decay: float = 0.99, theta_max: float = 0.1,
                 persistent_tokens: int = 4, norm_eps: float = 1e-5, causal: bool = False,
                 max_grad_norm: float = 0.0, surprise_threshold: float = 0.0, max_updates: int = 0):
        super().__init__()
        self.eps = norm_eps
        self.memory = NeuralMemory(d_model, d_mem, chunk_size, n_heads=n_heads, depth=2, theta_max=theta_max,
                                   memory_decay=memory_decay, persistent_tokens=persistent_tokens,
                                   max_grad_norm=max_grad_norm, surprise_threshold=surprise_threshold,
                                   max_updates=max_updates)
        n_persistent = persistent_tokens
        self.attention = Attention(d_model, n_heads, seq_len + n_persistent, rope_theta, window=window,
                                   causal=causal)
        if n_persistent and (window > 0 or causal):
            # persistent tokens sit at positions 0..P-1 and stay visible to every query, whatever its distance
            mask = attention_mask(seq_len + n_persistent, window, causal)
            mask[:, :n_persistent] = True
            self.attention.mask = mask

    @classmethod
    def from_config(cls, cfg: ModelConfig, seq_len: int) -> "MAGMixer":
        return cls(cfg.d_model, cfg.n_heads, seq_len, cfg.rope_theta, cfg.window, cfg.d_mem, cfg.memory_chunk,
                   cfg.memory_decay, cfg.memory_theta_max, cfg.persistent_tokens, cfg.norm_eps,
                   max_grad_norm=cfg.memory_max_grad_norm, surprise_threshold=cfg.memory_surprise_threshold,
                   max_updates=cfg.memory_max_updates)

    def init_state(self, batch: int, device=None, dtype=None) -> MemoryState:
        return self.memory.init_state(batch, device, dtype)

    def forward(self, x: torch.Tensor, state: MemoryState | None = None):
        B, L, _ = x.shape
        persistent = self.memory.persistent_tokens
        P = persistent.shape[0]
        attn = self.attention.attend(torch.cat([persistent.expand(B, P, -1).to(x.dtype), x], 1))  # (B, P+L, H, hd)
        attn = attn[:, P:].flatten(2)  # (B, L, D): drop the persistent tokens' own outputs
        mem, state = self.memory(x, state)  # (B, L, D)
        return self.attention.o_proj(mag_combine(attn, mem, self.eps)), state
