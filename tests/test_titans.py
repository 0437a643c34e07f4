"""The Titans memory against its equations: a token-by-token autograd reference, chunked feeding, causality,
the gate limits, detached segments, and that it actually remembers."""

import math

import pytest
import torch
import torch.nn.functional as F

from engine.config import ModelConfig
from engine.model import memory_kernel
from engine.model.titans import MAGMixer, MemoryState, NeuralMemory, mag_combine

torch.set_num_threads(1)


@pytest.fixture(autouse=True, params=["c", "c-2-threads", "torch"])
def kernel(request, monkeypatch):
    """Every test here runs on each path of the memory's weight-sized work: the compiled C loops on one thread and
    split over two, and the PyTorch ops (the path of a machine without a C compiler)."""
    memory_kernel.library.cache_clear()
    threads = torch.get_num_threads()
    torch.set_num_threads(2 if request.param == "c-2-threads" else 1)  # another file's test may have changed it
    if request.param == "torch":
        monkeypatch.setenv(memory_kernel.ENV, "torch")
    elif memory_kernel.library() is None:
        torch.set_num_threads(threads)
        pytest.skip("no C compiler here: the memory runs on PyTorch ops only")
    assert memory_kernel.name() == request.param.split("-")[0]
    yield request.param
    monkeypatch.undo()
    memory_kernel.library.cache_clear()
    torch.set_num_threads(threads)


BIG = 1e4  # a gate logit that saturates the sigmoid to exactly 0 or 1


def make_memory(dtype=torch.float64, dim=12, d_mem=10, chunk_size=4, n_heads=2, seed=0, **kwargs) -> NeuralMemory:
    torch.manual_seed(seed)
    memory = NeuralMemory(dim, d_mem, chunk_size, n_heads=n_heads, theta_max=2.0, **kwargs).to(dtype)
    with torch.no_grad():  # data-dependent gates, so the gate path is exercised too
        memory.to_gates.weight.normal_(0, 0.3)
    return memory


def set_gates(memory: NeuralMemory, theta: float | None = None, eta: float | None = None,
              alpha: float | None = None) -> None:
    """Pin gates to constants: zero gate weights, bias logits of +-BIG (sigmoid exactly 0 or 1) or logit(p)."""
    with torch.no_grad():
        memory.to_gates.weight.zero_()
        bias = memory.to_gates.bias.view(3, memory.n_heads)
        for row, value in enumerate((None if theta is None else theta / memory.theta_max, eta, alpha)):
            if value is not None:
                bias[row] = BIG if value >= 1 else -BIG if value <= 0 else math.log(value / (1 - value))


def reference_forward(memory: NeuralMemory, x: torch.Tensor):
    """Straight from the equations, one token at a time, gradients by autograd at the chunk-start weights:
        S_t = eta S_{t-1} - (1 - eta) theta / L grad ||M(k_t) - v_t||^2,   M_t = M_0 + (1 - alpha)(M_{t-1} - M_0) + S_t,
        y_t = M_{chunk start}(q_t).  Returns (out (B, T, dim), final weights minus M_0, final momenta)."""
    B, T, D = x.shape
    H, hd, C = memory.n_heads, memory.head_dim, memory.chunk_size
    qkv = F.silu(x @ memory.to_qkv.weight.T).view(B, T, 3, H, hd)
    q, k, v = F.normalize(qkv[:, :, 0], dim=-1), F.normalize(qkv[:, :, 1], dim=-1), qkv[:, :, 2]

    def mlp(weights, inp):
        h = inp
        for i, (w, scale) in enumerate(zip(weights, memory.layer_scales)):
            h = (h @ w) * scale
            if i < len(weights) - 1:
                h = F.silu(h)
        return h

    reads = [[[] for _ in range(H)] for _ in range(B)]  # [b][h] -> T reads of (hd,)
    final_fast, final_momentum = [], []
    for b in range(B):
        for h in range(H):
            initial = [w0[h] for w0 in memory.initial_weights]
            weights = list(initial)
            momentum = [torch.zeros_like(w) for w in initial]
            for start in range(0, T, C):
                tokens = range(start, min(start + C, T))
                logits = memory.to_gates(x[b, start:start + C].mean(0)).view(3, H)[:, h]
                eta, alpha = torch.sigmoid(logits[1]), torch.sigmoid(logits[2])
                theta = (1 - eta) * memory.theta_max * torch.sigmoid(logits[0]) / len(tokens)  # each token's step
                chunk_start = weights
                for t in tokens:
                    reads[b][h].append(mlp(chunk_start, q[b, t, h]))
                    loss = (mlp(chunk_start, k[b, t, h]) - v[b, t, h]).pow(2).sum()
                    grads = torch.autograd.grad(loss, chunk_start, create_graph=True)
                    if memory.max_grad_norm > 0:  # each layer's token gradient scaled to at most this norm
                        grads = [g * (memory.max_grad_norm / g.norm()).clamp(max=1.0) for g in grads]
                    momentum = [eta * s - theta * g for s, g in zip(momentum, grads)]
                    weights = [w0 + (1 - alpha) * (w - w0) + s for w0, w, s in zip(initial, weights, momentum)]
            final_fast.append([w - w0 for w, w0 in zip(weights, initial)])
            final_momentum.append(momentum)
    reads = torch.stack([torch.stack([torch.stack(per_head) for per_head in r], 1) for r in reads])  # (B, T, H, hd)
    out = memory.out_proj(reads.reshape(B, T, H * hd))
    return out, final_fast, final_momentum


