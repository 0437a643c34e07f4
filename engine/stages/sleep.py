"""Sleep: consolidation steps on the episodic buffer instead of the task stream; the carry and the stream wait.

Wake steps feed the buffer (`observe`). A sleep begins with a retention probe (closed-book accuracy on the
buffer's most important samples) and a copy of the weights; it ends with the probe again and the figures the
console plots: how far the neural memory's parameters and the slow weights moved, retention before and after.

Under several processes every rank keeps the same buffer (wake's fresh samples are gathered from every rank)
and draws the same consolidation batch, then trains on its own share of it.
"""

from __future__ import annotations

import math
import time
from typing import Callable

import torch

from engine.accumulate import BackOff, MicroBatches
from engine.config import SleepConfig
from engine.distributed import ModelCall, World
from engine.evaluate import score
from engine.faults import Faults
from engine.model.titans import NeuralMemory
from engine.model.trm import PAD, Carry, TinyRecursiveModel
from engine.optim import MuGrokfast
from engine.precision import Precision
from engine.sleep import ConsolidationTrigger, Consolidator, EpisodicBuffer, per_sample_loss
from engine.stages import StepResult


def memory_parameter_names(model: TinyRecursiveModel) -> set[str]:
    """Names of the neural memory modules' own parameters (the rest are the slow weights)."""
    return {f"{prefix}.{name}" for prefix, m in model.named_modules() if isinstance(m, NeuralMemory)
            for name, _ in m.named_parameters()}


def change_norms(before: dict[str, torch.Tensor], model: TinyRecursiveModel, memory: set[str]) -> tuple[float, float]:
    """(norm of the memory parameters' change, norm of the slow weights' change) since `before`."""
    sums = [0.0, 0.0]
    for name, p in model.named_parameters():
        if name in before:
            sums[name not in memory] += float((p.detach().float() - before[name]).square().sum())
    return math.sqrt(sums[0]), math.sqrt(sums[1])


