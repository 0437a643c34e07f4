"""Sleep/wake consolidation: what the fast memory picked up during wake moves into the slow weights during sleep.

    wake:  the task stream trains the model; every fresh sample enters the EpisodicBuffer with its loss on
           first sight as importance (surprise)
    sleep: the batch source is the Consolidator instead: replay (uniform from the buffer), replay-surprise
           (proportional to importance), distill (the memory-free path learns the memory-assisted outputs of
           a frozen pre-sleep copy, so the knowledge survives a memory reset) or dream (the pre-sleep copy's
           own high-temperature samples, distilled the same way)

The SleepScheduler switches phases by step count (wake_steps, sleep_steps) or on request. SleepWake ties the
three together for the trainer and keeps all of it in one state dict, so a run resumed at any step, asleep
or awake, continues exactly.

"Memory-free path": the model run with no carried memory state, so every pass through the network starts
from an empty neural memory (`Carry.memory = None`); "memory-assisted": the memory carried across passes.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from engine.config import SleepConfig
from engine.model.trm import PAD, TinyRecursiveModel


def per_sample_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over each sample's scored positions: logits (B, S, V), labels (B, S) -> (B,)."""
    ce = F.cross_entropy(logits.float().transpose(1, 2), labels, ignore_index=PAD, reduction="none")  # (B, S)
    scored = (labels != PAD).sum(-1).clamp_min(1)
    return ce.sum(-1) / scored


class EpisodicBuffer:
    """Samples seen during wake, each with an importance (its surprise), a usage count and its entry step.

    When full, a new sample first takes the place of a prunable slot (unimportant, unused and old), else of
    the least important one, if it is more important than that one.
    """

    def __init__(self, capacity: int, seq_len: int, prune_importance: float, prune_usage: int, prune_age: int):
        self.capacity, self.seq_len = capacity, seq_len
        self.prune_importance, self.prune_usage, self.prune_age = prune_importance, prune_usage, prune_age
        self.inputs = torch.zeros(0, seq_len, dtype=torch.long)  # (N, S)
        self.labels = torch.zeros(0, seq_len, dtype=torch.long)
        self.importance = torch.zeros(0)  # (N,) float
        self.usage = torch.zeros(0, dtype=torch.long)
        self.born = torch.zeros(0, dtype=torch.long)  # step at which each sample entered

    def __len__(self) -> int:
        return self.importance.shape[0]

    def add(self, inputs: torch.Tensor, labels: torch.Tensor, importance: torch.Tensor, step: int) -> None:
        inputs, labels, importance = inputs.cpu(), labels.cpu(), importance.detach().float().cpu()
        free = min(self.capacity - len(self), len(importance))
        if free > 0:  # the free places take the first samples at once: one copy per batch, not per sample
            self.inputs = torch.cat([self.inputs, inputs[:free]])
            self.labels = torch.cat([self.labels, labels[:free]])
            self.importance = torch.cat([self.importance, importance[:free]])
            self.usage = torch.cat([self.usage, torch.zeros(free, dtype=torch.long)])
            self.born = torch.cat([self.born, torch.full((free,), step, dtype=torch.long)])
            inputs, labels, importance = inputs[free:], labels[free:], importance[free:]
        for x, y, imp in zip(inputs, labels, importance):  # the rest, in order, each against the kept ones
            prunable = self.prunable(step).nonzero()
            i = int(prunable[0]) if len(prunable) else int(self.importance.argmin())
            if not len(prunable) and imp <= self.importance[i]:
                continue  # less important than everything kept
            self.inputs[i], self.labels[i], self.importance[i] = x, y, imp
            self.usage[i], self.born[i] = 0, step

    def prunable(self, step: int) -> torch.Tensor:
        """(N,) bool: unimportant, unused and old."""
        return ((self.importance < self.prune_importance) & (self.usage < self.prune_usage)
                & (step - self.born > self.prune_age))

    def prune(self, step: int) -> int:
        """Drop every prunable slot; returns how many went."""
        keep = ~self.prunable(step)
        dropped = int((~keep).sum())
        for name in ("inputs", "labels", "importance", "usage", "born"):
            setattr(self, name, getattr(self, name)[keep])
        return dropped

    def sample(self, n: int, generator: torch.Generator, by_importance: bool) -> torch.Tensor:
        """n indices, uniform or proportional to importance (with replacement); counts the usage."""
        if by_importance:
            weights = self.importance.clamp_min(0) + 1e-6  # a sample of zero loss can still come back
            idx = torch.multinomial(weights, n, replacement=True, generator=generator)
        else:
            idx = torch.randint(len(self), (n,), generator=generator)
        self.usage.index_add_(0, idx, torch.ones_like(idx))
        return idx

    def state_dict(self) -> dict:
        return {name: getattr(self, name).clone() for name in ("inputs", "labels", "importance", "usage", "born")}

    def load_state_dict(self, state: dict) -> None:
        for name, t in state.items():
            setattr(self, name, t.cpu().clone())