def assert_states_match(state, ref_fast, ref_momentum, n_batch: int = 2, n_heads: int = 2) -> None:
    """Every layer's fast weights and momentum equal the reference's, per batch element and head (1e-6)."""
    for b in range(n_batch):
        for h in range(n_heads):
            for i, (fast, momentum) in enumerate(zip(ref_fast[b * n_heads + h], ref_momentum[b * n_heads + h])):
                assert torch.allclose(state[f"dW{i + 1}"][b, h], fast, atol=1e-6, rtol=0)
                assert torch.allclose(state[f"S{i + 1}"][b, h], momentum, atol=1e-6, rtol=0)


def test_matches_token_by_token_autograd_reference_in_float64():
    memory = make_memory()
    x = torch.randn(2, 18, 12, dtype=torch.float64)  # 4 full chunks of 4 and a tail of 2
    out, state = memory(x)
    ref_out, ref_fast, ref_momentum = reference_forward(memory, x)
    assert (out - ref_out).abs().max().item() <= 1e-6
    assert_states_match(state, ref_fast, ref_momentum)
    assert state["dW1"].abs().max() > 1e-2  # the memory did move: the comparison was not of zeros


def test_gradient_clip_matches_the_reference_and_binds():
    x = torch.randn(2, 18, 12, dtype=torch.float64) * 3
    plain = make_memory()
    clipped = make_memory(max_grad_norm=0.5)  # the same weights (same seed), a binding clip
    out, state = clipped(x)
    ref_out, ref_fast, ref_momentum = reference_forward(clipped, x)
    assert (out - ref_out).abs().max().item() <= 1e-6
    assert_states_match(state, ref_fast, ref_momentum)
    # it did bind: the clipped memory moved less than the plain one
    assert state.change_norm().max() < 0.9 * plain(x)[1].change_norm().max()
    params = [p for p in clipped.parameters() if p.numel() and p is not clipped.persistent_tokens]
    probe = torch.randn_like(out)
    fast = torch.autograd.grad((clipped(x)[0] * probe).sum(), params)
    ref = torch.autograd.grad((ref_out * probe).sum(), params)
    for g, r in zip(fast, ref):
        assert torch.allclose(g, r, atol=1e-8, rtol=1e-6)


