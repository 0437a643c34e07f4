"""The wake loss's terms beside the task loss: the memory-training objectives, each a scalar with its own weight.

    reconstruction  random spans of the input are hidden (zero embedding) and predicted from both sides, by one
                    supervision step from fresh latents and an empty memory
    consistency     the memory-assisted answer against the memory-free one (the slow weights' own), a symmetric KL
                    at every cycle that carries gradient
    carry           time-scale 1, the carry: the latents settle across the recursion's cycles (the last cycle's
                    change; a fresh slot's first cycle is left out, as it starts from the initial latents)
    memory          time-scale 2, the episode: the neural memory recalls what it has read, ||M(k) - v||^2 / ||v||^2
                    with the state each memory call ends with
    slow            time-scale 3, across sleeps: the memory-free answer stays near the weights' moving average's
    coherence       the answers y1..y(T-1) agree with the last one, yT (a KL towards it; y's target is detached)

Every term is normalised by the whole batch's scored cells (or slots, for the memory's per-slot fit), so the
micro-batch chunks' terms add up to the batch's, like the task loss.
"""

from __future__ import annotations

import contextlib
import torch
import torch.nn.functional as F

from engine.config import OBJECTIVE_TERMS, ObjectivesConfig
from engine.model.titans import NeuralMemory
from engine.model.trm import PAD, Carry, TinyRecursiveModel


def span_mask(inputs: torch.Tensor, fraction: float, length: int, generator: torch.Generator | None = None,
              slots: tuple[int, int] | None = None) -> torch.Tensor:
    """(B, S) bool: spans of `length` positions, starting at a position with probability fraction / length, over
    the non-PAD inputs. `slots` = (first, total): the whole batch's numbers are drawn and these slots' taken."""
    B, S = inputs.shape
    first, total = slots if slots is not None else (0, B)
    device = generator.device if generator is not None else inputs.device
    starts = torch.rand(total, S, generator=generator, device=device)[first:first + B] < fraction / length
    # position i is hidden when a span starts at any of i - length + 1 .. i
    spans = F.max_pool1d(F.pad(starts.float()[:, None], (length - 1, 0)), length, stride=1)[:, 0]
    return spans.bool().to(inputs.device) & (inputs != PAD)


def symmetric_kl(a: torch.Tensor, b: torch.Tensor, scored: torch.Tensor) -> torch.Tensor:
    """KL(a || b) + KL(b || a) of logits (B, S, V), summed over the scored positions."""
    la, lb = F.log_softmax(a.float(), -1), F.log_softmax(b.float(), -1)
    kl = ((la.exp() - lb.exp()) * (la - lb)).sum(-1)  # the two KLs' sum, per position
    return (kl * scored).sum()


def kl_to(target: torch.Tensor, logits: torch.Tensor, scored: torch.Tensor) -> torch.Tensor:
    """KL(softmax(target) || softmax(logits)) summed over the scored positions; the target is not trained."""
    kl = F.kl_div(F.log_softmax(logits.float(), -1), F.log_softmax(target.detach().float(), -1),
                  log_target=True, reduction="none").sum(-1)
    return (kl * scored).sum()


class MemoryCalls:
    """The neural memory's calls during a pass that carry gradient: (module, its input, the state it ends with)."""

    def __init__(self, model: torch.nn.Module):
        self.calls: list[tuple[NeuralMemory, torch.Tensor, dict]] = []
        self.modules = [m for m in model.modules() if isinstance(m, NeuralMemory)]

    def _hook(self, module, args, output) -> None:
        if torch.is_grad_enabled():
            self.calls.append((module, args[0], output[1]))

    @contextlib.contextmanager
    def watching(self):
        handles = [m.register_forward_hook(self._hook) for m in self.modules]
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()

    def fit(self) -> torch.Tensor:
        """(B,) the memory's relative associative loss per slot, averaged over the calls."""
        per_call = []
        for module, x, state in self.calls:
            _, keys, values = module.project(x)  # (B, H, T, hd)
            miss = (module.recall(state, keys) - values).pow(2).sum((1, 2, 3))
            per_call.append(miss / values.pow(2).sum((1, 2, 3)).clamp_min(1e-6))
        return torch.stack(per_call).mean(0)


