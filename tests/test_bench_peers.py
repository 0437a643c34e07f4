"""bench/peers.py scores the peer's early-halting and full-step variants from one pass; both must be exactly what
the peer's own predict() returns. Needs the peer packages (pip install -e ".[peers]"), so it skips without them."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("tiny_recursive_model")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import peers  # noqa: E402


def test_one_pass_gives_the_peers_own_halting_and_full_predictions():
    torch.manual_seed(1)
    net = peers.build_peer(1.0).eval()
    # a halting head that halts some samples at the first step and none of the others, so the two variants differ
    torch.nn.init.normal_(net.to_halt_pred[1].weight, std=5.0)
    torch.nn.init.zeros_(net.to_halt_pred[1].bias)
    x = torch.randint(0, 7, (40, peers.SIZE * peers.SIZE))
    with torch.no_grad():
        halting, full = peers.peer_predict_both(net, x)
        own_halting, exits = net.predict(x, halt_prob_thres=0.5, max_deep_refinement_steps=peers.PEER_MAX_RECURRENT_STEPS)
        own_full, _ = net.predict(x, halt_prob_thres=1.1, max_deep_refinement_steps=peers.PEER_MAX_RECURRENT_STEPS)
    assert 1 < len(set(exits.tolist()))  # the check covers samples that halted early and samples that did not
    assert torch.equal(halting, own_halting)
    assert torch.equal(full, own_full)
    assert (halting != full).any()