def test_outer_gradients_match_reference():
    """The outer loss trains projections, gates and M_0 through the memory updates exactly as autograd would."""
    memory = make_memory()
    x = torch.randn(2, 10, 12, dtype=torch.float64)
    probe = torch.randn(2, 10, 12, dtype=torch.float64)
    params = [p for p in memory.parameters() if p.numel() and p is not memory.persistent_tokens]
    first, state = memory(x[:, :8])  # two segments, the state passed on with its graph (as within a TRM step)
    second, _ = memory(x[:, 8:], state)
    fast = torch.autograd.grad((torch.cat([first, second], 1) * probe).sum(), params)
    ref = torch.autograd.grad((reference_forward(memory, x)[0] * probe).sum(), params)
    for g, r in zip(fast, ref):
        assert torch.allclose(g, r, atol=1e-8, rtol=1e-6)
    gate_grad = fast[[id(p) for p in params].index(id(memory.to_gates.weight))]
    assert gate_grad.abs().max() > 1e-4  # gradients do reach the gates through the update


def test_chunk_parallel_equals_chunk_by_chunk():
    torch.manual_seed(1)
    memory = NeuralMemory(32, 24, chunk_size=8, n_heads=2, theta_max=1.0)
    with torch.no_grad():
        memory.to_gates.weight.normal_(0, 0.3)
    x = torch.randn(3, 64, 32)
    whole, whole_state = memory(x)
    pieces, state = [], None
    for segment in x.split(8, 1):  # one chunk per call, the state carried between calls
        out, state = memory(segment, state)
        pieces.append(out)
    assert (torch.cat(pieces, 1) - whole).abs().max().item() <= 1e-5
    for name in whole_state:
        assert (state[name] - whole_state[name]).abs().max().item() <= 1e-5
    assert (whole[:, 8:] - memory(x[:, 8:])[0]).abs().max() > 1e-3  # the carried state mattered


@pytest.mark.parametrize("t", [0, 2, 5, 9])
def test_causal(t):
    memory = make_memory(chunk_size=4)
    x = torch.randn(2, 16, 12, dtype=torch.float64)
    y = x.clone()
    y[:, t + 1] += 1.0
    out_x, out_y = memory(x)[0], memory(y)[0]
    assert torch.equal(out_x[:, : t + 1], out_y[:, : t + 1])
    next_chunk = (t + 1) // 4 * 4 + 4  # the first token reading the state that saw token t+1
    assert (out_x[:, next_chunk:] - out_y[:, next_chunk:]).abs().max() > 1e-6


def test_alpha_one_resets_to_the_initial_weights():
    memory = make_memory()
    x = torch.randn(2, 8, 12, dtype=torch.float64)
    _, written = memory(x)
    assert written["dW1"].abs().max() > 1e-2
    set_gates(memory, theta=0.0, eta=0.0, alpha=1.0)
    _, reset = memory(x[:, :4], written)
    for name, tensor in reset.items():
        assert torch.equal(tensor, torch.zeros_like(tensor)), name
    # what it reads next is what a memory that never saw anything reads
    queries = memory.project(x)[0]
    assert torch.equal(memory.recall(reset, queries), memory.recall(memory.init_state(2, dtype=x.dtype), queries))


def test_theta_and_alpha_zero_leave_the_weights_unchanged():
    memory = make_memory()
    x = torch.randn(2, 12, 12, dtype=torch.float64)
    set_gates(memory, theta=0.0, alpha=0.0)
    out, state = memory(x)  # from an empty memory: nothing is ever written
    for tensor in state.values():
        assert torch.equal(tensor, torch.zeros_like(tensor))
    reads = memory.recall(memory.init_state(2, dtype=x.dtype), memory.project(x)[0])  # M_0(q) for every token
    assert torch.allclose(out, memory.out_proj(reads.transpose(1, 2).flatten(2)), atol=1e-12)

    written = make_memory()(x)[1]  # a memory that has learned something, momentum included
    set_gates(memory, theta=0.0, eta=0.0, alpha=0.0)
    _, kept = memory(x, written)
    for name in ("dW1", "dW2"):  # equal up to the rounding of (M_0 + dW) - M_0
        assert torch.allclose(kept[name], written[name], rtol=0, atol=1e-13), name