class SleepScheduler:
    """Wake for wake_steps, sleep for sleep_steps, or sleep at the next step boundary on request."""

    def __init__(self, wake_steps: int, sleep_steps: int):
        self.wake_steps, self.sleep_steps = wake_steps, sleep_steps
        self.phase = "wake"
        self.since = 0  # step at which the current phase began
        self.requested = False
        self.manual = False  # the current sleep was requested by hand
        self.sleeps = 0  # sleeps begun

    @property
    def sleeping(self) -> bool:
        return self.phase == "sleep"

    def request(self) -> None:
        self.requested = True

    def update(self, step: int) -> str | None:
        """At a step boundary: the phase to switch to now, or None."""
        if self.phase == "wake" and (self.requested or step - self.since >= self.wake_steps):
            self.phase, self.since, self.manual = "sleep", step, self.requested
            self.requested = False
            self.sleeps += 1
            return "sleep"
        if self.phase == "sleep" and step - self.since >= self.sleep_steps:
            self.phase, self.since, self.manual = "wake", step, False
            return "wake"
        return None

    def state_dict(self) -> dict:
        return {"phase": self.phase, "since": self.since, "requested": self.requested, "manual": self.manual,
                "sleeps": self.sleeps}

    def load_state_dict(self, state: dict) -> None:
        self.phase, self.since = state["phase"], int(state["since"])
        self.requested, self.manual, self.sleeps = bool(state["requested"]), bool(state["manual"]), int(state["sleeps"])


@dataclass
class ConsolidationBatch:
    inputs: torch.Tensor  # (B, S)
    labels: torch.Tensor  # (B, S) the buffer's labels (replay) or the teacher's answers (distill, dream)
    teacher_logits: torch.Tensor | None  # (B, S, V): the pre-sleep copy's memory-assisted outputs


class Consolidator:
    """The batch source and the loss of sleep, one mode per run; its learning rate adapts within a sleep."""

    def __init__(self, cfg: SleepConfig, batch_size: int):
        self.cfg, self.batch_size = cfg, batch_size
        self.lr = cfg.lr_scale  # a multiple of each parameter group's wake learning rate
        self.loss_mean: float | None = None  # running mean of the consolidation loss within this sleep
        self.teacher: TinyRecursiveModel | None = None  # the frozen pre-sleep copy (distill, dream)

    def begin(self, model: TinyRecursiveModel) -> None:
        self.lr, self.loss_mean = self.cfg.lr_scale, None
        if self.cfg.mode in ("distill", "dream"):
            self.teacher = copy.deepcopy(model).eval()
            for p in self.teacher.parameters():
                p.requires_grad_(False)

    def end(self) -> None:
        self.teacher = None

    @torch.no_grad()
    def next_batch(self, buffer: EpisodicBuffer, generator: torch.Generator, device) -> ConsolidationBatch:
        idx = buffer.sample(self.batch_size, generator, by_importance=self.cfg.mode == "replay-surprise")
        inputs, labels = buffer.inputs[idx].to(device), buffer.labels[idx].to(device)
        if self.cfg.mode in ("replay", "replay-surprise"):
            return ConsolidationBatch(inputs, labels, None)
        teacher = self.teacher
        if self.cfg.mode == "dream":
            # a dream: the pre-sleep model's own answer, sampled hot, becomes the input it then explains
            logits, _ = teacher.predict_logits(inputs, n_steps=1)  # (B, S, V)
            probs = F.softmax(logits / self.cfg.dream_temperature, -1)
            dreamt = torch.multinomial(probs.flatten(0, 1).cpu(), 1, generator=generator).view_as(inputs).to(device)
            swap = torch.rand(inputs.shape, generator=generator).to(device) < 0.5
            inputs = torch.where(swap & (inputs != PAD), dreamt.clamp_min(1), inputs)
        teacher_logits, _ = teacher.predict_logits(inputs, n_steps=1)  # memory-assisted
        answers = teacher_logits.argmax(-1).masked_fill(labels == PAD, PAD)
        return ConsolidationBatch(inputs, answers, teacher_logits)

    def loss(self, model: TinyRecursiveModel, batch: ConsolidationBatch) -> torch.Tensor:
        """One supervision step from fresh latents. Replay: the model's own loss; distill and dream: KL from
        the teacher's distribution to the memory-free path's, over the scored positions."""
        carry = model.initial_carry(batch.inputs.shape[0], batch.inputs.device)
        if batch.teacher_logits is None:
            _, out = model(carry, batch.inputs, batch.labels)
            return out.loss
        carry.memory = None  # the memory-free path: every pass through f starts from an empty memory
        _, out = model(carry, batch.inputs, batch.labels)
        scored = batch.labels != PAD  # (B, S)
        kl = F.kl_div(F.log_softmax(out.logits, -1), F.log_softmax(batch.teacher_logits.float(), -1),
                      log_target=True, reduction="none").sum(-1)  # (B, S)
        return (kl * scored).sum() / scored.sum().clamp_min(1)

    def adapt(self, loss: float) -> None:
        """The safeguard: halve the rate on a loss spike; raise it x1.2 when the loss is already tiny."""
        if self.loss_mean is not None and loss > self.cfg.spike_factor * self.loss_mean:
            self.lr *= 0.5
        elif loss < self.cfg.tiny_loss:
            self.lr = min(self.lr * 1.2, 10 * self.cfg.lr_scale)
        self.loss_mean = loss if self.loss_mean is None else 0.9 * self.loss_mean + 0.1 * loss

    def state_dict(self) -> dict:
        state = {"lr": self.lr, "loss_mean": self.loss_mean, "batch_size": self.batch_size}
        if self.teacher is not None:
            state["teacher"] = {k: v.clone() for k, v in self.teacher.state_dict().items()}
        return state

    def load_state_dict(self, state: dict, model: TinyRecursiveModel) -> None:
        self.lr, self.loss_mean = float(state["lr"]), state["loss_mean"]
        self.batch_size = int(state.get("batch_size", self.batch_size))  # halved after an out-of-memory error
        self.teacher = None
        if "teacher" in state:
            self.begin(model)
            self.lr, self.loss_mean = float(state["lr"]), state["loss_mean"]
            self.teacher.load_state_dict(state["teacher"])