class SleepStage:
    name = "sleep"

    def __init__(self, cfg: SleepConfig, model: TinyRecursiveModel, optimizer: MuGrokfast, seq_len: int,
                 batch_size: int, seed: int, has_memory: bool, micro: MicroBatches, precision: Precision,
                 faults: Faults, on_back_off: Callable[[BackOff], None], world: World | None = None,
                 forward: torch.nn.Module | None = None):
        self.cfg, self.model, self.optimizer, self.has_memory = cfg, model, optimizer, has_memory
        self.world = world or World()
        self.forward = forward or ModelCall(model)  # DistributedDataParallel around it under several processes
        self.micro, self.precision, self.faults, self.on_back_off = micro, precision, faults, on_back_off
        self.buffer = EpisodicBuffer(cfg.buffer_size, seq_len, cfg.prune_importance, cfg.prune_usage,
                                     cfg.prune_age)
        self.consolidator = Consolidator(cfg, batch_size)
        self.trigger = ConsolidationTrigger(cfg)  # a sleep on a signal (buffer full, plateau), beside the schedule
        self.generator = torch.Generator().manual_seed(seed)
        self.memory_names = memory_parameter_names(model)
        self.before: dict = {}  # taken as the current sleep began
        self.last_loss = float("nan")
        self.sleeps = 0  # sleeps begun
        self.steps = 0  # consolidation steps of the current (or last) sleep
        self.pruned = 0  # slots pruned by the interval rule since the last sleep ended

    # ---- what wake hands over ----

    @torch.no_grad()
    def observe(self, carry: Carry, logits: torch.Tensor, step: int) -> None:
        """After a wake step: samples on their first step enter the buffer, their loss as importance. Under
        several processes every rank's slots are gathered first, so every buffer takes the same samples in the
        same order. The kept samples' importance decays first; the interval rule prunes when it is due."""
        self.buffer.decay(self.cfg.importance_decay)
        if self.cfg.prune == "interval" and step % self.cfg.prune_every == 0:
            self.pruned += self.buffer.prune(step)
        self._add(carry, logits, step)

    def _add(self, carry: Carry, logits: torch.Tensor, step: int) -> None:
        if self.world.size == 1:
            fresh = carry.steps == 1  # (B,)
            loss = per_sample_loss(logits[fresh], carry.labels[fresh])
            if fresh.any():
                self.buffer.add(carry.inputs[fresh], carry.labels[fresh], loss, step)
            self.trigger.observe(int(fresh.sum()), float(loss.sum()))
            return
        S = carry.inputs.shape[1]
        loss = per_sample_loss(logits, carry.labels)
        rows = torch.cat([t.double() for t in (carry.inputs, carry.labels, loss[:, None], (carry.steps == 1)[:, None])], 1)
        rows = self.world.gather_rows(rows.cpu())  # (B, 2 S + 2): token ids are exact in float64
        fresh = rows[:, -1].bool()
        if fresh.any():
            self.buffer.add(rows[fresh, :S].long(), rows[fresh, S:2 * S].long(), rows[fresh, 2 * S].float(), step)
        self.trigger.observe(int(fresh.sum()), float(rows[fresh, 2 * S].sum()))

    def refusal(self, sleeping: bool, requested: bool) -> str | None:
        """Why a manual sleep cannot be taken now, or None."""
        if not self.has_memory:
            return "sleep needs a neural memory to consolidate; this run has model.memory = 'none'."
        if sleeping:
            return "the run is already asleep; it wakes by itself after sleep.sleep_steps steps."
        if requested:
            return "a sleep is already requested; it starts at the next step."
        if not len(self.buffer):
            return "the episodic buffer is empty; train a few steps first so there is something to consolidate."
        if not self.ready():
            return (f"no buffer sample is more important than sleep.consolidation_threshold = "
                    f"{self.cfg.consolidation_threshold:g}; train on until a surprising one comes.")
        return None

    # ---- the stage ----

    def ready(self) -> bool:
        # nothing (important enough) to consolidate yet: stay awake
        return len(self.buffer) > 0 and bool(self.buffer.important(self.cfg.consolidation_threshold).any())

    def mode(self) -> str:
        """The mode of sleep number `self.sleeps`: sleep.modes in turn, else sleep.mode."""
        modes = self.cfg.modes
        return modes[(self.sleeps - 1) % len(modes)] if modes else self.cfg.mode

    def done(self) -> bool:
        return False

    def _probe_indices(self) -> torch.Tensor:
        # the most important samples: what consolidation should keep
        n = min(self.cfg.probe_size, len(self.buffer))
        return self.buffer.importance.argsort(descending=True, stable=True)[:n]

    @torch.no_grad()
    def retention(self, idx: torch.Tensor) -> tuple[float, torch.Tensor]:
        """Closed-book cell accuracy (memory-free path, eval semantics) on buffer samples, and their losses."""
        device = self.model.H_init.device
        inputs, labels = self.buffer.inputs[idx].to(device), self.buffer.labels[idx].to(device)
        was_training = self.model.training
        self.model.eval()
        logits, _ = self.model.predict_logits(inputs, memory_free=True)
        self.model.train(was_training)
        cells = float(score(logits.argmax(-1), labels)[1].sum()) / max(1, int((labels != PAD).sum()))
        return cells, per_sample_loss(logits, labels).cpu()

    def wanted(self, awake: int) -> str | None:
        """Why a sleep should begin now (engine/sleep.py's ConsolidationTrigger), after `awake` wake steps."""
        return self.trigger.due(awake)

    def begin(self, step: int) -> None:
        self.sleeps, self.steps = self.sleeps + 1, 0
        self.trigger.reset()
        idx = self._probe_indices()
        accuracy, _ = self.retention(idx)
        self.before = {"probe": idx, "retention": accuracy, "importance": float(self.buffer.importance.mean()),
                       "eligible": int(self.buffer.important(self.cfg.consolidation_threshold).sum()),
                       "weights": {n: p.detach().float().clone() for n, p in self.model.named_parameters()}}
        self.consolidator.begin(self.model, self.mode())

    @torch.no_grad()
    def _keep_share(self, before: dict[str, torch.Tensor]) -> None:
        """sleep.consolidation_strength: every weight goes back to before + strength x (its change in the sleep)."""
        strength = self.cfg.consolidation_strength
        if strength >= 1.0:
            return
        for name, p in self.model.named_parameters():
            if name in before:
                p.copy_(torch.lerp(before[name].to(p.device), p.detach().float(), strength).to(p.dtype))

    def end(self, step: int) -> list[tuple[str, dict]]:
        before = self.before
        idx = before["probe"]
        idx = idx[idx < len(self.buffer)]
        self._keep_share(before["weights"])
        accuracy, losses = self.retention(idx)
        self.buffer.importance[idx] = losses  # the probe's surprise as it stands now
        memory_change, weights_change = change_norms(before["weights"], self.model, self.memory_names)
        pruned, self.pruned = (self.buffer.prune(step) if self.cfg.prune == "sleep" else self.pruned), 0
        figures = {
            "sleep": self.sleeps,
            "mode": self.consolidator.mode,
            "memory_change": memory_change,  # the neural memory's own parameters, after minus before
            "weights_change": weights_change,  # every other (slow) weight
            "importance_change": float(self.buffer.importance.mean()) - before["importance"],
            "consolidation_loss": self.last_loss,
            "retention_before": before["retention"],
            "retention_after": accuracy,
            # retention gained per consolidation step: what a step of this sleep bought
            "efficiency": (accuracy - before["retention"]) / max(1, self.steps),
            "steps": self.steps,
            "eligible": before["eligible"],  # buffer samples above sleep.consolidation_threshold as it began
            "pruned": pruned,  # at this sleep's end, or by the interval rule since the last one
            "buffer": len(self.buffer),
        }
        self.consolidator.end()
        self.before = {}
        return [("consolidation", figures)]

    def step(self, step: int) -> StepResult:
        """One step of the run's own optimizer (its clipping and schedule included) on the consolidation source,
        every learning rate scaled by the consolidation rate for this step."""
        t0 = time.perf_counter()
        device = self.model.H_init.device
        batch = self.consolidator.next_batch(self.buffer, self.generator, device)  # the whole batch, every rank
        norm = ((batch.labels != PAD).sum().clamp_min(1), batch.inputs.shape[0])
        mine = batch[self.world.shard(batch.inputs.shape[0])]
        self.model.train()
        loss, finite = self.micro.attempt(step, lambda: self._forward_backward(mine, norm), [self.generator],
                                          self.on_back_off, inject=lambda: self.faults.raise_oom(step))
        if self.world.size > 1:  # the batch's loss is the sum of the ranks' shares
            shared = self.world.sum(torch.tensor([loss, float(not finite)], dtype=torch.float64))
            loss, finite = float(shared[0]), not bool(shared[1])
        scale = self.consolidator.lr
        self.steps += 1
        if finite and self.precision.unscale(self.optimizer):
            self.optimizer.step(lr_scale=scale)
            self.last_loss = loss
            self.consolidator.adapt(loss)
        self.optimizer.zero_grad(set_to_none=True)
        metrics = {"consolidation_loss": loss, "consolidation_lr_scale": scale}
        if self.micro.chunks > 1:
            metrics["micro_batches"] = float(self.micro.chunks)
        metrics["step_time"] = time.perf_counter() - t0
        return StepResult(metrics, finite)

    def _forward_backward(self, batch, norm: tuple[torch.Tensor, int]) -> tuple[float, bool]:
        """This rank's share of the consolidation batch as micro-batch chunks, each scored against the whole
        batch's `norm`. Returns (this rank's share of the loss, finite)."""
        self.optimizer.zero_grad(set_to_none=True)  # a retry after an out-of-memory error starts clean
        total, finite = 0.0, True
        chunks = self.micro.split(batch.inputs.shape[0])
        for i, sl in enumerate(chunks):
            with self.world.sync_gradients(self.forward, last=i == len(chunks) - 1):
                with self.precision.autocast():
                    loss = self.forward(self.consolidator.loss, batch[sl], norm=norm)
                finite = finite and bool(torch.isfinite(loss))
                # finite or not, as in wake: each rank's last chunk must reach the all-reduce (DDP averages)
                self.precision.backward(loss * self.world.size)
            total += float(loss.detach())
        return total, finite

    def state_dict(self) -> dict:
        return {"buffer": self.buffer.state_dict(), "consolidator": self.consolidator.state_dict(),
                "generator": self.generator.get_state(), "before": dict(self.before), "last_loss": self.last_loss,
                "sleeps": self.sleeps, "steps": self.steps, "pruned": self.pruned,
                "trigger": self.trigger.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.buffer.load_state_dict(state["buffer"])
        self.consolidator.load_state_dict(state["consolidator"], self.model)
        self.generator.set_state(state["generator"].cpu())
        self.before = dict(state["before"])
        if "probe" in self.before:
            self.before["probe"] = self.before["probe"].cpu()
        self.last_loss = float(state["last_loss"])
        self.sleeps = int(state["sleeps"])
        self.steps, self.pruned = int(state.get("steps", 0)), int(state.get("pruned", 0))
        if "trigger" in state:  # checkpoints from before the trigger have none
            self.trigger.load_state_dict(state["trigger"])