def test_detached_segments_each_run_their_own_backward():
    memory = make_memory(dtype=torch.float32)
    x = torch.randn(2, 16, 12)
    out, state = memory(x[:, :8])
    out.square().mean().backward()
    state = state.detach()
    memory.zero_grad()
    out2, state2 = memory(x[:, 8:], state)
    out2.square().mean().backward()  # would raise if the first segment's freed graph were still attached
    assert memory.to_qkv.weight.grad.abs().max() > 0
    assert not (out2 - memory(x[:, 8:])[0]).abs().max() < 1e-6  # the carried memory changed what is read


def test_reset_forgets_only_the_chosen_slots():
    memory = make_memory()
    x = torch.randn(3, 8, 12, dtype=torch.float64)
    _, state = memory(x)
    reset = state.reset(torch.tensor([True, False, True]))
    assert torch.equal(reset["dW1"][1], state["dW1"][1]) and torch.equal(reset["S2"][1], state["S2"][1])
    assert not reset["dW1"][0].any() and not reset["S1"][2].any()
    assert torch.allclose(memory(x, reset)[0][0], memory(x)[0][0])
    # the same on a carry's flat state holding two layers
    flat = MemoryState.join([state, state]).reset(torch.tensor([True, False, True]))
    layers = flat.split(2)
    assert all(torch.equal(layer[name], reset[name]) for layer in layers for name in reset)
    assert flat.change_norm().tolist() == pytest.approx([0.0, math.sqrt(2) * state.change_norm()[1].item(), 0.0])


def test_memory_remembers_a_pair_written_long_before():
    """A key/value pair stated in the first chunk is retrieved after 15 chunks of distractors with a small error;
    a key that was never written is not. 16 independent memories (the batch), errors averaged."""
    torch.manual_seed(0)
    dim, chunk, trials = 32, 8, 16
    memory = NeuralMemory(dim, 64, chunk_size=chunk, n_heads=1, theta_max=4.0)
    set_gates(memory, theta=3.2, eta=0.5, alpha=0.001)  # each token steps by (1 - eta) theta / L = 0.2
    fact, other = torch.randn(trials, 1, dim), torch.randn(trials, 1, dim)
    x = torch.cat([fact.expand(trials, chunk, dim), torch.randn(trials, 120, dim)], 1)
    with torch.no_grad():
        _, state = memory(x)
        _, keys, values = memory.project(torch.cat([fact, other], 1))  # (trials, 1, 2, hd)

        def relative_error(s: MemoryState) -> list[float]:  # mean over trials of |M(k) - v| / |v|, (fact, other)
            return ((memory.recall(s, keys) - values).norm(dim=-1) / values.norm(dim=-1)).mean((0, 1)).tolist()

        (fact_error, other_error), (fact_before, _) = relative_error(state), relative_error(memory.init_state(trials))
    assert fact_error < 0.6, fact_error
    assert fact_error < 0.65 * other_error, (fact_error, other_error)
    assert fact_error < 0.6 * fact_before, (fact_error, fact_before)


def test_gates_start_at_the_configured_defaults_even_after_a_model_wide_reinit():
    memory = NeuralMemory(16, 8, chunk_size=4, n_heads=2, theta_max=0.1, memory_decay=0.99, momentum=0.9)
    for module in memory.modules():  # what a model's own init does to every Linear
        if isinstance(module, torch.nn.Linear):
            torch.nn.init.normal_(module.weight)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
    memory.reset_parameters()
    theta, eta, alpha = memory.gates(torch.randn(3, 5, 16))
    assert torch.allclose(theta, torch.full_like(theta, 0.05))
    assert torch.allclose(eta, torch.full_like(eta, 0.9))
    assert torch.allclose(alpha, torch.full_like(alpha, 0.01))  # retention 1 - alpha = memory_decay


def test_mag_combine_is_norm_times_sigmoid_norm():
    a, m = torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    rms = lambda t: t / t.pow(2).mean(-1, keepdim=True).add(1e-5).sqrt()
    assert torch.allclose(mag_combine(a, m), rms(a) * torch.sigmoid(rms(m)), atol=1e-6)