class SleepWake:
    """The trainer's one handle on sleep: observe wake steps, switch phases, run consolidation steps."""

    def __init__(self, cfg: SleepConfig, seq_len: int, batch_size: int, seed: int, memory: str):
        self.cfg = cfg
        self.memory = memory  # the model's memory kind: "none" or "titans-mag"
        self.buffer = EpisodicBuffer(cfg.buffer_size, seq_len, cfg.prune_importance, cfg.prune_usage,
                                     cfg.prune_age)
        self.scheduler = SleepScheduler(cfg.wake_steps, cfg.sleep_steps)
        self.consolidator = Consolidator(cfg, batch_size)
        self.generator = torch.Generator().manual_seed(seed)
        self.before: dict = {}  # figures taken as the current sleep began
        self.last_loss = float("nan")

    @property
    def sleeping(self) -> bool:
        return self.scheduler.sleeping

    def request(self) -> str | None:
        """A manual sleep request: None if accepted (it starts at the next step boundary), else the reason."""
        if self.memory == "none":
            return "sleep needs a neural memory to consolidate; this run has model.memory = 'none'."
        if self.sleeping:
            return "the run is already asleep; it wakes by itself after sleep.sleep_steps steps."
        if self.scheduler.requested:
            return "a sleep is already requested; it starts at the next step."
        if not len(self.buffer):
            return "the episodic buffer is empty; train a few steps first so there is something to consolidate."
        self.scheduler.request()
        return None

    @torch.no_grad()
    def observe(self, carry, logits: torch.Tensor, step: int) -> None:
        """After a wake step: samples on their first step enter the buffer, their loss as importance."""
        fresh = carry.steps == 1  # (B,)
        if fresh.any():
            loss = per_sample_loss(logits[fresh], carry.labels[fresh])
            self.buffer.add(carry.inputs[fresh], carry.labels[fresh], loss, step)

    def boundary(self, step: int, model: TinyRecursiveModel, carry) -> list[tuple[str, dict]]:
        """At a step boundary: switch phase if due; returns the events to emit, as (kind, data)."""
        if self.scheduler.phase == "wake" and not len(self.buffer):
            return []  # nothing to consolidate yet: stay awake
        change = self.scheduler.update(step)
        if change == "sleep":
            self.begin_sleep(model, carry)
            return [("phase", {"phase": "sleep", "manual": self.scheduler.manual})]
        if change == "wake":
            figures = self.end_sleep(model, step)
            return [("consolidation", figures), ("phase", {"phase": "wake", "manual": False})]
        return []

    def _probe_indices(self) -> torch.Tensor:
        # the most important samples: what consolidation should keep
        n = min(self.cfg.probe_size, len(self.buffer))
        return self.buffer.importance.argsort(descending=True, stable=True)[:n]

    @torch.no_grad()
    def retention(self, model: TinyRecursiveModel, idx: torch.Tensor) -> tuple[float, torch.Tensor]:
        """Closed-book cell accuracy (memory-free path, eval semantics) on buffer samples, and their losses."""
        device = model.H_init.device
        inputs, labels = self.buffer.inputs[idx].to(device), self.buffer.labels[idx].to(device)
        was_training = model.training
        model.eval()
        logits, _ = model.predict_logits(inputs, memory_free=True)
        model.train(was_training)
        scored = labels != PAD
        accuracy = float(((logits.argmax(-1) == labels) & scored).sum() / scored.sum().clamp_min(1))
        return accuracy, per_sample_loss(logits, labels).cpu()

    def begin_sleep(self, model: TinyRecursiveModel, carry) -> None:
        idx = self._probe_indices()
        accuracy, _ = self.retention(model, idx)
        memory_norm = 0.0 if carry.memory is None else float(carry.memory.change_norm().mean())
        self.before = {"probe": idx, "retention": accuracy, "importance": float(self.buffer.importance.mean()),
                       "memory_norm": memory_norm}
        self.consolidator.begin(model)

    def end_sleep(self, model: TinyRecursiveModel, step: int) -> dict:
        before = self.before
        idx = before["probe"]
        idx = idx[idx < len(self.buffer)]
        accuracy, losses = self.retention(model, idx)
        self.buffer.importance[idx] = losses  # the probe's surprise as it stands now
        figures = {
            "sleep": self.scheduler.sleeps,
            "mode": self.cfg.mode,
            "memory_change": before["memory_norm"],  # how far the fast memory had moved: what there was to keep
            "importance_change": float(self.buffer.importance.mean()) - before["importance"],
            "consolidation_loss": self.last_loss,
            "retention_before": before["retention"],
            "retention_after": accuracy,
            "pruned": self.buffer.prune(step),
            "buffer": len(self.buffer),
        }
        self.consolidator.end()
        self.before = {}
        return figures

    def consolidation_step(self, model: TinyRecursiveModel, optimizer) -> tuple[dict[str, float], bool]:
        """One step of the run's own optimizer (its clipping and schedule included) on the consolidation
        source, every group's learning rate scaled by the consolidation rate; returns (metrics, finite).
        An out-of-memory error propagates with the learning rates and the gradients as they were."""
        device = model.H_init.device
        batch = self.consolidator.next_batch(self.buffer, self.generator, device)
        model.train()
        try:
            loss = self.consolidator.loss(model, batch)
            finite = bool(torch.isfinite(loss))
            scale = self.consolidator.lr
            if finite:
                loss.backward()
                groups = optimizer.param_groups
                saved = [(g.get("base_lr"), g["lr"]) for g in groups]
                for g in groups:  # a schedule that sets lr from base_lr sees the scaled one for this step
                    g["lr"] *= scale
                    if "base_lr" in g:
                        g["base_lr"] *= scale
                try:
                    optimizer.step()
                finally:
                    for g, (base_lr, lr) in zip(groups, saved):
                        g["lr"] = lr
                        if base_lr is not None:
                            g["base_lr"] = base_lr
                self.last_loss = float(loss.detach())
                self.consolidator.adapt(self.last_loss)
        finally:
            optimizer.zero_grad(set_to_none=True)
        return {"consolidation_loss": float(loss.detach()), "consolidation_lr_scale": scale}, finite

    def halve_batch(self) -> tuple[int, int] | None:
        """After an out-of-memory error in sleep: halve the consolidation batch; (old, new), or None when it is
        already one sample."""
        old = self.consolidator.batch_size
        if old <= 1:
            return None
        self.consolidator.batch_size = old // 2
        return old, old // 2

    def state_dict(self) -> dict:
        before = dict(self.before)
        return {"buffer": self.buffer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "consolidator": self.consolidator.state_dict(), "generator": self.generator.get_state(),
                "before": before, "last_loss": self.last_loss}

    def load_state_dict(self, state: dict, model: TinyRecursiveModel) -> None:
        self.buffer.load_state_dict(state["buffer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.consolidator.load_state_dict(state["consolidator"], model)
        self.generator.set_state(state["generator"].cpu())
        self.before = dict(state["before"])
        if "probe" in self.before:
            self.before["probe"] = self.before["probe"].cpu()
        self.last_loss = float(state["last_loss"])