class Objectives:
    """The weights of the mix and the terms' computation; `anchor` is the slow time-scale's reference model (the
    run's weight average), needed only by the `slow` term."""

    def __init__(self, cfg: ObjectivesConfig, anchor: TinyRecursiveModel | None = None):
        self.cfg, self.anchor = cfg, anchor
        self.weights = {t: getattr(cfg, t) for t in OBJECTIVE_TERMS if getattr(cfg, t) > 0}
        assert "slow" not in self.weights or anchor is not None, "the slow term needs the weights' average"

    @property
    def task(self) -> float:
        return self.cfg.task

    @property
    def active(self) -> bool:
        return bool(self.weights) or self.cfg.task != 1.0

    @property
    def all_cycles(self) -> bool:
        """Every cycle's answer must carry gradient (the coherence term compares them)."""
        return "coherence" in self.weights

    def watch(self, model: torch.nn.Module):
        """A context in which the main pass's memory calls are kept for the memory term."""
        if "memory" not in self.weights:
            return contextlib.nullcontext(None)
        return MemoryCalls(model).watching()

    def terms(self, model: TinyRecursiveModel, carry: Carry, x: torch.Tensor, answers: list[torch.Tensor],
              history: list, calls: MemoryCalls | None, n_cells: torch.Tensor, n_slots: int,
              generator: torch.Generator | None, slots: tuple[int, int] | None) -> dict[str, torch.Tensor]:
        """Each active term (unweighted) of one supervision step. `carry`: the step's starting carry (halted slots
        reset), `x` its input embedding, `answers` the answer latents the recursion returned (y0..yT when every
        cycle carries gradient, else yT), `history` the latents after every cycle."""
        w, out = self.weights, {}
        scored = carry.labels != PAD  # (B, S)
        graded = answers[1:] if len(answers) > 1 else answers  # the answers with gradient: y1..yT or yT
        logits = [model.readout(y)[0] for y in graded]
        free = None
        if "consistency" in w or ("slow" in w and model.has_memory):
            _, _, free_answers, _ = model.deep_recursion(carry.z_H, carry.z_L, x, memory=None,
                                                          all_cycles=self.all_cycles)
            free = [model.readout(y)[0] for y in (free_answers[1:] if len(free_answers) > 1 else free_answers)]
        if "reconstruction" in w:
            out["reconstruction"] = self.reconstruction(model, carry.inputs, n_cells, generator, slots)
        if "consistency" in w:
            out["consistency"] = sum(symmetric_kl(a, b, scored) for a, b in zip(logits, free)) / (len(free) * n_cells)
        if "carry" in w:
            out["carry"] = self.settling(carry, history, n_slots)
        if "memory" in w:
            out["memory"] = calls.fit().sum() / n_slots
        if "slow" in w:
            with torch.no_grad():
                _, _, [*_, y], _ = self.anchor.deep_recursion(carry.z_H, carry.z_L,
                                                             self.anchor.input_embedding(carry.inputs), memory=None)
                target = self.anchor.readout(y)[0]
            out["slow"] = kl_to(target, (free or logits)[-1], scored) / n_cells
        if "coherence" in w:
            last = logits[-1].detach()
            out["coherence"] = sum(kl_to(last, lg, scored) for lg in logits[:-1]) / ((len(logits) - 1) * n_cells)
        return out

    def reconstruction(self, model: TinyRecursiveModel, inputs: torch.Tensor, n_cells: torch.Tensor,
                       generator: torch.Generator | None, slots: tuple[int, int] | None) -> torch.Tensor:
        """Cross-entropy of the hidden input tokens, read from one supervision step on the input with its spans
        hidden, from fresh latents and an empty memory; summed over the hidden positions / n_cells."""
        hidden = span_mask(inputs, self.cfg.span_fraction, self.cfg.span_length, generator, slots)  # (B, S)
        x = model.input_embedding(inputs.masked_fill(hidden, PAD))
        x = x * F.pad(~hidden, (model.prefix, 0))[..., None]  # a hidden position has a zero embedding
        start = model.initial_carry(inputs.shape[0], inputs.device)
        z_H, _, _, _ = model.deep_recursion(start.z_H, start.z_L, x, memory=start.memory)
        logits = model.readout(z_H)[0]
        targets = inputs.masked_fill(~hidden, PAD)
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=PAD, reduction="sum") / n_cells

    @staticmethod
    def settling(carry: Carry, history: list, n_slots: int) -> torch.Tensor:
        """The last cycle's change of both latents, ||z_t - z_(t-1)||^2 / D per position, averaged over positions
        and summed over slots / n_slots; the earlier latents are the target. With one cycle, the change is from the
        carried latents, so slots that were reset this step are left out."""
        if len(history) >= 2:
            (h0, l0, _), (h1, l1, _) = history[-2], history[-1]
            keep = torch.ones_like(carry.halted)
        else:
            (h0, l0), (h1, l1, _) = (carry.z_H, carry.z_L), history[-1]
            keep = ~carry.halted
        D = h1.shape[-1]
        change = ((h1 - h0.detach()).pow(2) + (l1 - l0.detach()).pow(2)).sum(-1).mean(-1) / D  # (B,)
        return (change * keep).sum() / n_slots
