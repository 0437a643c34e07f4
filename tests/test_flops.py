"""The model-FLOP count that bench/gpu.py's MFU divides by, held against torch's own FLOP counter on CPU."""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from engine.config import ModelConfig
from engine.flops import pass_flops, step_flops
from engine.model import memory_kernel
from engine.model.trm import TinyRecursiveModel

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def torch_ops_only(monkeypatch):
    """The counter sees PyTorch ops only: the memory's update runs as those ops here, not as its C loops, which do
    the same products."""
    monkeypatch.setenv(memory_kernel.ENV, "torch")
    memory_kernel.library.cache_clear()
    yield
    monkeypatch.undo()
    memory_kernel.library.cache_clear()

CONFIGS = {
    "attention": dict(mixer="attention"),
    "mlp": dict(mixer="mlp"),
    # 22 positions in chunks of 8: two full chunks and a tail of 6
    "titans-mag": dict(mixer="attention", memory="titans-mag", d_mem=24, memory_chunk=8, persistent_tokens=3),
    "cognate": dict(mixer="attention", step_loss_weights=[0.2, 0.3, 0.5], H_cycles=2),
}
VOCAB, SEQ = 11, 20


def model(name: str) -> TinyRecursiveModel:
    torch.manual_seed(0)
    cfg = ModelConfig(**{"d_model": 32, "n_layers": 2, "n_heads": 2, "H_cycles": 3, "L_cycles": 2,
                         "puzzle_prefix": 2, **CONFIGS[name]})
    return TinyRecursiveModel(cfg, vocab_size=VOCAB, seq_len=SEQ)


def baddbmm_flops(_, a_shape, b_shape, *args, out_shape=None, **kwargs) -> int:
    batch, m, k = a_shape
    return 2 * batch * m * k * b_shape[-1]  # torch's own count for baddbmm


def counted(fn) -> int:
    # the math kernel of attention is made of matmuls the counter sees; CPU's fused kernel is not counted. The
    # counter knows baddbmm but not its in-place form, which the memory's update (MemoryStep) uses
    in_place = {torch.ops.aten.baddbmm_: baddbmm_flops}
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False, custom_mapping=in_place) as counter:
        fn()
    return counter.get_total_flops()


@pytest.mark.parametrize("name", CONFIGS)
def test_one_pass_of_f_matches_the_flop_counter_exactly(name):
    m, B = model(name), 3
    h = torch.randn(B, m.length, 32)
    memory = m.initial_memory(B)
    assert counted(lambda: m.net(h, h, memory)) == B * pass_flops(m.cfg, m.length)


@pytest.mark.parametrize("name", CONFIGS)
def test_a_training_step_forward_and_backward_is_within_1_percent_of_the_count(name):
    m, B = model(name).train(), 4
    g = torch.Generator().manual_seed(1)
    inputs, labels = torch.randint(1, VOCAB, (B, SEQ), generator=g), torch.randint(1, VOCAB, (B, SEQ), generator=g)

    def step():
        _, out = m(m.initial_carry(B), inputs, labels)
        out.loss.backward()

    measured = counted(step)
    expected = B * step_flops(m.cfg, SEQ, VOCAB).per_sample
    assert abs(measured - expected) / measured < 0.01, (measured, expected)


def test_the_count_grows_with_what_it_counts():
    base = ModelConfig(d_model=64, n_layers=2, n_heads=4)
    wider = ModelConfig(d_model=128, n_layers=2, n_heads=4)
    deeper = ModelConfig(d_model=64, n_layers=4, n_heads=4)
    assert pass_flops(wider, 16) > 3 * pass_flops(base, 16)
    assert pass_flops(deeper, 16) == 2 * pass_flops(base, 16)
    s = step_flops(base, 16, 10)
    assert s.passes == base.H_cycles * (base.L_cycles + 1) and s.grad_passes == base.L_cycles + 1