def test_mag_mixer_reaches_beyond_the_window_through_memory_and_sees_persistent_tokens():
    cfg = ModelConfig(d_model=16, n_heads=2, memory="titans-mag", window=2, d_mem=16, memory_chunk=4,
                      persistent_tokens=3)
    torch.manual_seed(0)
    mixer = MAGMixer.from_config(cfg, seq_len=24)
    x = torch.randn(2, 24, 16, requires_grad=True)
    out, state = mixer(x)
    assert out.shape == (2, 24, 16) and state["dW1"].shape == (2, 2, 8, 16)
    grad_x, grad_p = torch.autograd.grad(out[:, -1].sum(), [x, mixer.memory.persistent_tokens])
    assert grad_x[:, 0].abs().max() > 1e-6  # token 0 is 23 positions away: only the memory carries it
    assert grad_p.abs().min() > 0  # every persistent token is attended from the last position

    set_gates(mixer.memory, theta=0.0, alpha=0.0)  # a memory that writes nothing carries nothing
    out = mixer(x)[0]
    assert torch.autograd.grad(out[:, -1].sum(), x)[0][:, 0].abs().max() == 0


def test_without_a_working_compiler_the_memory_falls_back_to_torch(kernel, monkeypatch, tmp_path):
    """No compiler, or one that fails, leaves the PyTorch path and no half-built library behind."""
    if kernel != "torch":
        pytest.skip("chooses its own path: run once")
    monkeypatch.delenv(memory_kernel.ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(memory_kernel.tempfile, "gettempdir", lambda: str(tmp_path / "tmp"))
    monkeypatch.setattr(memory_kernel.shutil, "which", lambda name: None)
    memory_kernel.library.cache_clear()
    assert memory_kernel.library() is None and memory_kernel.name() == "torch"
    monkeypatch.setattr(memory_kernel.shutil, "which", lambda name: "/bin/false")  # a compiler that always fails
    memory_kernel.library.cache_clear()
    assert memory_kernel.library() is None
    assert not list(tmp_path.rglob("*.so"))
    memory = make_memory()  # and the memory still runs, on the PyTorch ops
    out, _ = memory(torch.randn(2, 8, 12, dtype=torch.float64))
    assert torch.isfinite(out).all()
    memory_kernel.library.cache_clear()


@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
@pytest.mark.parametrize("sizes", [dict(dim=12, d_mem=10, chunk_size=4), dict(dim=64, d_mem=40, chunk_size=12)])
def test_the_two_paths_agree(kernel, monkeypatch, dtype, tolerance, sizes):
    """The C loops and the PyTorch ops give the same outputs, states and gradients, where the C loops sum in
    another order (the float64 tests above hold each path to the reference). The second sizes take the loops'
    vector paths (whole 64-byte vectors of columns, whole blocks of rows and tokens) beside their remainders.
    Runs at one and at two threads (the fixture's C paths); it chooses the paths itself."""
    if kernel == "torch":
        pytest.skip("compares the paths itself: the C runs cover it")
    results = []
    for path in ("c", "torch"):
        memory_kernel.library.cache_clear()
        if path == "torch":
            monkeypatch.setenv(memory_kernel.ENV, "torch")
        else:
            monkeypatch.delenv(memory_kernel.ENV, raising=False)
        memory = make_memory(dtype=dtype, max_grad_norm=1.0, **sizes)
        x = torch.randn(3, 40, sizes["dim"], generator=torch.Generator().manual_seed(1), dtype=dtype)
        out, state = memory(x)
        params = [p for p in memory.parameters() if p.numel() and p is not memory.persistent_tokens]
        grads = torch.autograd.grad(out.square().sum() + sum(t.square().sum() for t in state.values()), params)
        results.append((memory_kernel.name(), out, [state[k] for k in sorted(state)], grads))
    memory_kernel.library.cache_clear()
    (c_name, *c), (t_name, *t) = results
    assert t_name == "torch"
    if c_name != "c":
        pytest.skip("no C compiler here: only the PyTorch path exists")
    for a, b in zip([c[0], *c[1], *c[2]], [t[0], *t[1], *t[2]]):
        assert torch.allclose(a, b, rtol=10 * tolerance, atol=tolerance), (a - b).abs().max()
